//! The SD3-family transformer's configuration (diffusers' `SD3Transformer2DModel` field names)
//! and the architecture variant, read from `config.json` or inferred from checkpoint shapes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architecture variant, detected from the weights (never from a file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// SD3-medium: plain joint blocks, no qk-norm, no second attention.
    Sd3,
    /// SD3.5-large: RMS qk-norm on both streams.
    Sd35Large,
    /// SD3.5-medium (MMDiT-X): qk-norm plus an image-only second attention in some blocks.
    Sd35Medium,
}

impl Variant {
    /// Short human-readable name, as shown in the app and the JSON sidecars.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Sd3 => "sd3",
            Variant::Sd35Large => "sd3.5-large",
            Variant::Sd35Medium => "sd3.5-medium",
        }
    }
}

/// Transformer configuration, with diffusers' `config.json` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmditConfig {
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    pub pos_embed_max_size: usize,
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    #[serde(default)]
    pub qk_norm: Option<String>,
    /// Widths of 3×3 convolutions (padding 1, SiLU after each) run on the input at full
    /// resolution before the patch embedding: a small convolutional front end for a pixel-space
    /// model, where a latent-space SD3 has its VAE encoder. Weights `pos_embed.stem.{i}`.
    /// Empty (absent) in SD3 checkpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv_stem: Vec<usize>,
    /// A depthwise 3×3 convolution over the patch grid inside every image feed-forward
    /// (`ff.conv`, weight `[4D, 1, 3, 3]` and bias), added to the first projection's output
    /// before the GELU (as SegFormer's Mix-FFN): neighbouring tokens mix in every block, a
    /// locality prior for a small pixel-space model. Absent (false) in SD3 checkpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ff_conv: bool,
}

fn default_sample_size() -> usize {
    128
}

impl MmditConfig {
    /// Hidden size of both streams (`heads × head_dim`).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output latent channels (defaults to the input channels, as diffusers does).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Channels the patch embedding reads: the last stem width, or the input channels.
    pub fn patch_in_channels(&self) -> usize {
        self.conv_stem.last().copied().unwrap_or(self.in_channels)
    }

    /// Whether q/k are RMS-normalised per head.
    pub fn has_qk_norm(&self) -> bool {
        self.qk_norm.is_some()
    }

    /// Whether block `i` has the image-only second attention (MMDiT-X).
    pub fn has_attn2(&self, i: usize) -> bool {
        self.dual_attention_layers.contains(&i)
    }

    /// The architecture variant this configuration describes.
    pub fn variant(&self) -> Variant {
        if !self.dual_attention_layers.is_empty() {
            Variant::Sd35Medium
        } else if self.has_qk_norm() {
            Variant::Sd35Large
        } else {
            Variant::Sd3
        }
    }

    /// Reads a diffusers-style transformer `config.json`.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: MmditConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks internal consistency (sizes that must agree).
    pub fn validate(&self) -> Result<()> {
        if let Some(q) = &self.qk_norm {
            if q != "rms_norm" {
                return Err(Error::Config(format!(
                    "qk_norm `{q}` is not supported (only `rms_norm`, as SD3.5 uses)"
                )));
            }
        }
        if self.num_layers == 0 || self.num_attention_heads == 0 || self.attention_head_dim == 0 {
            return Err(Error::Config(
                "num_layers, num_attention_heads and attention_head_dim must be positive".into(),
            ));
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(Error::Config(format!(
                "caption_projection_dim {} differs from heads × head_dim = {}",
                self.caption_projection_dim,
                self.inner_dim()
            )));
        }
        if self.conv_stem.contains(&0) {
            return Err(Error::Config("conv_stem widths must be positive".into()));
        }
        if let Some(&bad) = self
            .dual_attention_layers
            .iter()
            .find(|&&i| i >= self.num_layers)
        {
            return Err(Error::Config(format!(
                "dual_attention_layers names block {bad} but the model has {} blocks",
                self.num_layers
            )));
        }
        Ok(())
    }
}
