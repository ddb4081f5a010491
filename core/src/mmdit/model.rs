//! The whole SD3-family transformer (diffusers `SD3Transformer2DModel`, diffusers v0.42.1
//! `models/transformers/transformer_sd3.py`): embeddings, joint blocks, final adaLN and
//! unpatchify, with typed per-block capture and optional I2T perturbation.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::attention::AttnRun;
use super::block::JointBlock;
use super::checkpoint::{loading_error, Checkpoint, Layout};
use super::config::{MmditConfig, Variant};
use super::embed::{PatchEmbed, TimeTextEmbed};
use super::layers::{layer_norm, linear, modulate, AdaLn, Linear};
use crate::capture::{BlockCapture, CaptureSpec};
use crate::error::{Error, Result};
use crate::perturb::{BlurSpec, I2tBlur};

/// Default bytes for one chunk of attention probabilities.
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 20;

/// Options of one forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    pub capture: CaptureSpec,
    /// I2T blur at some blocks (`None` = unperturbed).
    pub blur: Option<BlurSpec>,
    /// Bytes one chunk of attention probabilities may take.
    pub chunk_bytes: usize,
    /// Differentiable formulation (for training).
    pub differentiable: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            capture: CaptureSpec::default(),
            blur: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            differentiable: false,
        }
    }
}

/// Output of [`Mmdit::forward`].
#[derive(Debug, Clone)]
pub struct MmditOutput {
    /// `[B, C, H, W]` predicted velocity (flow matching).
    pub sample: Tensor,
    /// One record per block, in block order.
    pub blocks: Vec<BlockCapture>,
    /// Image tokens (patch grid `grid.0 × grid.1`).
    pub n_img: usize,
    /// Text tokens.
    pub n_txt: usize,
    /// Patch grid (rows, columns).
    pub grid: (usize, usize),
}

/// The SD3 / SD3.5 MM-DiT.
#[derive(Debug, Clone)]
pub struct Mmdit {
    cfg: MmditConfig,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: AdaLn,
    proj_out: Linear,
    /// Weight storage dtype.
    dtype: DType,
    /// Activation dtype (f32 for bf16 weights on CPU).
    compute: DType,
    device: Device,
}

impl Mmdit {
    /// Builds the model from weights named as diffusers names them.
    pub fn new(vb: VarBuilder, cfg: &MmditConfig) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        let p = cfg.patch_size;
        let blocks = (0..cfg.num_layers)
            .map(|i| JointBlock::new(vb.pp(format!("transformer_blocks.{i}")), cfg, i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            pos_embed: PatchEmbed::new(vb.pp("pos_embed"), cfg)?,
            time_text_embed: TimeTextEmbed::new(vb.pp("time_text_embed"), cfg)?,
            context_embedder: linear(
                cfg.joint_attention_dim,
                cfg.caption_projection_dim,
                vb.pp("context_embedder"),
            )?,
            blocks,
            norm_out: AdaLn::new(vb.pp("norm_out"), d, 2)?,
            proj_out: linear(d, p * p * cfg.out_channels(), vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            compute: if vb.dtype() == DType::BF16 && vb.device().is_cpu() {
                DType::F32
            } else {
                vb.dtype()
            },
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &MmditConfig {
        &self.cfg
    }

    /// Weight storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Activation dtype: the weight dtype, except f32 for bf16 weights on CPU.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks the inputs' ranks and sizes against the model, with messages naming the tensor.
    fn check_inputs(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<(usize, usize)> {
        let c = &self.cfg;
        let bad = |name: &str, want: String, got: &Tensor| {
            Error::Input(format!(
                "`{name}` must be {want}, got shape {:?}",
                got.dims()
            ))
        };
        let [b, ch, hh, ww] = x.dims() else {
            return Err(bad("hidden_states", "[B, C, H, W]".into(), x));
        };
        let (b, ch, hh, ww) = (*b, *ch, *hh, *ww);
        if ch != c.in_channels {
            return Err(bad(
                "hidden_states",
                format!("[B, {}, H, W]", c.in_channels),
                x,
            ));
        }
        if hh % c.patch_size != 0 || ww % c.patch_size != 0 || hh == 0 || ww == 0 {
            return Err(Error::Input(format!(
                "latent size {hh}×{ww} is not a positive multiple of the patch size {}",
                c.patch_size
            )));
        }
        if t.dims() != [b] {
            return Err(bad("timestep", format!("[{b}]"), t));
        }
        match ctx.dims() {
            [b2, l, dj] if *b2 == b && *dj == c.joint_attention_dim && *l > 0 => {}
            _ => {
                return Err(bad(
                    "encoder_hidden_states",
                    format!("[{b}, L, {}] with L ≥ 1", c.joint_attention_dim),
                    ctx,
                ))
            }
        }
        if pooled.dims() != [b, c.pooled_projection_dim] {
            return Err(bad(
                "pooled_projections",
                format!("[{b}, {}]", c.pooled_projection_dim),
                pooled,
            ));
        }
        Ok((hh / c.patch_size, ww / c.patch_size))
    }

    /// One forward pass.
    ///
    /// # Shapes
    /// `x: [B, C, H, W]` latent, `t: [B]` model timestep (σ·1000), `ctx: [B, L, Dj]` text
    /// embeddings, `pooled: [B, Dp]` → `sample: [B, C_out, H, W]` plus per-block captures.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Tensor,
        pooled: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<MmditOutput> {
        let (gh, gw) = self.check_inputs(x, t, ctx, pooled)?;
        let n_txt = ctx.dim(1)?;
        if let Some(b) = &opts.blur {
            b.validate(self.cfg.num_layers)?;
        }
        let blur = match &opts.blur {
            Some(b) if !b.layers.is_empty() => Some(I2tBlur::new(b, n_txt, &self.device)?),
            _ => None,
        };
        let x = x.to_dtype(self.compute)?;
        let ctx = ctx.to_dtype(self.compute)?;
        let pooled = pooled.to_dtype(self.compute)?;

        let mut img = self.pos_embed.forward(&x)?;
        let temb = self.time_text_embed.forward(t, &pooled)?;
        let silu_temb = temb.silu()?;
        let mut txt = self.context_embedder.forward(&ctx)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let perturbed = opts.blur.as_ref().is_some_and(|b| b.layers.contains(&i));
            let run = AttnRun {
                wants: opts.capture.for_block(i),
                blur: if perturbed { blur.as_ref() } else { None },
                chunk_bytes: opts.chunk_bytes,
                differentiable: opts.differentiable,
            };
            let out = block.forward(&img, &txt, &silu_temb, (gh, gw), &run)?;
            img = out.img;
            if let Some(t) = out.txt {
                txt = t;
            }
            blocks.push(out.capture);
        }
        let m = self.norm_out.forward(&silu_temb)?;
        // AdaLayerNormContinuous: (scale, shift).
        let h = modulate(&layer_norm(&img, 1e-6)?, &m[1], &m[0])?;
        let h = self.proj_out.forward(&h)?;
        let sample = self.unpatchify(&h, gh, gw)?.to_dtype(DType::F32)?;
        Ok(MmditOutput {
            sample,
            blocks,
            n_img: gh * gw,
            n_txt,
            grid: (gh, gw),
        })
    }

    /// # Shapes
    /// `h: [B, gh·gw, p·p·C]` → `[B, C, gh·p, gw·p]`
    fn unpatchify(&self, h: &Tensor, gh: usize, gw: usize) -> Result<Tensor> {
        let b = h.dim(0)?;
        let p = self.cfg.patch_size;
        let c = self.cfg.out_channels();
        let t = h
            .reshape((b, gh, gw, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?;
        Ok(t.contiguous()?.reshape((b, c, gh * p, gw * p))?)
    }
}

/// A model loaded from a user's checkpoint, with what was detected.
pub struct LoadedMmdit {
    pub model: Mmdit,
    pub variant: Variant,
    pub layout: Layout,
    pub files: Vec<std::path::PathBuf>,
}

/// Loads an SD3-family transformer from any supported form; `config_override` is a
/// diffusers-style transformer `config.json` (sets heads for single files).
pub fn load_mmdit(
    path: &Path,
    config_override: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<LoadedMmdit> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::Input(format!(
            "unsupported model dtype {dtype:?}; use f32, f16 or bf16"
        )));
    }
    let ck = Arc::new(Checkpoint::open(path)?);
    let over = config_override
        .map(MmditConfig::from_json_file)
        .transpose()?;
    let cfg = ck.config(over.as_ref())?;
    let layout = ck.layout().clone();
    let files = ck.files.clone();
    let vb = VarBuilder::from_backend(
        Box::new(crate::named_backend::NamedBackend(ck)),
        dtype,
        device.clone(),
    );
    let model = Mmdit::new(vb, &cfg).map_err(loading_error)?;
    Ok(LoadedMmdit {
        variant: cfg.variant(),
        model,
        layout,
        files,
    })
}
