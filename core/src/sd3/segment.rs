//! SD3 pipelines as an [`I2tSegmenter`], as Seg4Diff's evaluation code reads them: the image
//! squashed to the model's resolution, VAE posterior mean, noised with a seeded ε at the step's
//! σ, one forward without CFG; class maps from the CLIP positions only (BOS skipped, subword
//! pieces of a name averaged).

use candle_core::Tensor;
use image::imageops::FilterType;

use super::picture::rgb_to_tensor;
use super::pipeline::Sd3Pipeline;
use crate::capture::CaptureSpec;
use crate::embedded::model::seeded_randn;
use crate::error::{Error, Result};
use crate::mmdit::ForwardOptions;
use crate::schedule::noise_to;
use crate::segment::{check_classes, head_mean_i2t, I2tMaps, I2tSegmenter, SegmentOptions};

/// The paper's semantic grounding expert for SD3 and SD3.5 (0-based block index).
pub const SD3_EXPERT_LAYER: usize = 9;

impl Sd3Pipeline {
    fn text_or_err(&self) -> Result<&super::text::TextEncoders> {
        self.text.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} was opened without text encoders; segmentation needs them",
                self.parts.path.display()
            ))
        })
    }

    /// An RGB image (`w × h`) squashed to the model's square resolution (Lanczos), in [-1, 1].
    ///
    /// # Shapes
    /// `rgb: w·h·3` bytes → `[1, 3, S, S]` f32
    pub fn squashed_tensor(&self, rgb: &[u8], w: usize, h: usize) -> Result<Tensor> {
        let img = image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec()).ok_or_else(|| {
            Error::Input(format!("image buffer does not hold {w}×{h} RGB pixels"))
        })?;
        if w == 0 || h == 0 {
            return Err(Error::Input(format!("the image is empty ({w}×{h} pixels)")));
        }
        let s = self.resolution() as u32;
        let pic = if (w as u32, h as u32) == (s, s) {
            img
        } else {
            image::imageops::resize(&img, s, s, FilterType::Lanczos3)
        };
        rgb_to_tensor(&pic, self.transformer.device())
    }
}

impl I2tSegmenter for Sd3Pipeline {
    fn num_layers(&self) -> usize {
        self.transformer.config().num_layers
    }

    fn default_layer(&self) -> usize {
        let n = self.num_layers();
        if n > SD3_EXPERT_LAYER {
            SD3_EXPERT_LAYER
        } else {
            n / 2
        }
    }

    fn grid(&self) -> (usize, usize) {
        let g = self.latent_size / self.transformer.config().patch_size;
        (g, g)
    }

    fn class_prompt(&self, classes: &[String]) -> Result<(String, Vec<Vec<usize>>)> {
        check_classes(classes)?;
        let text = self.text_or_err()?;
        let names: Vec<String> = classes
            .iter()
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let prompt = names.join(" ");
        let mut positions = vec![];
        let mut next = 1; // position 0 is BOS
        for name in &names {
            let n = text.clip_pieces(name)?.len();
            if n == 0 {
                return Err(Error::Input(format!("class `{name}` gives no CLIP token")));
            }
            positions.push((next..next + n).collect::<Vec<_>>());
            next += n;
        }
        // CLIP's byte-level BPE works word by word, so the pieces of "a b" are those of "a"
        // followed by those of "b"; check it rather than assume it.
        let whole = text.clip_pieces(&prompt)?.len();
        if whole != next - 1 {
            return Err(Error::Input(format!(
                "the class prompt `{prompt}` tokenizes to {whole} CLIP pieces, not the {} of its names one by one",
                next - 1
            )));
        }
        let room = text.clip_length() - 2;
        if whole > room {
            return Err(Error::Input(format!(
                "the class prompt `{prompt}` takes {whole} CLIP tokens, more than the {room} that fit between BOS and EOS; segment with fewer or shorter class names"
            )));
        }
        Ok((prompt, positions))
    }

    fn empty_prompt_positions(&self) -> Result<Vec<usize>> {
        Ok((0..self.text_or_err()?.clip_length()).collect())
    }

    fn check_class(&self, name: &str) -> Result<()> {
        let n = self.text_or_err()?.clip_pieces(name)?.len();
        if n == 0 {
            return Err(Error::Input(format!("class `{name}` gives no CLIP token")));
        }
        Ok(())
    }

    fn i2t_maps(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        prompt: &str,
        layers: &[usize],
        opts: &SegmentOptions,
    ) -> Result<I2tMaps> {
        let cond = self.encode_prompt(prompt)?;
        let sched = self.scheduler.schedule(opts.steps)?;
        let sigma = sched.sigma(opts.step_index)?;
        let timestep = sched.timesteps[opts.step_index];
        let pixels = self.squashed_tensor(rgb, w, h)?;
        let dev = self.transformer.device().clone();
        let x0 = self.vae.encode(&pixels)?.to_device(&dev)?;
        let eps = seeded_randn(x0.dims(), opts.seed, &dev)?;
        let xt = noise_to(&x0, &eps, sigma)?;
        let fwd = ForwardOptions {
            capture: CaptureSpec {
                i2t: true,
                layers: Some(layers.to_vec()),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = self.transformer.forward(
            &xt,
            &Tensor::new(&[timestep], &dev)?,
            &cond.prompt_embeds.to_device(&dev)?,
            &cond.pooled.to_device(&dev)?,
            &fwd,
        )?;
        Ok(I2tMaps {
            maps: head_mean_i2t(&out.blocks, layers)?,
            sigma,
            timestep,
        })
    }
}
