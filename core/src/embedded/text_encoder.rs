//! The embedded model's text encoder: word and position embeddings and a few bidirectional
//! pre-LN transformer layers (differentiable throughout), giving per-token context. Pad
//! positions carry distinct states through their position embeddings.

use candle_core::{Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::mmdit::layers::{linear, Linear};

/// Text encoder size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub max_len: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
}

/// Layer norm with learned affine, differentiable.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::mmdit::layers::layer_norm(x, 1e-5)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Layer {
    fn new(vb: VarBuilder, c: &TextEncoderConfig) -> candle_core::Result<Self> {
        Ok(Self {
            ln1: Norm::new(vb.pp("ln1"), c.dim)?,
            qkv: linear(c.dim, 3 * c.dim, vb.pp("qkv"))?,
            proj: linear(c.dim, c.dim, vb.pp("proj"))?,
            ln2: Norm::new(vb.pp("ln2"), c.dim)?,
            fc1: linear(c.dim, 4 * c.dim, vb.pp("fc1"))?,
            fc2: linear(4 * c.dim, c.dim, vb.pp("fc2"))?,
            heads: c.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.ln1.forward(x)?;
        let qkv = self.qkv.forward(&h)?.reshape((b, l, 3, self.heads, hd))?;
        let q = qkv
            .narrow(2, 0, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = qkv
            .narrow(2, 1, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = qkv
            .narrow(2, 2, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let s = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let p = crate::mmdit::fused::softmax_last_dim(&s)?;
        let o = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, d))?;
        let x = (x + self.proj.forward(&o)?)?;
        let h = crate::mmdit::fused::gelu(&self.fc1.forward(&self.ln2.forward(&x)?)?)?;
        Ok((&x + self.fc2.forward(&h)?)?)
    }
}

/// The encoder.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tok: Embedding,
    pos: Tensor,
    layers: Vec<Layer>,
    ln_f: Norm,
}

impl TextEncoder {
    pub fn new(vb: VarBuilder, c: &TextEncoderConfig) -> candle_core::Result<Self> {
        let tok = candle_nn::embedding(c.vocab_size, c.dim, vb.pp("token_embedding"))?;
        let pos = vb.get_with_hints(
            (c.max_len, c.dim),
            "position_embedding",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let layers = (0..c.layers)
            .map(|i| Layer::new(vb.pp(format!("layers.{i}")), c))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            tok,
            pos,
            layers,
            ln_f: Norm::new(vb.pp("final_norm"), c.dim)?,
        })
    }

    /// # Shapes
    /// `ids: [B, L]` (u32) → `[B, L, dim]`
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let l = ids.dim(1)?;
        let mut x = self
            .tok
            .forward(ids)?
            .broadcast_add(&self.pos.narrow(0, 0, l)?.unsqueeze(0)?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.ln_f.forward(&x)
    }
}
