//! Small building blocks of the SD3 transformer: norms computed in f32, the tanh-GELU
//! feed-forward, adaLN modulation. All differentiable (no fused candle kernels that lack a
//! backward pass), so the same layers serve inference and training.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;

/// A linear layer whose weights may be stored in another dtype than the activations (bf16
/// weights on CPU, where candle has no bf16 matmul, are cast to the activations' dtype at use).
#[derive(Debug, Clone)]
pub struct Linear(candle_nn::Linear);

/// Loads `weight [dout, din]` and `bias [dout]` under `vb`.
pub fn linear(din: usize, dout: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    candle_nn::linear(din, dout, vb).map(Linear)
}

impl Module for Linear {
    /// # Shapes
    /// `x: [.., din]` → `[.., dout]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.0.weight().dtype() == x.dtype() {
            return self.0.forward(x);
        }
        let w = self.0.weight().to_dtype(x.dtype())?;
        let b = self.0.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
        candle_nn::Linear::new(w, b).forward(x)
    }
}

/// Layer norm without affine parameters, computed in f32 whatever the input dtype.
///
/// # Shapes
/// `x: [.., D]` → `[.., D]`
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let y = super::fused::layer_norm(&x.to_dtype(DType::F32)?, eps)?;
    Ok(y.to_dtype(dtype)?)
}

/// RMS norm with a learned weight (diffusers `RMSNorm`), computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// # Shapes
    /// `x: [.., d]` → `[.., d]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x32.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        Ok(y.broadcast_mul(&w)?.to_dtype(dtype)?)
    }
}

/// `x · (1 + scale) + shift`, with `scale`/`shift` of shape `[B, D]` broadcast over tokens.
///
/// # Shapes
/// `x: [B, T, D]`, `shift, scale: [B, D]` → `[B, T, D]`
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale.unsqueeze(1)? + 1.0)?;
    Ok(x.broadcast_mul(&scale)?
        .broadcast_add(&shift.unsqueeze(1)?)?)
}

/// `gate · x` with `gate: [B, D]` broadcast over tokens.
pub fn gated(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&gate.unsqueeze(1)?)?)
}

/// adaLN modulation: `Linear(SiLU(temb))` split into `chunks` vectors (diffusers `norm1.linear`).
#[derive(Debug, Clone)]
pub struct AdaLn {
    linear: Linear,
    chunks: usize,
}

impl AdaLn {
    pub fn new(vb: VarBuilder, dim: usize, chunks: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear: linear(dim, chunks * dim, vb.pp("linear"))?,
            chunks,
        })
    }

    /// # Shapes
    /// `silu_temb: [B, D]` → `chunks × [B, D]`
    pub fn forward(&self, silu_temb: &Tensor) -> Result<Vec<Tensor>> {
        let m = self.linear.forward(silu_temb)?;
        Ok(m.chunk(self.chunks, 1)?)
    }
}

/// diffusers `FeedForward(dim, activation_fn="gelu-approximate")`: `net.0.proj`, tanh-GELU, `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            proj_in: linear(dim, 4 * dim, vb.pp("net.0.proj"))?,
            proj_out: linear(4 * dim, dim, vb.pp("net.2"))?,
        })
    }

    /// # Shapes
    /// `x: [B, T, D]` → `[B, T, D]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // tanh-approximated GELU, as `gelu-approximate` in diffusers.
        let h = super::fused::gelu(&self.proj_in.forward(x)?)?;
        Ok(self.proj_out.forward(&h)?)
    }
}
