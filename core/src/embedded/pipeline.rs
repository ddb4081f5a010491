//! What the embedded model does for a user: generate an image from a prompt (FlowMatchEuler +
//! classifier-free guidance, optional I2T blur or perturbed guidance), and open-vocabulary segmentation of any image
//! from its I2T maps (the paper's scheme), plus dataset evaluation.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::guidance::{guided_velocity, Perturbation};
use super::model::{rgb_to_tensor, seeded_randn, tensor_to_rgb, EmbeddedModel};
use super::tokenizer::Tokens;
use crate::capture::CaptureSpec;
use crate::error::{Error, Result};
use crate::metrics::{argmax_labels, resize_bilinear};
use crate::mmdit::ForwardOptions;
use crate::perturb::BlurSpec;
use crate::schedule::{noise_to, FlowMatchEuler};

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
        Ok(match (&self.blur, self.perturb_guidance) {
            (None, None) => Perturbation::None,
            (None, Some(_)) => {
                return Err(Error::Input(
                    "perturbed guidance needs blur layers (--blur-i2t LAYERS)".into(),
                ))
            }
            (Some(b), None) => Perturbation::Regenerate(b.clone()),
            (Some(b), Some(scale)) if scale.is_finite() => Perturbation::Guidance {
                blur: b.clone(),
                scale,
            },
            (Some(_), Some(scale)) => {
                return Err(Error::Input(format!(
                    "perturbed-guidance scale must be finite, got {scale}"
                )))
            }
        })
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

/// Segmentation settings (the paper's defaults: step index 20 of 28).
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Block whose I2T maps are read (default: the model's expert layer).
    pub layer: Option<usize>,
    pub seed: u64,
    pub steps: usize,
    pub step_index: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            layer: None,
            seed: 0,
            steps: 28,
            step_index: 20,
        }
    }
}

/// A segmentation of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Segmentation {
    pub classes: Vec<String>,
    pub layer: usize,
    pub sigma: f32,
    pub timestep: f32,
    pub width: usize,
    pub height: usize,
    /// Class index per pixel at the image's size.
    #[serde(skip)]
    pub labels: Vec<u8>,
    /// Share of pixels per class.
    pub shares: Vec<f64>,
    /// Token positions averaged for each class.
    pub class_tokens: Vec<Vec<usize>>,
}

/// Class maps `[C, g, g]` from head-mean I2T `[N, L]` at one block.
fn class_maps(i2t_mean: &Tensor, class_tokens: &[Vec<usize>]) -> Result<Vec<f32>> {
    let (n, _) = i2t_mean.dims2()?;
    let cols = i2t_mean.t()?.contiguous()?;
    let mut out = Vec::with_capacity(class_tokens.len() * n);
    for toks in class_tokens {
        let idx = Tensor::new(
            toks.iter().map(|&t| t as u32).collect::<Vec<_>>(),
            i2t_mean.device(),
        )?;
        let m = cols.index_select(&idx, 0)?.mean(0)?;
        out.extend(m.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Token positions of each class name in the prompt "c1 c2 …" (a class may be several words).
pub fn class_prompt(classes: &[String]) -> Result<(String, Vec<Vec<usize>>)> {
    if classes.is_empty() {
        return Err(Error::Input("the class list is empty".into()));
    }
    let mut words = vec![];
    let mut tokens = vec![];
    for c in classes {
        let ws: Vec<&str> = c.split_whitespace().collect();
        if ws.is_empty() {
            return Err(Error::Input("a class name is empty".into()));
        }
        // Position 0 is BOS; word k sits at k + 1.
        tokens.push((words.len() + 1..words.len() + 1 + ws.len()).collect());
        words.extend(ws);
    }
    Ok((words.join(" "), tokens))
}

impl EmbeddedModel {
    /// An RGB image (`w × h`) squashed to the model's input, as SD3's pipeline squashes to 1024².
    ///
    /// # Shapes
    /// `rgb: w·h·3` bytes → `[1, 3, S, S]` in [-1, 1]
    pub fn image_tensor(&self, rgb: &[u8], w: usize, h: usize) -> Result<Tensor> {
        let size = self.cfg.image_size;
        let img = image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec()).ok_or_else(|| {
            Error::Input(format!("image buffer does not hold {w}×{h} RGB pixels"))
        })?;
        let small = image::imageops::resize(
            &img,
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        );
        Ok(rgb_to_tensor(small.as_raw(), size, self.device())?.unsqueeze(0)?)
    }

    /// Runs the noised image with the class prompt once and returns head-mean I2T `[N, L]` of
    /// the requested blocks.
    fn i2t_for(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        prompt: &str,
        layers: &[usize],
        opts: &SegmentOptions,
    ) -> Result<(Vec<Tensor>, f32, f32)> {
        let size = self.cfg.image_size;
        let dev = self.device().clone();
        let x0 = self.image_tensor(rgb, w, h)?;
        let sched = FlowMatchEuler {
            shift: self.cfg.shift,
            ..Default::default()
        }
        .schedule(opts.steps)?;
        let sigma = sched.sigma(opts.step_index)?;
        let eps = seeded_randn(&[1, 3, size, size], opts.seed, &dev)?;
        let xt = noise_to(&x0, &eps, sigma)?;
        let tokens = self.tokenize(prompt)?;
        let (ctx, pooled) = self.encode(&[&tokens])?;
        let t = Tensor::new(&[sched.timesteps[opts.step_index]], &dev)?;
        let fwd = ForwardOptions {
            capture: CaptureSpec {
                i2t: true,
                layers: Some(layers.to_vec()),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = self.mmdit.forward(&xt, &t, &ctx, &pooled, &fwd)?;
        let maps = layers
            .iter()
            .map(|&l| {
                let i2t = out.blocks[l]
                    .attn
                    .i2t
                    .as_ref()
                    .ok_or_else(|| Error::Input("no i2t captured".into()))?;
                Ok(i2t.to_dtype(DType::F32)?.mean(1)?.squeeze(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((maps, sigma, sched.timesteps[opts.step_index]))
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        let n = self.cfg.transformer.num_layers;
        if layer >= n {
            return Err(Error::Input(format!(
                "layer {layer} does not exist (the model has blocks 0..{})",
                n - 1
            )));
        }
        Ok(())
    }

    /// Labels per pixel at `w × h` from class maps `[C, g, g]` (bilinear upsampling, argmax).
    fn labels_from_maps(&self, maps: &[f32], c: usize, w: usize, h: usize) -> Result<Vec<u8>> {
        let g = self.cfg.image_size / self.cfg.transformer.patch_size;
        let up = resize_bilinear(maps, c, g, g, h, w).map_err(|e| Error::Input(e.to_string()))?;
        argmax_labels(&up, c, h, w).map_err(|e| Error::Input(e.to_string()))
    }

    /// Open-vocabulary segmentation of an RGB image (`w × h`) into `classes`.
    pub fn segment(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        classes: &[String],
        opts: &SegmentOptions,
    ) -> Result<Segmentation> {
        let layer = opts.layer.unwrap_or(self.cfg.expert_layer);
        self.check_layer(layer)?;
        let (prompt, class_tokens) = class_prompt(classes)?;
        let (maps, sigma, timestep) = self.i2t_for(rgb, w, h, &prompt, &[layer], opts)?;
        let cm = class_maps(&maps[0], &class_tokens)?;
        let labels = self.labels_from_maps(&cm, classes.len(), w, h)?;
        let mut shares = vec![0f64; classes.len()];
        labels.iter().for_each(|&l| shares[l as usize] += 1.0);
        shares.iter_mut().for_each(|s| *s /= labels.len() as f64);
        Ok(Segmentation {
            classes: classes.to_vec(),
            layer,
            sigma,
            timestep,
            width: w,
            height: h,
            labels,
            shares,
            class_tokens,
        })
    }

    /// Segments with the oracle class set at several blocks in one forward; returns labels per
    /// block at `w × h`, with values = indices into `classes`.
    pub fn segment_layers(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        classes: &[String],
        layers: &[usize],
        opts: &SegmentOptions,
    ) -> Result<Vec<Vec<u8>>> {
        for &l in layers {
            self.check_layer(l)?;
        }
        let (prompt, class_tokens) = class_prompt(classes)?;
        let (maps, _, _) = self.i2t_for(rgb, w, h, &prompt, layers, opts)?;
        maps.iter()
            .map(|m| {
                let cm = class_maps(m, &class_tokens)?;
                self.labels_from_maps(&cm, classes.len(), w, h)
            })
            .collect()
    }
}

/// Unsupervised proposals of one image (paper §3.4): the empty prompt's BOS/EOS/padding maps,
/// merged by symmetric KL under a threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Proposals {
    pub layer: usize,
    pub threshold: f32,
    pub sigma: f32,
    pub width: usize,
    pub height: usize,
    /// Token positions merged into each proposal.
    pub clusters: Vec<Vec<usize>>,
    /// Proposal per pixel at the image's size.
    #[serde(skip)]
    pub labels: Vec<u8>,
}

impl EmbeddedModel {
    /// Unsupervised segmentation of an RGB image (`w × h`) at a block.
    pub fn segment_unsupervised(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        threshold: f32,
        opts: &SegmentOptions,
    ) -> Result<Proposals> {
        let layer = opts.layer.unwrap_or(self.cfg.expert_layer);
        self.check_layer(layer)?;
        let (maps, sigma, _) = self.i2t_for(rgb, w, h, "", &[layer], opts)?;
        // [N, L] → [L, N]: one map per text token (all special for the empty prompt).
        let t = maps[0].t()?.contiguous()?;
        let (l, n) = t.dims2()?;
        let flat: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let seg = crate::analysis::segment_maps(&flat, l, n, threshold)
            .map_err(|e| Error::Input(e.to_string()))?;
        let k = seg.clusters.len();
        let dist: Vec<f32> = seg.distributions.iter().flatten().copied().collect();
        let labels = self.labels_from_maps(&dist, k, w, h)?;
        Ok(Proposals {
            layer,
            threshold,
            sigma,
            width: w,
            height: h,
            clusters: seg.clusters,
            labels,
        })
    }
}
