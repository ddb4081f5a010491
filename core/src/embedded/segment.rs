//! The embedded model as an [`I2tSegmenter`]: word-level class prompts, the image squashed to
//! the model's pixel input and noised in pixel space.

use candle_core::Tensor;

use super::model::{rgb_to_tensor, seeded_randn, EmbeddedModel};
use crate::capture::CaptureSpec;
use crate::error::{Error, Result};
use crate::mmdit::ForwardOptions;
use crate::schedule::{noise_to, FlowMatchEuler};
use crate::segment::{
    self, head_mean_i2t, word_class_prompt, I2tMaps, I2tSegmenter, Proposals, SegmentOptions,
    Segmentation,
};

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

    /// Open-vocabulary segmentation of an RGB image (`w × h`) into `classes`.
    pub fn segment(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        classes: &[String],
        opts: &SegmentOptions,
    ) -> Result<Segmentation> {
        segment::segment(self, rgb, w, h, classes, opts)
    }

    /// Segments with the oracle class set at several blocks in one forward.
    pub fn segment_layers(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        classes: &[String],
        layers: &[usize],
        opts: &SegmentOptions,
    ) -> Result<Vec<Vec<u8>>> {
        segment::segment_layers(self, rgb, w, h, classes, layers, opts)
    }

    /// Unsupervised segmentation of an RGB image (`w × h`) at a block.
    pub fn segment_unsupervised(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        threshold: f32,
        opts: &SegmentOptions,
    ) -> Result<Proposals> {
        segment::segment_unsupervised(self, rgb, w, h, threshold, opts)
    }
}

impl I2tSegmenter for EmbeddedModel {
    fn num_layers(&self) -> usize {
        self.cfg.transformer.num_layers
    }

    fn default_layer(&self) -> usize {
        self.cfg.expert_layer
    }

    fn grid(&self) -> (usize, usize) {
        let g = self.cfg.image_size / self.cfg.transformer.patch_size;
        (g, g)
    }

    fn class_prompt(&self, classes: &[String]) -> Result<(String, Vec<Vec<usize>>)> {
        word_class_prompt(classes)
    }

    fn empty_prompt_positions(&self) -> Result<Vec<usize>> {
        Ok((0..self.tokenizer.max_len()).collect())
    }

    fn check_class(&self, name: &str) -> Result<()> {
        for w in name.split_whitespace() {
            self.tokenizer.id(w)?;
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
        let timestep = sched.timesteps[opts.step_index];
        let t = Tensor::new(&[timestep], &dev)?;
        let fwd = ForwardOptions {
            capture: CaptureSpec {
                i2t: true,
                layers: Some(layers.to_vec()),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = self.mmdit.forward(&xt, &t, &ctx, &pooled, &fwd)?;
        let maps = head_mean_i2t(&out.blocks, layers)?;
        Ok(I2tMaps {
            maps,
            sigma,
            timestep,
        })
    }
}
