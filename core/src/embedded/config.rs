//! Configuration of the embedded model (transformer, text encoder, image size, expert layer) and
//! of its training run, read from and written to JSON.

use serde::{Deserialize, Serialize};

use super::text_encoder::TextEncoderConfig;
use crate::error::{Error, Result};
use crate::mmdit::MmditConfig;
use crate::shapes::vocabulary;

/// The model: what a saved embedded model folder's `model.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedConfig {
    /// Square RGB input side in pixels (pixel space, no codec).
    pub image_size: usize,
    pub transformer: MmditConfig,
    pub text: TextEncoderConfig,
    /// Block whose I2T maps segment best (the default `--layer`).
    pub expert_layer: usize,
    /// Sampling schedule shift.
    pub shift: f64,
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
    /// Extra loss weight on object pixels (objects are a small share of pixels).
    pub object_weight: f64,
    /// Block whose head-mean I2T maps are aligned with the masks (MAGNET), if any.
    pub mask_align_layer: Option<usize>,
    pub mask_align_weight: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Share of captions whose word order is shuffled / words dropped (robustness).
    pub shuffle_prob: f64,
    pub word_dropout: f64,
    /// Samples noised above this σ get no alignment loss (pure noise has nothing to segment).
    #[serde(default = "one")]
    pub mask_align_max_sigma: f64,
    /// First step with the alignment loss: before it the run is flow matching only, so a run
    /// from scratch can learn to draw before it learns to ground its words.
    #[serde(default)]
    pub mask_align_start: usize,
    /// Start from this model's weights (fine-tuning, as the paper fine-tunes SD3 with mask
    /// alignment): a model folder, or `embedded:plain` / `embedded:aligned`. `None` = from
    /// scratch.
    #[serde(default)]
    pub init: Option<String>,
    /// Caption style weights: sentence, class list, colour+shape phrase, empty.
    #[serde(default = "caption_weights")]
    pub caption_weights: [f64; 4],
    /// Share of training scenes drawn with at least two objects, so that a class list's shape
    /// words must be told apart by shape (a one-object scene teaches object versus background
    /// only). 0 keeps the world's own spread of 1–3 objects.
    #[serde(default)]
    pub multi_object_share: f64,
    /// Share of class-list captions that also name shapes the scene lacks (1 to all of them):
    /// under mask alignment their words must stay off every pixel, so each object pixel
    /// picks its shape among all eight, not only among those present.
    #[serde(default)]
    pub absent_class_share: f64,
    /// Draw training scenes with area-matched sizes ([`SceneConfig::area_matched`]): every
    /// shape covers the same area on average, so size is no cue to a shape's name (with the
    /// world's own sizes a star covers a third of a square's area, and a model can name
    /// objects by their size instead of their outline).
    ///
    /// [`SceneConfig::area_matched`]: crate::shapes::SceneConfig::area_matched
    #[serde(default)]
    pub area_matched: bool,
    /// Weight of the flow-matching loss (1 = the recipe; 0 leaves mask alignment alone, a
    /// diagnostic of what the maps can learn by themselves).
    #[serde(default = "one")]
    pub mse_weight: f64,
    /// Largest training noise level: σ is the logit-normal draw scaled by it (1 = SD3's
    /// sampling; below 1 the run sees only images that are still visible).
    #[serde(default = "one")]
    pub max_sigma: f64,
}

fn caption_weights() -> [f64; 4] {
    [0.40, 0.25, 0.25, 0.10]
}

fn one() -> f64 {
    1.0
}

/// A `--config toy.json` file: model and training together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyConfig {
    pub model: EmbeddedConfig,
    pub train: TrainConfig,
}

impl ToyConfig {
    /// A shipped recipe with its model: aligned ([`EmbeddedConfig::default_aligned`]) or plain
    /// ([`EmbeddedConfig::default_toy`]).
    pub fn recipe(aligned: bool) -> Self {
        Self {
            model: if aligned {
                EmbeddedConfig::default_aligned()
            } else {
                EmbeddedConfig::default_toy()
            },
            train: TrainConfig::default_toy(aligned),
        }
    }
}

impl EmbeddedConfig {
    /// The shipped plain model's size: 32×32 RGB, patch 2 (16×16 tokens), 6 blocks, 4 heads × 32.
    pub fn default_toy() -> Self {
        let dim = 128;
        let vocab = vocabulary().len() + 2;
        Self {
            image_size: 32,
            transformer: MmditConfig {
                sample_size: 32,
                patch_size: 2,
                in_channels: 3,
                num_layers: 6,
                attention_head_dim: 32,
                num_attention_heads: 4,
                joint_attention_dim: dim,
                caption_projection_dim: dim,
                pooled_projection_dim: 8,
                out_channels: Some(3),
                pos_embed_max_size: 16,
                dual_attention_layers: vec![],
                qk_norm: None,
                conv_stem: vec![],
                ff_conv: false,
            },
            text: TextEncoderConfig {
                vocab_size: vocab,
                max_len: 20,
                dim,
                layers: 2,
                heads: 4,
            },
            expert_layer: 3,
            // SD3's 3.0 is for 4096 latent tokens; its resolution rule (shift ∝ √tokens) gives
            // about 1 for this 256-token grid.
            shift: 1.0,
        }
    }

    /// The shipped aligned model's size: 64×64 RGB, patch 4 (the same 16×16 tokens as
    /// [`Self::default_toy`], each seeing 4×4 pixels, so shapes keep their detail at the input).
    /// No convolutional stem (`conv_stem`): a 16-32-32 stem trained on this recipe scored no
    /// better (held-out mIoU 0.443 at step 4500; without it 0.454 at 3500, 0.476 at 6000) and
    /// adds 0.45 s to `generate`.
    pub fn default_aligned() -> Self {
        let mut c = Self::default_toy();
        c.image_size = 64;
        c.transformer.sample_size = 64;
        c.transformer.patch_size = 4;
        c
    }

    /// A very small size for tests.
    pub fn tiny() -> Self {
        let mut c = Self::default_toy();
        c.image_size = 16;
        c.transformer.num_layers = 2;
        c.transformer.num_attention_heads = 2;
        c.transformer.attention_head_dim = 16;
        c.transformer.caption_projection_dim = 32;
        c.transformer.joint_attention_dim = 32;
        c.transformer.pos_embed_max_size = 8;
        c.text.dim = 32;
        c.text.layers = 1;
        c.text.heads = 2;
        c.expert_layer = 1;
        c
    }

    /// Checks sizes that must agree.
    pub fn validate(&self) -> Result<()> {
        self.transformer.validate()?;
        let t = &self.transformer;
        if !self.image_size.is_multiple_of(t.patch_size)
            || self.image_size / t.patch_size > t.pos_embed_max_size
        {
            return Err(Error::Config(format!(
                "image_size {} does not fit patch {} and position table {}",
                self.image_size, t.patch_size, t.pos_embed_max_size
            )));
        }
        if t.joint_attention_dim != self.text.dim {
            return Err(Error::Config(
                "joint_attention_dim must equal the text encoder dim".into(),
            ));
        }
        if self.text.vocab_size != vocabulary().len() + 2 {
            return Err(Error::Config(format!(
                "text vocab_size must be {} (the shapes vocabulary plus BOS/EOS)",
                vocabulary().len() + 2
            )));
        }
        if self.expert_layer >= t.num_layers {
            return Err(Error::Config(
                "expert_layer is not a block of the model".into(),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The shipped recipes, both from scratch. Plain: flow matching only, 8000 steps. Aligned:
    /// flow matching plus mask alignment at block 3 from step 200 on, 8000 steps, three in four
    /// scenes with two or more objects. Paired with their models by [`ToyConfig::recipe`].
    pub fn default_toy(aligned: bool) -> Self {
        let plain = Self {
            steps: 8000,
            batch: 16,
            lr: 1e-3,
            warmup: 500,
            weight_decay: 1e-4,
            seed: 20261122,
            object_weight: 3.0,
            mask_align_layer: None,
            mask_align_weight: 0.5,
            checkpoint_every: 250,
            shuffle_prob: 0.3,
            word_dropout: 0.05,
            mask_align_max_sigma: 1.0,
            mask_align_start: 0,
            init: None,
            caption_weights: caption_weights(),
            multi_object_share: 0.0,
            absent_class_share: 0.0,
            area_matched: false,
            mse_weight: 1.0,
            max_sigma: 1.0,
        };
        if !aligned {
            return plain;
        }
        // Class lists are the captions that teach shape grounding (a sentence's shape word
        // can be found by its colour alone), so the aligned run sees them twice as often, and
        // mostly on scenes of two or three objects, whose shapes must be told apart.
        // Fine-tuning a plain model with alignment at lr 1e-3 wiped out generation; trained
        // together from scratch the two losses share the model, at a lower peak lr.
        Self {
            steps: 8000,
            lr: 6e-4,
            seed: 20261123,
            mask_align_layer: Some(3),
            mask_align_weight: 1.0,
            mask_align_max_sigma: 0.7,
            mask_align_start: 200,
            caption_weights: [0.25, 0.50, 0.15, 0.10],
            multi_object_share: 0.75,
            absent_class_share: 0.5,
            area_matched: false,
            ..plain
        }
    }

    /// A clear error for loss weights or noise caps that make no sense.
    pub fn validate(&self) -> Result<()> {
        if !(self.mse_weight.is_finite() && self.mse_weight >= 0.0) {
            return Err(Error::Config(format!(
                "mse_weight must be 0 or more, got {}",
                self.mse_weight
            )));
        }
        if !(self.max_sigma > 0.0 && self.max_sigma <= 1.0) {
            return Err(Error::Config(format!(
                "max_sigma must be in (0, 1], got {}",
                self.max_sigma
            )));
        }
        Ok(())
    }

    /// Learning rate at `step`: linear warm-up, then cosine to zero.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        let p = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

impl ToyConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: ToyConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        c.model.validate()?;
        c.train.validate()?;
        Ok(c)
    }
}
