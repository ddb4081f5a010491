//! The SD3 / SD3.5 pipeline over a user's files: generation with classifier-free guidance exactly
//! as diffusers' `StableDiffusion3Pipeline.__call__` (diffusers v0.42.1,
//! `pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`: batch `[uncond, cond]`,
//! `uncond + g·(cond − uncond)` when `g > 1`, FlowMatchEuler step on σ, given initial noise),
//! real-image analysis (centre-crop, encode, noise to a step's σ, one captured forward) and
//! decoding to RGB.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;

use super::parts::{ModelForm, Part, PipelineParts};
use super::picture::{centre_square, rgb_to_tensor, tensor_to_rgb};
use super::text::{PromptEncoding, TextEncoders, TextOptions, TokenInfo};
use super::vae::Vae;
use crate::capture::{BlockCapture, CaptureSpec};
use crate::embedded::model::seeded_randn;
use crate::error::{Error, Result};
use crate::mmdit::{load_mmdit, ForwardOptions, Layout, Mmdit, MmditOutput, Variant};
use crate::perturb::Perturbation;
use crate::schedule::{noise_to, FlowMatchEuler, Schedule};

/// Latent side SD3-family models are trained at (1024² pixels); a single file has no config,
/// so its size is this, or the position table's if that is smaller.
const SD3_SAMPLE_SIZE: usize = 128;

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub steps: usize,
    /// CFG scale; guidance is applied only when it is > 1, as diffusers does.
    pub guidance: f64,
    /// What to capture (nothing by default).
    pub capture: CaptureSpec,
    /// Step indices to capture at (`None` = every step, when `capture` asks for anything).
    pub capture_steps: Option<Vec<usize>>,
    /// Set from another thread to stop between steps (an error "cancelled").
    pub cancel: Option<Arc<AtomicBool>>,
    /// I2T blur in every forward, or perturbed guidance `v + s·(v(x, c; A) − v(x, c; Ã))` on top
    /// of the (guided) prediction, with `Ã` from one extra forward of the prompt alone.
    pub perturbation: Perturbation,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            steps: 28,
            guidance: 7.0,
            capture: CaptureSpec::default(),
            capture_steps: None,
            cancel: None,
            perturbation: Perturbation::None,
        }
    }
}

/// What one sampling step captured, for the prompt's branch only (batch size 1).
#[derive(Debug, Clone)]
pub struct StepCapture {
    pub step: usize,
    pub sigma: f32,
    pub timestep: f32,
    pub blocks: Vec<BlockCapture>,
}

/// One captured sampling step as the loop sees it: every batch item's blocks.
#[derive(Debug, Clone, Copy)]
pub struct CapturedStep<'a> {
    pub step: usize,
    pub sigma: f32,
    pub timestep: f32,
    /// `[B, …]` captures of each block (B = 2 under CFG: negative, then prompt).
    pub blocks: &'a [BlockCapture],
    /// The prompt's batch item.
    pub item: usize,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Sd3Generated {
    /// `[1, C, h, w]` f32 final latents, before the VAE.
    pub latents: Tensor,
    pub captures: Vec<StepCapture>,
    pub schedule: Schedule,
    /// The prompt's tokens (one per text position).
    pub tokens: Vec<TokenInfo>,
    /// Prompt text dropped by truncation.
    pub truncated: Option<String>,
}

/// One captured forward of a noised real image.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The forward with the prompt (batch size 1).
    pub output: MmditOutput,
    pub step_index: usize,
    pub sigma: f32,
    pub timestep: f32,
    /// `[1, C, h, w]` the image's latent `x0`.
    pub latents: Tensor,
    /// `[1, C, h, w]` `σ·ε + (1 − σ)·x0`.
    pub noised: Tensor,
    /// The centre-cropped, resized picture the model saw.
    pub picture: RgbImage,
    pub tokens: Vec<TokenInfo>,
    pub truncated: Option<String>,
}

/// `scheduler/scheduler_config.json` fields that change the σs (diffusers' defaults).
#[derive(Debug, Deserialize)]
struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default = "one_f64")]
    shift: f64,
    #[serde(default = "thousand")]
    num_train_timesteps: usize,
    #[serde(default)]
    use_dynamic_shifting: bool,
    #[serde(default)]
    invert_sigmas: bool,
    #[serde(default)]
    shift_terminal: Option<f64>,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    use_exponential_sigmas: bool,
    #[serde(default)]
    use_beta_sigmas: bool,
    #[serde(default)]
    stochastic_sampling: bool,
}

fn one_f64() -> f64 {
    1.0
}
fn thousand() -> usize {
    1000
}

/// The scheduler of a pipeline folder, or SD3's (shift 3.0) when there is no config.
fn read_scheduler(path: Option<&Path>) -> Result<FlowMatchEuler> {
    let Some(path) = path else {
        return Ok(FlowMatchEuler::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let c: SchedulerConfig = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let bad = |what: &str| {
        Err(Error::Config(format!(
            "{}: {what} is not supported (SD3 uses FlowMatchEulerDiscreteScheduler with a fixed shift)",
            path.display()
        )))
    };
    if let Some(n) = c.class_name.as_deref() {
        if n != "FlowMatchEulerDiscreteScheduler" {
            return bad(&format!("scheduler `{n}`"));
        }
    }
    if c.use_dynamic_shifting {
        return bad("use_dynamic_shifting");
    }
    if c.invert_sigmas
        || c.shift_terminal.is_some()
        || c.use_karras_sigmas
        || c.use_exponential_sigmas
        || c.use_beta_sigmas
        || c.stochastic_sampling
    {
        return bad("a σ option (invert_sigmas, shift_terminal, karras/exponential/beta σs, stochastic sampling)");
    }
    if c.num_train_timesteps == 0 {
        return bad("num_train_timesteps = 0");
    }
    Ok(FlowMatchEuler {
        shift: c.shift,
        num_train_timesteps: c.num_train_timesteps,
    })
}

/// A loaded SD3-family pipeline.
pub struct Sd3Pipeline {
    pub transformer: Mmdit,
    pub variant: Variant,
    pub layout: Layout,
    /// `None` when opened without text encoders (prompt embeddings are then given directly).
    pub text: Option<TextEncoders>,
    pub vae: Vae,
    pub scheduler: FlowMatchEuler,
    pub parts: PipelineParts,
    /// Latent side the model works at (`sample_size`); pixels = this × the VAE's factor.
    pub latent_size: usize,
}

impl Sd3Pipeline {
    /// Opens a diffusers pipeline folder or a bundled single file, text encoders included.
    pub fn open(path: &Path, dev: &Device, dtype: DType, text: TextOptions) -> Result<Self> {
        Self::open_parts(PipelineParts::locate(path)?, dev, dtype, Some(text))
    }

    /// Opens the transformer, VAE and scheduler only; prompts must then be given as embeddings.
    pub fn open_without_text(path: &Path, dev: &Device, dtype: DType) -> Result<Self> {
        Self::open_parts(PipelineParts::locate(path)?, dev, dtype, None)
    }

    /// Opens located parts (`text: None` skips the text encoders).
    pub fn open_parts(
        parts: PipelineParts,
        dev: &Device,
        dtype: DType,
        text: Option<TextOptions>,
    ) -> Result<Self> {
        let vae = Vae::open(&parts, dev, dtype)?;
        let tw = parts.weights(Part::Transformer)?;
        // A single file has no config: heads are inferred with head_dim 64 (as Stability's code
        // assumes) unless a diffusers `transformer/config.json` sits beside the file.
        let (tpath, beside) = match parts.form {
            ModelForm::PipelineFolder => (parts.path.clone(), None),
            ModelForm::SingleFile => (
                tw.files
                    .first()
                    .cloned()
                    .unwrap_or_else(|| parts.path.clone()),
                tw.config.clone(),
            ),
        };
        let loaded = load_mmdit(&tpath, beside.as_deref(), dtype, dev)?;
        let cfg = loaded.model.config().clone();
        let lc = vae.config().latent_channels;
        if cfg.in_channels != lc || cfg.out_channels() != lc {
            return Err(Error::Config(format!(
                "the transformer in {} takes {} and predicts {} latent channels, but the VAE in {} has {lc}",
                tpath.display(),
                cfg.in_channels,
                cfg.out_channels(),
                vae.file.display()
            )));
        }
        let scheduler = read_scheduler(parts.scheduler_config.as_deref())?;
        let latent_size = if parts.form == ModelForm::SingleFile && beside.is_none() {
            cfg.pos_embed_max_size.min(SD3_SAMPLE_SIZE)
        } else {
            cfg.sample_size
        };
        if latent_size == 0 || latent_size % cfg.patch_size != 0 {
            return Err(Error::Config(format!(
                "sample_size {latent_size} is not a positive multiple of the patch size {}",
                cfg.patch_size
            )));
        }
        let text = text
            .map(|o| TextEncoders::open(&parts, dev, dtype, o))
            .transpose()?;
        Ok(Self {
            variant: loaded.variant,
            layout: loaded.layout,
            transformer: loaded.model,
            text,
            vae,
            scheduler,
            parts,
            latent_size,
        })
    }

    /// Square side in pixels the model works at (1024 for SD3).
    pub fn resolution(&self) -> usize {
        self.latent_size * self.vae.config().scale_factor()
    }

    /// The latent shape of one image at the model's resolution.
    pub fn latent_shape(&self) -> [usize; 4] {
        let c = self.transformer.config().in_channels;
        [1, c, self.latent_size, self.latent_size]
    }

    /// Encodes a prompt with the pipeline's text encoders.
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEncoding> {
        match &self.text {
            Some(t) => t.encode(prompt),
            None => Err(Error::Input(format!(
                "{} was opened without text encoders; give prompt embeddings instead",
                self.parts.path.display()
            ))),
        }
    }

    /// Generates from a prompt: `negative` ("" by default in diffusers) is encoded as well when
    /// guidance applies. `on_step(done, total, latents)` runs after each step; returning `false`
    /// cancels (an error "cancelled").
    pub fn generate(
        &self,
        prompt: &str,
        negative: &str,
        noise: &Tensor,
        opts: &GenerateOptions,
        on_step: impl FnMut(usize, usize, &Tensor) -> bool,
    ) -> Result<Sd3Generated> {
        let cond = self.encode_prompt(prompt)?;
        let uncond = if opts.guidance > 1.0 {
            Some(self.encode_prompt(negative)?)
        } else {
            None
        };
        self.generate_encoded(&cond, uncond.as_ref(), noise, opts, on_step)
    }

    /// Generates from prompt embeddings (`uncond` is needed when guidance > 1).
    ///
    /// # Shapes
    /// `noise: [1, C, h, w]` (C = latent channels, h and w multiples of the patch size);
    /// `cond.prompt_embeds, uncond.prompt_embeds: [1, L, joint_attention_dim]`,
    /// `pooled: [1, pooled_projection_dim]` → `latents: [1, C, h, w]` f32
    pub fn generate_encoded(
        &self,
        cond: &PromptEncoding,
        uncond: Option<&PromptEncoding>,
        noise: &Tensor,
        opts: &GenerateOptions,
        on_step: impl FnMut(usize, usize, &Tensor) -> bool,
    ) -> Result<Sd3Generated> {
        let mut captures = vec![];
        let (latents, schedule) = self.sample(cond, uncond, noise, opts, on_step, |c| {
            captures.push(StepCapture {
                step: c.step,
                sigma: c.sigma,
                timestep: c.timestep,
                blocks: c
                    .blocks
                    .iter()
                    .map(|b| keep_item(b, c.item))
                    .collect::<Result<_>>()?,
            });
            Ok(())
        })?;
        Ok(Sd3Generated {
            latents,
            captures,
            schedule,
            tokens: cond.tokens.clone(),
            truncated: cond.truncated.clone(),
        })
    }

    /// The sampling loop of [`Self::generate_encoded`]: `on_capture` receives each captured
    /// step's blocks for the whole batch with the prompt's item index (1 under CFG), so a caller
    /// can reduce them (e.g. to head means) before the next step. Returns the final latents and
    /// the schedule.
    pub fn sample(
        &self,
        cond: &PromptEncoding,
        uncond: Option<&PromptEncoding>,
        noise: &Tensor,
        opts: &GenerateOptions,
        mut on_step: impl FnMut(usize, usize, &Tensor) -> bool,
        mut on_capture: impl FnMut(CapturedStep<'_>) -> Result<()>,
    ) -> Result<(Tensor, Schedule)> {
        let cfg = self.transformer.config();
        let c = cfg.in_channels;
        match noise.dims() {
            [1, ch, h, w] if *ch == c && *h > 0 && *w > 0 && h % cfg.patch_size == 0 && w % cfg.patch_size == 0 => {}
            d => {
                return Err(Error::Input(format!(
                    "initial noise must be [1, {c}, h, w] with h and w positive multiples of {}, got {d:?}",
                    cfg.patch_size
                )))
            }
        }
        self.check_encoding(cond, "prompt")?;
        let guided = opts.guidance > 1.0;
        if !opts.guidance.is_finite() {
            return Err(Error::Input(format!(
                "guidance must be finite, got {}",
                opts.guidance
            )));
        }
        let (ctx, pooled) = if guided {
            let u = uncond.ok_or_else(|| {
                Error::Input("guidance > 1 needs the negative prompt's embeddings".into())
            })?;
            self.check_encoding(u, "negative prompt")?;
            if u.prompt_embeds.dims() != cond.prompt_embeds.dims() {
                return Err(Error::Input(format!(
                    "negative prompt embeddings {:?} and prompt embeddings {:?} differ in shape",
                    u.prompt_embeds.dims(),
                    cond.prompt_embeds.dims()
                )));
            }
            (
                Tensor::cat(&[&u.prompt_embeds, &cond.prompt_embeds], 0)?,
                Tensor::cat(&[&u.pooled, &cond.pooled], 0)?,
            )
        } else {
            (cond.prompt_embeds.clone(), cond.pooled.clone())
        };
        let dev = self.transformer.device().clone();
        let (ctx, pooled) = (ctx.to_device(&dev)?, pooled.to_device(&dev)?);
        let (cond_ctx, cond_pooled) = (
            cond.prompt_embeds.to_device(&dev)?,
            cond.pooled.to_device(&dev)?,
        );
        let sched = self.scheduler.schedule(opts.steps)?;
        if let Some(bad) = opts
            .capture_steps
            .iter()
            .flatten()
            .find(|&&s| s >= opts.steps)
        {
            return Err(Error::Input(format!(
                "capture step {bad} is outside 0..{}",
                opts.steps
            )));
        }
        let mut x = noise.to_device(&dev)?.to_dtype(DType::F32)?;
        let none = CaptureSpec::default();
        for i in 0..sched.steps() {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(Error::Input("cancelled".into()));
            }
            let capture_here = !opts.capture.is_empty()
                && opts.capture_steps.as_ref().is_none_or(|s| s.contains(&i));
            let fwd = ForwardOptions {
                capture: if capture_here {
                    opts.capture.clone()
                } else {
                    none.clone()
                },
                blur: opts.perturbation.every_forward(),
                ..Default::default()
            };
            let t = sched.timesteps[i];
            let (xin, ts) = if guided {
                (Tensor::cat(&[&x, &x], 0)?, Tensor::new(&[t, t], &dev)?)
            } else {
                (x.clone(), Tensor::new(&[t], &dev)?)
            };
            let out = self.transformer.forward(&xin, &ts, &ctx, &pooled, &fwd)?;
            let vc = out.sample.narrow(0, usize::from(guided), 1)?;
            let mut v = if guided {
                let vu = out.sample.narrow(0, 0, 1)?;
                (&vu + ((&vc - &vu)? * opts.guidance)?)?
            } else {
                vc.clone()
            };
            if let Perturbation::Guidance { blur, scale } = &opts.perturbation {
                let fwd = ForwardOptions {
                    blur: Some(blur.clone()),
                    ..Default::default()
                };
                let vp = self
                    .transformer
                    .forward(&x, &Tensor::new(&[t], &dev)?, &cond_ctx, &cond_pooled, &fwd)?
                    .sample;
                v = (&v + ((&vc - &vp)? * *scale)?)?;
            }
            if capture_here {
                on_capture(CapturedStep {
                    step: i,
                    sigma: sched.sigmas[i],
                    timestep: t,
                    blocks: &out.blocks,
                    item: usize::from(guided),
                })?;
            }
            x = sched.step(i, &x, &v)?;
            if !on_step(i + 1, sched.steps(), &x) {
                return Err(Error::Input("cancelled".into()));
            }
        }
        Ok((x, sched))
    }

    fn check_encoding(&self, e: &PromptEncoding, what: &str) -> Result<()> {
        let cfg = self.transformer.config();
        let ok_embeds =
            matches!(e.prompt_embeds.dims(), [1, l, d] if *l > 0 && *d == cfg.joint_attention_dim);
        let ok_pooled = e.pooled.dims() == [1, cfg.pooled_projection_dim];
        if ok_embeds && ok_pooled {
            return Ok(());
        }
        Err(Error::Input(format!(
            "{what} embeddings must be [1, L, {}] and pooled [1, {}], got {:?} and {:?}",
            cfg.joint_attention_dim,
            cfg.pooled_projection_dim,
            e.prompt_embeds.dims(),
            e.pooled.dims()
        )))
    }

    /// The model's input for a picture: the largest centred square, resized to
    /// [`Self::resolution`], in [-1, 1].
    ///
    /// # Shapes
    /// any `w × h` picture → `[1, 3, S, S]` f32
    pub fn image_tensor(&self, img: &DynamicImage) -> Result<(Tensor, RgbImage)> {
        let pic = centre_square(img, self.resolution())?;
        Ok((rgb_to_tensor(&pic, self.transformer.device())?, pic))
    }

    /// One captured forward of a real picture with a prompt: centre-crop, resize, encode,
    /// noise `x = σ·ε + (1 − σ)·x0` at step `step_index` of `steps` with ε seeded by `seed`.
    pub fn analyse_image(
        &self,
        img: &DynamicImage,
        prompt: &str,
        step_index: usize,
        steps: usize,
        seed: u64,
        capture: &CaptureSpec,
    ) -> Result<Analysis> {
        let cond = self.encode_prompt(prompt)?;
        self.analyse_image_encoded(img, &cond, step_index, steps, seed, capture)
    }

    /// [`Self::analyse_image`] with the prompt's embeddings given.
    pub fn analyse_image_encoded(
        &self,
        img: &DynamicImage,
        cond: &PromptEncoding,
        step_index: usize,
        steps: usize,
        seed: u64,
        capture: &CaptureSpec,
    ) -> Result<Analysis> {
        self.check_encoding(cond, "prompt")?;
        let sched = self.scheduler.schedule(steps)?;
        let sigma = sched.sigma(step_index)?;
        let t = sched.timesteps[step_index];
        let (pixels, picture) = self.image_tensor(img)?;
        let x0 = self.vae.encode(&pixels)?;
        let dev = self.transformer.device().clone();
        let x0 = x0.to_device(&dev)?;
        let eps = seeded_randn(x0.dims(), seed, &dev)?;
        let xt = noise_to(&x0, &eps, sigma)?;
        let fwd = ForwardOptions {
            capture: capture.clone(),
            ..Default::default()
        };
        let output = self.transformer.forward(
            &xt,
            &Tensor::new(&[t], &dev)?,
            &cond.prompt_embeds.to_device(&dev)?,
            &cond.pooled.to_device(&dev)?,
            &fwd,
        )?;
        Ok(Analysis {
            output,
            step_index,
            sigma,
            timestep: t,
            latents: x0,
            noised: xt,
            picture,
            tokens: cond.tokens.clone(),
            truncated: cond.truncated.clone(),
        })
    }

    /// Decodes final latents to an RGB picture.
    ///
    /// # Shapes
    /// `latents: [1, C, h, w]` → `(w·f) × (h·f)` RGB
    pub fn decode(&self, latents: &Tensor) -> Result<RgbImage> {
        tensor_to_rgb(&self.vae.decode(latents)?)
    }
}

/// Batch item `item` of a block's capture, copied so the batch is not kept alive.
fn keep_item(b: &BlockCapture, item: usize) -> Result<BlockCapture> {
    let take = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
        t.as_ref()
            .map(|t| Ok(t.narrow(0, item, 1)?.copy()?))
            .transpose()
    };
    let a = &b.attn;
    let mut out = BlockCapture::default();
    out.attn.i2t = take(&a.i2t)?;
    out.attn.t2i = take(&a.t2i)?;
    out.attn.row_share = take(&a.row_share)?;
    out.attn.vnorm_img = take(&a.vnorm_img)?;
    out.attn.vnorm_txt = take(&a.vnorm_txt)?;
    out.attn.q_img = take(&a.q_img)?;
    out.attn.k_img = take(&a.k_img)?;
    out.attn.v_img = take(&a.v_img)?;
    out.attn2 = take(&b.attn2)?;
    out.hidden_img = take(&b.hidden_img)?;
    out.hidden_txt = take(&b.hidden_txt)?;
    Ok(out)
}
