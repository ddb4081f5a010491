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

/// diffusers `FeedForward(dim, activation_fn="gelu-approximate")`: `net.0.proj`, tanh-GELU, `net.2`;
/// optionally (`ff_conv`) with a depthwise 3×3 convolution over the patch grid added to the
/// first projection's output before the GELU.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
    conv: Option<GridConv>,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            proj_in: linear(dim, 4 * dim, vb.pp("net.0.proj"))?,
            proj_out: linear(4 * dim, dim, vb.pp("net.2"))?,
            conv: None,
        })
    }

    /// The image stream's feed-forward with the grid convolution `conv` (`[4D, 1, 3, 3]`).
    pub fn with_grid_conv(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let mut ff = Self::new(vb.clone(), dim)?;
        ff.conv = Some(GridConv::new(vb.pp("conv"), 4 * dim)?);
        Ok(ff)
    }

    /// # Shapes
    /// `x: [B, T, D]` (with a grid convolution, `T = h·w` row-major) → `[B, T, D]`
    pub fn forward(&self, x: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let mut u = self.proj_in.forward(x)?;
        if let Some(conv) = &self.conv {
            u = (&u + conv.forward(&u, grid)?)?;
        }
        // tanh-approximated GELU, as `gelu-approximate` in diffusers.
        let h = super::fused::gelu(&u)?;
        Ok(self.proj_out.forward(&h)?)
    }
}

/// A depthwise 3×3 convolution (padding 1, with bias) over tokens laid out as an `h × w` grid,
/// computed as nine shifted, channel-scaled copies (differentiable with candle's basic ops).
#[derive(Debug, Clone)]
struct GridConv {
    /// `[C, 9]`, taps `ky·3 + kx`.
    weight: Tensor,
    bias: Tensor,
}

impl GridConv {
    fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        let weight = vb
            .get((channels, 1, 3, 3), "weight")?
            .reshape((channels, 9))?;
        Ok(Self {
            weight,
            bias: vb.get(channels, "bias")?,
        })
    }

    /// # Shapes
    /// `u: [B, h·w, C]` → `[B, h·w, C]`
    fn forward(&self, u: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, t, c) = u.dims3()?;
        if t != h * w {
            return Err(crate::error::Error::Input(format!(
                "grid convolution over {t} tokens, but the grid is {h}×{w}"
            )));
        }
        let wt = self.weight.to_dtype(u.dtype())?;
        let padded = u
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 1, 1)?
            .pad_with_zeros(2, 1, 1)?;
        let mut acc = self.bias.to_dtype(u.dtype())?.reshape((1, 1, 1, c))?;
        for ky in 0..3 {
            for kx in 0..3 {
                let tap = wt.narrow(1, ky * 3 + kx, 1)?.reshape((1, 1, 1, c))?;
                let shifted = padded.narrow(1, ky, h)?.narrow(2, kx, w)?;
                acc = shifted.broadcast_mul(&tap)?.broadcast_add(&acc)?;
            }
        }
        Ok(acc.reshape((b, t, c))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The shifted-copies grid convolution equals candle's own grouped (depthwise) `conv2d`.
    #[test]
    fn grid_conv_equals_depthwise_conv2d() {
        let dev = Device::Cpu;
        let (b, h, w, c) = (2, 5, 4, 3);
        let kernel = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let conv = GridConv {
            weight: kernel.reshape((c, 9)).unwrap(),
            bias: bias.clone(),
        };
        let u = Tensor::randn(0f32, 1.0, (b, h * w, c), &dev).unwrap();
        let ours = conv.forward(&u, (h, w)).unwrap();
        let image = u
            .reshape((b, h, w, c))
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let theirs = image
            .contiguous()
            .unwrap()
            .conv2d(&kernel, 1, 1, 1, c)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape((b, h * w, c))
            .unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "grid conv differs from conv2d by {diff}");
        // A grid that does not hold the tokens is an error, not a panic.
        assert!(conv.forward(&u, (h, w + 1)).is_err());
    }
}
