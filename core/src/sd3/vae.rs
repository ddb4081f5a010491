//! The SD3 16-channel `AutoencoderKL` (diffusers v0.42.1, `models/autoencoders/autoencoder_kl.py`
//! and `models/autoencoders/vae.py`): encoder to the posterior mean, decoder back to pixels, and
//! the latent normalisation `(mean − shift)·scale`. Built from candle-transformers 0.11.1's public
//! `stable_diffusion` blocks (its own `AutoEncoderKL` hides the posterior mean).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};
use serde::Deserialize;

use super::parts::{ModelForm, Part, PipelineParts};
use super::vae_weights::VaeWeights;
use crate::error::{Error, Result};
use crate::mmdit::checkpoint::loading_error;

/// SD3's latent shift (`vae/config.json` `shift_factor`), used when a single file has no config.
pub const SD3_SHIFT: f64 = 0.0609;
/// SD3's latent scale (`scaling_factor`).
pub const SD3_SCALE: f64 = 1.5305;

fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn default_blocks() -> Vec<usize> {
    vec![64]
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}

/// `vae/config.json` (diffusers field names and defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "default_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
}

impl VaeConfig {
    /// SD3 / SD3.5's VAE (`stabilityai/stable-diffusion-3-medium-diffusers`, `vae/config.json`).
    pub fn sd3() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 16,
            norm_num_groups: 32,
            shift_factor: Some(SD3_SHIFT),
            scaling_factor: SD3_SCALE,
            use_quant_conv: false,
            use_post_quant_conv: false,
            mid_block_add_attention: true,
            down_block_types: vec![],
            up_block_types: vec![],
        }
    }

    /// Reads a diffusers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Checks what the model code supports.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() || self.latent_channels == 0 {
            return Err("block_out_channels and latent_channels must be non-empty".into());
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| *c == 0 || c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "norm_num_groups {} does not divide block_out_channels {:?}",
                self.norm_num_groups, self.block_out_channels
            ));
        }
        let n = self.block_out_channels.len();
        let bad = |types: &[String], want: &str| {
            !(types.is_empty() || (types.len() == n && types.iter().all(|t| t == want)))
        };
        if bad(&self.down_block_types, "DownEncoderBlock2D")
            || bad(&self.up_block_types, "UpDecoderBlock2D")
        {
            return Err(format!(
                "only {n} DownEncoderBlock2D / UpDecoderBlock2D blocks are supported, got {:?} / {:?}",
                self.down_block_types, self.up_block_types
            ));
        }
        if !self.mid_block_add_attention {
            return Err("mid_block_add_attention = false is not supported".into());
        }
        Ok(())
    }

    /// Pixels per latent cell: `2^(blocks − 1)` (8 for SD3), as diffusers' `vae_scale_factor`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The latent shift (0 when the config has none).
    pub fn shift(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }
}

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, k, cfg, vb)
}

fn mid_block(
    vb: VarBuilder,
    channels: usize,
    groups: usize,
) -> candle_core::Result<UNetMidBlock2D> {
    // diffusers: one resnet, one single-head attention (head dim = channels), one resnet, eps 1e-6.
    let cfg = UNetMidBlock2DConfig {
        num_layers: 1,
        resnet_eps: 1e-6,
        resnet_groups: Some(groups),
        attn_num_head_channels: None,
        output_scale_factor: 1.0,
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

/// diffusers' `Encoder` (`vae.py`): conv_in, down blocks, mid block, norm, SiLU, conv_out.
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let ch = &c.block_out_channels;
        let last = ch[ch.len() - 1];
        let down = (0..ch.len())
            .map(|i| {
                let cfg = DownEncoderBlock2DConfig {
                    num_layers: c.layers_per_block,
                    resnet_eps: 1e-6,
                    resnet_groups: c.norm_num_groups,
                    output_scale_factor: 1.0,
                    add_downsample: i + 1 < ch.len(),
                    downsample_padding: 0,
                };
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::new(vb.pp(format!("down_blocks.{i}")), cin, ch[i], cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv(c.in_channels, ch[0], 3, vb.pp("conv_in"))?,
            down,
            mid: mid_block(vb.pp("mid_block"), last, c.norm_num_groups)?,
            norm_out: candle_nn::group_norm(c.norm_num_groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv(last, 2 * c.latent_channels, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down {
            h = b.forward(&h)?;
        }
        let h = self.mid.forward(&h, None)?;
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

/// diffusers' `Decoder` (`vae.py`): conv_in, mid block, up blocks (layers_per_block + 1
/// resnets each), norm, SiLU, conv_out.
struct Decoder {
    conv_in: Conv2d,
    mid: UNetMidBlock2D,
    up: Vec<UpDecoderBlock2D>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let up = (0..rev.len())
            .map(|i| {
                let cfg = UpDecoderBlock2DConfig {
                    num_layers: c.layers_per_block + 1,
                    resnet_eps: 1e-6,
                    resnet_groups: c.norm_num_groups,
                    output_scale_factor: 1.0,
                    add_upsample: i + 1 < rev.len(),
                };
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                UpDecoderBlock2D::new(vb.pp(format!("up_blocks.{i}")), cin, rev[i], cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let first = c.block_out_channels[0];
        Ok(Self {
            conv_in: conv(c.latent_channels, rev[0], 3, vb.pp("conv_in"))?,
            mid: mid_block(vb.pp("mid_block"), rev[0], c.norm_num_groups)?,
            up,
            norm_out: candle_nn::group_norm(
                c.norm_num_groups,
                first,
                1e-6,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(first, c.out_channels, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?, None)?;
        for b in &self.up {
            h = b.forward(&h)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

/// The loaded VAE.
pub struct Vae {
    cfg: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
    device: Device,
    /// The weight file it was read from.
    pub file: PathBuf,
}

impl Vae {
    /// Opens the pipeline's VAE: its `vae/` folder, or the single file's `first_stage_model.*`
    /// (with `vae/config.json` beside the file when there is one). On CPU the weights are kept
    /// in f32 whatever `dtype` asks.
    pub fn open(parts: &PipelineParts, dev: &Device, dtype: DType) -> Result<Self> {
        let w = parts.weights(Part::Vae)?;
        match parts.form {
            ModelForm::PipelineFolder => {
                let config = w.config.clone().ok_or_else(|| {
                    let dir = w.files.first().and_then(|f| f.parent());
                    Error::Load(format!(
                        "{} is missing (the VAE's configuration)",
                        dir.map(|d| d.join("config.json"))
                            .unwrap_or_else(|| parts.path.join("vae/config.json"))
                            .display()
                    ))
                })?;
                Self::from_files(&w.files, &config, dev, dtype)
            }
            ModelForm::SingleFile => {
                let ww = VaeWeights::open(&w.files, &w.prefix, true)?;
                Self::from_ldm(ww, w.config.as_deref(), dev, dtype)
            }
        }
    }

    /// A diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors`.
    pub fn from_folder(dir: &Path, dev: &Device, dtype: DType) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::Load(format!(
                "{} is missing (the VAE's configuration)",
                config.display()
            )));
        }
        Self::from_files(&[weight_file(dir)?], &config, dev, dtype)
    }

    /// diffusers-named weights in `files` described by `config` (a diffusers `config.json`).
    pub fn from_files(
        files: &[PathBuf],
        config: &Path,
        dev: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let cfg = VaeConfig::from_json_file(config)?;
        let w = VaeWeights::open(files, "", false)?;
        check_shapes(&w, &cfg)?;
        Self::build(w, cfg, dev, dtype)
    }

    /// Stability's single file: the VAE under `prefix` in LDM names. Its configuration is
    /// `config` (a diffusers `config.json`, checked against the shapes) or, without one, read
    /// from the shapes with SD3's group count (32), shift and scale.
    pub fn from_single_file(
        file: &Path,
        prefix: &str,
        config: Option<&Path>,
        dev: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let w = VaeWeights::open(&[file.to_path_buf()], prefix, true)?;
        Self::from_ldm(w, config, dev, dtype)
    }

    fn from_ldm(w: VaeWeights, config: Option<&Path>, dev: &Device, dtype: DType) -> Result<Self> {
        let cfg = match config {
            Some(p) => VaeConfig::from_json_file(p)?,
            None => {
                let cfg = infer_config(&w)?;
                cfg.validate().map_err(|e| {
                    Error::Config(format!(
                        "{}: {e}; put the VAE's diffusers config.json in a vae/ folder beside the file",
                        w.file.display()
                    ))
                })?;
                cfg
            }
        };
        check_shapes(&w, &cfg)?;
        Self::build(w, cfg, dev, dtype)
    }

    fn build(w: VaeWeights, cfg: VaeConfig, dev: &Device, dtype: DType) -> Result<Self> {
        let dtype = if dev.is_cpu() { DType::F32 } else { dtype };
        let file = w.file.clone();
        let vb = VarBuilder::from_backend(
            Box::new(crate::named_backend::NamedBackend(Arc::new(w))),
            dtype,
            dev.clone(),
        );
        let lc = cfg.latent_channels;
        let build = || -> candle_core::Result<Self> {
            Ok(Self {
                encoder: Encoder::new(vb.pp("encoder"), &cfg)?,
                decoder: Decoder::new(vb.pp("decoder"), &cfg)?,
                quant_conv: cfg
                    .use_quant_conv
                    .then(|| conv(2 * lc, 2 * lc, 1, vb.pp("quant_conv")))
                    .transpose()?,
                post_quant_conv: cfg
                    .use_post_quant_conv
                    .then(|| conv(lc, lc, 1, vb.pp("post_quant_conv")))
                    .transpose()?,
                cfg: cfg.clone(),
                dtype,
                device: dev.clone(),
                file: file.clone(),
            })
        };
        build().map_err(loading_error)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Checks an image batch.
    fn check_image(&self, image: &Tensor) -> Result<()> {
        let f = self.cfg.scale_factor();
        match image.dims() {
            [_, c, h, w]
                if *c == self.cfg.in_channels && h % f == 0 && w % f == 0 && *h > 0 && *w > 0 =>
            {
                Ok(())
            }
            d => Err(Error::Input(format!(
                "VAE input must be [B, {}, H, W] with H and W positive multiples of {f}, got {d:?}",
                self.cfg.in_channels
            ))),
        }
    }

    /// The posterior mean of the encoder's diagonal Gaussian.
    ///
    /// # Shapes
    /// `image: [B, 3, H, W]` in [-1, 1] → `[B, latent_channels, H/f, W/f]` f32 (f = 8 for SD3)
    pub fn posterior_mean(&self, image: &Tensor) -> Result<Tensor> {
        self.check_image(image)?;
        let x = image.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut moments = self.encoder.forward(&x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        Ok(moments
            .narrow(1, 0, self.cfg.latent_channels)?
            .to_dtype(DType::F32)?)
    }

    /// The latent the transformer sees: `(mean − shift)·scale`.
    ///
    /// # Shapes
    /// `image: [B, 3, H, W]` in [-1, 1] → `[B, latent_channels, H/f, W/f]` f32
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let mean = self.posterior_mean(image)?;
        Ok(((mean - self.cfg.shift())? * self.cfg.scaling_factor)?)
    }

    /// Pixels from a transformer latent: decoder(`latent / scale + shift`).
    ///
    /// # Shapes
    /// `latents: [B, latent_channels, h, w]` → `[B, 3, h·f, w·f]` f32, about [-1, 1]
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        match latents.dims() {
            [_, c, h, w] if *c == self.cfg.latent_channels && *h > 0 && *w > 0 => {}
            d => {
                return Err(Error::Input(format!(
                    "VAE latents must be [B, {}, h, w], got {d:?}",
                    self.cfg.latent_channels
                )))
            }
        }
        let z = ((latents.to_dtype(DType::F32)? / self.cfg.scaling_factor)? + self.cfg.shift())?;
        let mut z = z.to_device(&self.device)?.to_dtype(self.dtype)?;
        if let Some(q) = &self.post_quant_conv {
            z = q.forward(&z)?;
        }
        Ok(self.decoder.forward(&z)?.to_dtype(DType::F32)?)
    }
}

/// The weight file of a diffusers `vae/` folder.
fn weight_file(dir: &Path) -> Result<PathBuf> {
    let preferred = dir.join("diffusion_pytorch_model.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Load(format!(
            "{} has no diffusion_pytorch_model.safetensors",
            dir.display()
        ))),
        _ => Err(Error::Load(format!(
            "{} has several *.safetensors files and no diffusion_pytorch_model.safetensors",
            dir.display()
        ))),
    }
}

/// The configuration of a single file's VAE, from its shapes (groups, shift, scale: SD3's).
fn infer_config(w: &VaeWeights) -> Result<VaeConfig> {
    let mut blocks = vec![];
    while w.contains(&format!(
        "encoder.down_blocks.{}.resnets.0.conv1.weight",
        blocks.len()
    )) {
        let s = w.need_shape(&format!(
            "encoder.down_blocks.{}.resnets.0.conv1.weight",
            blocks.len()
        ))?;
        blocks.push(s[0]);
    }
    if blocks.is_empty() {
        return Err(Error::Load(format!(
            "{}: VAE tensor `{}` is missing",
            w.file.display(),
            w.stored_name("encoder.down_blocks.0.resnets.0.conv1.weight")
        )));
    }
    let layers = (0..)
        .take_while(|j| w.contains(&format!("encoder.down_blocks.0.resnets.{j}.conv1.weight")))
        .count();
    let conv_in = w.need_shape("encoder.conv_in.weight")?;
    let dec_in = w.need_shape("decoder.conv_in.weight")?;
    let dec_out = w.need_shape("decoder.conv_out.weight")?;
    Ok(VaeConfig {
        in_channels: conv_in.get(1).copied().unwrap_or(0),
        out_channels: dec_out.first().copied().unwrap_or(0),
        block_out_channels: blocks,
        layers_per_block: layers,
        latent_channels: dec_in.get(1).copied().unwrap_or(0),
        use_quant_conv: w.contains("quant_conv.weight"),
        use_post_quant_conv: w.contains("post_quant_conv.weight"),
        ..VaeConfig::sd3()
    })
}

/// Checks the shapes that define the architecture against the configuration, so a mismatch names
/// the tensor and both sizes.
fn check_shapes(w: &VaeWeights, cfg: &VaeConfig) -> Result<()> {
    let ch = &cfg.block_out_channels;
    let last = ch[ch.len() - 1];
    let want: [(&str, Vec<usize>); 3] = [
        ("encoder.conv_in.weight", vec![ch[0], cfg.in_channels, 3, 3]),
        (
            "encoder.conv_out.weight",
            vec![2 * cfg.latent_channels, last, 3, 3],
        ),
        (
            "decoder.conv_in.weight",
            vec![last, cfg.latent_channels, 3, 3],
        ),
    ];
    for (name, exp) in want {
        let got = w.need_shape(name)?;
        if got != exp {
            return Err(Error::Load(format!(
                "{}: VAE tensor `{}` has shape {got:?}, but the configuration implies {exp:?}",
                w.file.display(),
                w.stored_name(name)
            )));
        }
    }
    Ok(())
}
