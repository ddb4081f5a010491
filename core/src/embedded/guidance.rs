//! One guided velocity prediction of a sampling step: classifier-free guidance, optionally with
//! the I2T blur in every forward (regeneration, paper Fig. 5) or as perturbed guidance.
//!
//! With `v(x; A)` the model's prediction (flow matching predicts a velocity; the formulas read
//! the same with ε), `c` the prompt and `∅` the empty prompt, `g` the CFG scale and `s` the
//! perturbed-guidance scale:
//!
//! - plain CFG: `v_cfg = v(x, ∅; A) + g·(v(x, c; A) − v(x, ∅; A))`;
//! - regeneration with blur: the same formula with `Ã` (blurred I2T) in both forwards;
//! - perturbed guidance: `ṽ = v_cfg + s·(v(x, c; A) − v(x, c; Ã))`, i.e. the paper's
//!   `ε̃ = ε(x; A) + s·(ε(x; A) − ε(x; Ã))` with its first term replaced by the CFG prediction and
//!   the perturbation term taken on the conditional branch. `s = 0` is plain CFG.

use candle_core::Tensor;

use crate::capture::CaptureSpec;
use crate::error::Result;
use crate::mmdit::{ForwardOptions, Mmdit, MmditOutput};

pub use crate::perturb::Perturbation;

/// A guided prediction and what the unperturbed `[cond, uncond]` forward captured.
#[derive(Debug, Clone)]
pub struct Guided {
    /// `[1, C, H, W]` guided velocity.
    pub velocity: Tensor,
    /// The `[cond, uncond]` forward (batch item 0 is the prompt's).
    pub output: MmditOutput,
}

/// Guided velocity at one step.
///
/// # Shapes
/// `x: [1, C, H, W]`, `t`: model timestep, `ctx: [2, L, Dj]` (prompt, empty prompt),
/// `pooled: [2, Dp]` → `velocity: [1, C, H, W]`
pub fn guided_velocity(
    mmdit: &Mmdit,
    x: &Tensor,
    t: f32,
    (ctx, pooled): (&Tensor, &Tensor),
    cfg_scale: f64,
    perturbation: &Perturbation,
    capture: &CaptureSpec,
) -> Result<Guided> {
    let dev = mmdit.device();
    let xin = Tensor::cat(&[x, x], 0)?;
    let ts = Tensor::new(&[t, t], dev)?;
    let fwd = ForwardOptions {
        capture: capture.clone(),
        blur: perturbation.every_forward(),
        ..Default::default()
    };
    let output = mmdit.forward(&xin, &ts, ctx, pooled, &fwd)?;
    let (vc, vu) = (
        output.sample.narrow(0, 0, 1)?,
        output.sample.narrow(0, 1, 1)?,
    );
    let mut v = (&vu + ((&vc - &vu)? * cfg_scale)?)?;
    if let Perturbation::Guidance { blur, scale } = perturbation {
        let fwd = ForwardOptions {
            blur: Some(blur.clone()),
            ..Default::default()
        };
        let vp = mmdit
            .forward(
                x,
                &Tensor::new(&[t], dev)?,
                &ctx.narrow(0, 0, 1)?,
                &pooled.narrow(0, 0, 1)?,
                &fwd,
            )?
            .sample;
        v = (&v + ((&vc - &vp)? * *scale)?)?;
    }
    Ok(Guided {
        velocity: v,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::pipeline::GenerateOptions;
    use crate::embedded::test_model::tiny_model;
    use crate::perturb::BlurSpec;

    fn blur(layer: usize) -> BlurSpec {
        BlurSpec {
            layers: vec![layer],
            ..Default::default()
        }
    }

    #[test]
    fn zero_scale_is_plain_cfg() {
        let m = tiny_model();
        let plain = GenerateOptions {
            steps: 3,
            seed: 5,
            ..Default::default()
        };
        let pg = GenerateOptions {
            blur: Some(blur(1)),
            perturb_guidance: Some(0.0),
            ..plain.clone()
        };
        let a = m.generate("a red circle", &plain, |_, _, _| true).unwrap();
        let b = m.generate("a red circle", &pg, |_, _, _| true).unwrap();
        assert!(a.rgb == b.rgb, "s = 0 must reproduce plain CFG exactly");
    }

    #[test]
    fn perturbed_guidance_is_the_stated_combination() {
        let m = tiny_model();
        let toks = [m.tokenize("a blue star").unwrap(), m.tokenize("").unwrap()];
        let (ctx, pooled) = m.encode(&[&toks[0], &toks[1]]).unwrap();
        let x = crate::embedded::model::seeded_randn(&[1, 3, 16, 16], 3, m.device()).unwrap();
        let t = 700.0f32;
        let (g, s) = (4.0, 1.5);
        let p = Perturbation::Guidance {
            blur: blur(0),
            scale: s,
        };
        let none = CaptureSpec::default();
        let got = guided_velocity(&m.mmdit, &x, t, (&ctx, &pooled), g, &p, &none)
            .unwrap()
            .velocity;
        // By hand: separate forwards.
        let fwd = |c: usize, b: Option<BlurSpec>| {
            let o = ForwardOptions {
                blur: b,
                ..Default::default()
            };
            m.mmdit
                .forward(
                    &x,
                    &Tensor::new(&[t], m.device()).unwrap(),
                    &ctx.narrow(0, c, 1).unwrap(),
                    &pooled.narrow(0, c, 1).unwrap(),
                    &o,
                )
                .unwrap()
                .sample
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (vc, vu, vp) = (fwd(0, None), fwd(1, None), fwd(0, Some(blur(0))));
        let diff = vc
            .iter()
            .zip(&vp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff > 1e-6, "the blur must change the prediction ({diff})");
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..got.len() {
            let want = vu[i] + g as f32 * (vc[i] - vu[i]) + s as f32 * (vc[i] - vp[i]);
            assert!((got[i] - want).abs() < 1e-4, "{i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn perturbed_guidance_needs_blur() {
        let o = GenerateOptions {
            perturb_guidance: Some(1.0),
            ..Default::default()
        };
        assert!(o
            .perturbation()
            .unwrap_err()
            .to_string()
            .contains("--blur-i2t"));
        let o = GenerateOptions {
            blur: Some(blur(0)),
            perturb_guidance: Some(f64::NAN),
            ..Default::default()
        };
        assert!(o.perturbation().is_err());
    }
}
