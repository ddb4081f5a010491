//! What the embedded model does for a user: generate an image from a prompt (FlowMatchEuler +
//! classifier-free guidance, optional I2T blur or perturbed guidance), and open-vocabulary segmentation of any image
//! from its I2T maps (the paper's scheme, in [`crate::segment`]).

use candle_core::Tensor;

use super::guidance::{guided_velocity, Perturbation};
use super::model::{seeded_randn, tensor_to_rgb, EmbeddedModel};
use super::tokenizer::Tokens;
use crate::capture::CaptureSpec;
use crate::error::{Error, Result};
use crate::perturb::BlurSpec;
use crate::schedule::FlowMatchEuler;

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub seed: u64,
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// I2T blur: in every forward, or only in the perturbed-guidance branch when
    /// `perturb_guidance` is set (see [`super::guidance`] for the exact combination).
    pub blur: Option<BlurSpec>,
    /// Perturbed-guidance scale `s` (needs `blur`): `ṽ = v_cfg + s·(v(x; A) − v(x; Ã))`.
    pub perturb_guidance: Option<f64>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 28,
            guidance: 4.0,
            blur: None,
            perturb_guidance: None,
        }
    }
}

impl GenerateOptions {
    /// The perturbation these options ask for.
    pub fn perturbation(&self) -> Result<Perturbation> {
        Perturbation::from_flags(self.blur.as_ref(), self.perturb_guidance)
    }
}

/// A generated image.
#[derive(Debug, Clone)]
pub struct Generated {
    /// RGB bytes, `size × size`.
    pub rgb: Vec<u8>,
    pub size: usize,
    pub tokens: Tokens,
}

impl EmbeddedModel {
    /// Generates from a prompt. `on_step(i, steps, x)` is called after each step with the current
    /// sample; returning `false` cancels (an error "cancelled").
    pub fn generate(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        mut on_step: impl FnMut(usize, usize, &Tensor) -> bool,
    ) -> Result<Generated> {
        let tokens = self.tokenize(prompt)?;
        let empty = self.tokenize("")?;
        let (ctx, pooled) = self.encode(&[&tokens, &empty])?;
        let size = self.cfg.image_size;
        let sched = FlowMatchEuler {
            shift: self.cfg.shift,
            ..Default::default()
        }
        .schedule(opts.steps)?;
        let dev = self.device().clone();
        let mut x = seeded_randn(&[1, 3, size, size], opts.seed, &dev)?;
        let perturbation = opts.perturbation()?;
        let none = CaptureSpec::default();
        for i in 0..sched.steps() {
            let t = sched.timesteps[i];
            let g = guided_velocity(
                &self.mmdit,
                &x,
                t,
                (&ctx, &pooled),
                opts.guidance,
                &perturbation,
                &none,
            )?;
            x = sched.step(i, &x, &g.velocity)?;
            if !on_step(i + 1, sched.steps(), &x) {
                return Err(Error::Input("cancelled".into()));
            }
        }
        Ok(Generated {
            rgb: tensor_to_rgb(&x.squeeze(0)?)?,
            size,
            tokens,
        })
    }
}
