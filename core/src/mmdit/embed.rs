//! Input embeddings of the SD3 transformer: patch embedding with the checkpoint's own
//! position table (centre-cropped, never recomputed), and the timestep + pooled-text embedding.
//! Matches diffusers' `PatchEmbed` and `CombinedTimestepTextProjEmbeddings` (diffusers v0.42.1, `models/embeddings.py`).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use super::config::MmditConfig;
use super::layers::{linear, Linear};
use crate::error::{Error, Result};

/// Optional 3×3 convolutional front end (`stem.{i}`, SiLU after each), patchify convolution,
/// plus the loaded position table `[1, M², D]`.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    stem: Vec<Conv2d>,
    proj: Conv2d,
    pos_embed: Tensor,
    max: usize,
    patch: usize,
}

impl PatchEmbed {
    pub fn new(vb: VarBuilder, cfg: &MmditConfig) -> candle_core::Result<Self> {
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut stem = vec![];
        let mut cin = cfg.in_channels;
        for (i, &c) in cfg.conv_stem.iter().enumerate() {
            stem.push(candle_nn::conv2d(cin, c, 3, same, vb.pp("stem").pp(i))?);
            cin = c;
        }
        let proj = candle_nn::conv2d(
            cfg.patch_in_channels(),
            cfg.inner_dim(),
            cfg.patch_size,
            conv,
            vb.pp("proj"),
        )?;
        let m = cfg.pos_embed_max_size;
        let pos_embed = vb.get((1, m * m, cfg.inner_dim()), "pos_embed")?;
        Ok(Self {
            stem,
            proj,
            pos_embed,
            max: m,
            patch: cfg.patch_size,
        })
    }

    /// The position table centre-cropped to an `h × w` patch grid, `[1, h·w, D]`.
    pub fn cropped_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        if h > self.max || w > self.max {
            return Err(Error::Input(format!(
                "latent grid {h}×{w} patches is larger than the position table allows ({m}×{m}, i.e. at most {}×{} latent pixels)",
                self.max * self.patch,
                self.max * self.patch,
                m = self.max
            )));
        }
        let top = (self.max - h) / 2;
        let left = (self.max - w) / 2;
        let d = self.pos_embed.dim(2)?;
        let t = self
            .pos_embed
            .reshape((1, self.max, self.max, d))?
            .narrow(1, top, h)?
            .narrow(2, left, w)?
            .reshape((1, h * w, d))?;
        Ok(t)
    }

    /// # Shapes
    /// `x: [B, C, H, W]` → `[B, (H/p)·(W/p), D]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, hh, ww) = x.dims4()?;
        let (h, w) = (hh / self.patch, ww / self.patch);
        let pos = self.cropped_pos_embed(h, w)?;
        let mut x = x.clone();
        for conv in &self.stem {
            x = conv_as(conv, &x)?.silu()?;
        }
        let y = conv_as(&self.proj, &x)?;
        let y = y.flatten_from(2)?.transpose(1, 2)?;
        Ok(y.broadcast_add(&pos.to_dtype(y.dtype())?)?)
    }
}

/// `conv(x)` in `x`'s dtype (weights are cast when stored in another).
fn conv_as(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    if conv.weight().dtype() == x.dtype() {
        return Ok(conv.forward(x)?);
    }
    let w = conv.weight().to_dtype(x.dtype())?;
    let b = conv.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
    Ok(Conv2d::new(w, b, *conv.config()).forward(x)?)
}

/// Sinusoidal timestep features (diffusers `Timesteps(256, flip_sin_to_cos=True, shift=0)`), in f32.
///
/// # Shapes
/// `t: [B]` → `[B, dim]`
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let dev = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Ok(Tensor::cat(&[args.cos()?, args.sin()?], 1)?)
}

/// Two linears with SiLU between (diffusers `TimestepEmbedding` / `PixArtAlphaTextProjection`).
#[derive(Debug, Clone)]
pub struct Mlp2 {
    linear_1: Linear,
    linear_2: Linear,
}

impl Mlp2 {
    pub fn new(vb: VarBuilder, din: usize, dout: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(din, dout, vb.pp("linear_1"))?,
            linear_2: linear(dout, dout, vb.pp("linear_2"))?,
        })
    }

    /// # Shapes
    /// `x: [B, din]` → `[B, dout]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)?)
    }
}

/// `time_text_embed`: timestep embedding plus pooled-text projection.
#[derive(Debug, Clone)]
pub struct TimeTextEmbed {
    timestep_embedder: Mlp2,
    text_embedder: Mlp2,
}

pub const TIMESTEP_FEATURES: usize = 256;

impl TimeTextEmbed {
    pub fn new(vb: VarBuilder, cfg: &MmditConfig) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            timestep_embedder: Mlp2::new(vb.pp("timestep_embedder"), TIMESTEP_FEATURES, d)?,
            text_embedder: Mlp2::new(vb.pp("text_embedder"), cfg.pooled_projection_dim, d)?,
        })
    }

    /// # Shapes
    /// `t: [B]` (model timestep = σ·1000), `pooled: [B, Dp]` → `[B, D]`
    pub fn forward(&self, t: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        let f = timestep_features(t, TIMESTEP_FEATURES)?.to_dtype(pooled.dtype())?;
        let te = self.timestep_embedder.forward(&f)?;
        let pe = self.text_embedder.forward(pooled)?;
        Ok((te + pe)?)
    }
}
