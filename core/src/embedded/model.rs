//! The embedded model: the SD3 transformer with a tiny config plus the word-level text encoder,
//! in pixel space. Saved as a folder (`model.json`, `transformer/` in diffusers form — so the
//! engine's loader and `ditlens forward` read it too — and `text_encoder.safetensors`), or
//! embedded in the binary as bytes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::config::EmbeddedConfig;
use super::text_encoder::TextEncoder;
use super::tokenizer::{Tokens, WordTokenizer};
use crate::error::{Error, Result};
use crate::mmdit::Mmdit;

/// A loaded embedded model.
#[derive(Debug, Clone)]
pub struct EmbeddedModel {
    pub cfg: EmbeddedConfig,
    pub mmdit: Mmdit,
    pub text: TextEncoder,
    pub tokenizer: WordTokenizer,
}

/// Seeded standard-normal tensor (reproducible across machines, unlike the device RNG).
pub fn seeded_randn(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec(seeded_randn_vec(n, seed), shape, device)?)
}

/// `n` seeded standard-normal values (the values of [`seeded_randn`]).
pub fn seeded_randn_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

impl EmbeddedModel {
    /// Builds the model over weights (a `VarBuilder` per part).
    pub fn new(cfg: &EmbeddedConfig, transformer: VarBuilder, text: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let load = |e: candle_core::Error| crate::mmdit::checkpoint::loading_error(e);
        Ok(Self {
            cfg: cfg.clone(),
            mmdit: Mmdit::new(transformer, &cfg.transformer).map_err(load)?,
            text: TextEncoder::new(text, &cfg.text).map_err(load)?,
            tokenizer: WordTokenizer::shapes(cfg.text.max_len),
        })
    }

    /// Over trainable variables.
    pub fn from_varmaps(
        cfg: &EmbeddedConfig,
        transformer: &VarMap,
        text: &VarMap,
        device: &Device,
    ) -> Result<Self> {
        Self::new(
            cfg,
            VarBuilder::from_varmap(transformer, DType::F32, device),
            VarBuilder::from_varmap(text, DType::F32, device),
        )
    }

    /// From the three files' bytes (as embedded in the binary).
    pub fn from_bytes(
        model_json: &[u8],
        transformer: &[u8],
        text: &[u8],
        device: &Device,
    ) -> Result<Self> {
        let cfg: EmbeddedConfig = serde_json::from_slice(model_json)
            .map_err(|e| Error::Config(format!("model.json: {e}")))?;
        let vt = VarBuilder::from_buffered_safetensors(transformer.to_vec(), DType::F32, device)?;
        let vx = VarBuilder::from_buffered_safetensors(text.to_vec(), DType::F32, device)?;
        Self::new(&cfg, vt, vx)
    }

    /// From a saved folder.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
        Self::from_bytes(
            &read(&dir.join("model.json"))?,
            &read(&dir.join("transformer/diffusion_pytorch_model.safetensors"))?,
            &read(&dir.join("text_encoder.safetensors"))?,
            device,
        )
    }

    pub fn device(&self) -> &Device {
        self.mmdit.device()
    }

    /// Tokenizes prompts.
    pub fn tokenize(&self, prompt: &str) -> Result<Tokens> {
        self.tokenizer.encode(prompt)
    }

    /// Text context and the constant pooled vector (zeros: captions reach the image only
    /// through joint attention).
    ///
    /// # Shapes
    /// `tokens: B` → `ctx: [B, L, D]`, `pooled: [B, Dp]`
    pub fn encode(&self, tokens: &[&Tokens]) -> Result<(Tensor, Tensor)> {
        let l = self.cfg.text.max_len;
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (tokens.len(), l), self.device())?;
        let ctx = self.text.forward(&ids)?;
        let pooled = Tensor::zeros(
            (tokens.len(), self.cfg.transformer.pooled_projection_dim),
            DType::F32,
            self.device(),
        )?;
        Ok((ctx, pooled))
    }
}

/// RGB bytes (`size²·3`, row-major) → `[3, size, size]` in [-1, 1].
pub fn rgb_to_tensor(rgb: &[u8], size: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = rgb.iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
    Ok(Tensor::from_vec(v, (size, size, 3), device)?
        .permute((2, 0, 1))?
        .contiguous()?)
}

/// `[3, H, W]` in [-1, 1] → RGB bytes, row-major.
pub fn tensor_to_rgb(x: &Tensor) -> Result<Vec<u8>> {
    let x = ((x.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?.round()?;
    let v: Vec<f32> = x.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
    Ok(v.into_iter().map(|f| f as u8).collect())
}
