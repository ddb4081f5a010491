//! The perturbation sweep (paper Fig. 5, measured): the unperturbed generation and one generation
//! per block with that block's I2T blurred, each scored by how well `segment` still finds the
//! objects the prompt names, so the block whose perturbation hurts most stands out by number.

use serde::Serialize;

use super::model::EmbeddedModel;
use super::pipeline::GenerateOptions;
use crate::error::{Error, Result};
use crate::figure::{ImageGrid, Tile};
use crate::perturb::BlurSpec;
use crate::segment::SegmentOptions;
use crate::shapes::{BACKGROUND_CLASS, SHAPES};

/// Sweep settings.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Seed, steps, CFG scale and optional perturbed-guidance scale of every generation
    /// (`blur` is set per block by the sweep).
    pub generate: GenerateOptions,
    /// Blur σ, kernel and renormalisation (its `layers` are ignored).
    pub blur: BlurSpec,
    /// Blocks to perturb one at a time (`None` = all).
    pub layers: Option<Vec<usize>>,
    /// Block whose I2T maps `segment` reads for the score (default: the expert layer).
    pub seg_layer: Option<usize>,
}

/// One generation of the sweep and its scores.
#[derive(Debug, Clone, Serialize)]
pub struct SweepEntry {
    /// The perturbed block (`None` = unperturbed).
    pub layer: Option<usize>,
    /// Mean over the prompt's objects of the IoU between this image's `segment` mask of the
    /// object and the unperturbed image's (1 = objects found where they were; an object absent
    /// from both counts 1).
    pub alignment: f64,
    /// Share of pixels `segment` assigns to any object the prompt names.
    pub object_share: f64,
    /// Share of pixels per class (`classes` order).
    pub class_shares: Vec<f64>,
    /// Mean absolute RGB difference to the unperturbed image, in 0..=1.
    pub pixel_change: f64,
    #[serde(skip)]
    pub rgb: Vec<u8>,
}

/// The whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub prompt: String,
    /// Segmentation classes: the prompt's shape words, then `background`.
    pub classes: Vec<String>,
    pub seg_layer: usize,
    /// `regenerate` (blur in every forward) or `perturbed_guidance`.
    pub mode: String,
    pub perturb_guidance: Option<f64>,
    pub blur: BlurSpec,
    pub size: usize,
    pub unperturbed: SweepEntry,
    pub perturbed: Vec<SweepEntry>,
    /// The block with the lowest alignment (ties: the largest pixel change, then the first).
    pub strongest_layer: usize,
    /// Set when the scores cannot single out a block (e.g. no named object found at all).
    pub warning: Option<String>,
}

/// The shape words the prompt names, in order, without repeats.
pub fn prompt_objects(prompt: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for w in prompt
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.')
    {
        if SHAPES.contains(&w) && !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

/// IoU of label `k` between two label maps (1 when both lack it).
fn iou(a: &[u8], b: &[u8], k: u8) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (p, q) = (x == k, y == k);
        inter += (p && q) as usize;
        union += (p || q) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

impl EmbeddedModel {
    /// Runs the sweep. `on_image(done, total)` reports progress; returning `false` cancels.
    pub fn perturb_sweep(
        &self,
        prompt: &str,
        opts: &SweepOptions,
        mut on_image: impl FnMut(usize, usize) -> bool,
    ) -> Result<Sweep> {
        let n_layers = self.cfg.transformer.num_layers;
        let layers = opts
            .layers
            .clone()
            .unwrap_or_else(|| (0..n_layers).collect());
        if layers.is_empty() {
            return Err(Error::Input("no block to perturb".into()));
        }
        BlurSpec {
            layers: layers.clone(),
            ..opts.blur.clone()
        }
        .validate(n_layers)?;
        let objects = prompt_objects(prompt);
        if objects.is_empty() {
            return Err(Error::Input(format!(
                "the prompt names no shape ({}); the sweep scores how well named objects are found",
                SHAPES.join(", ")
            )));
        }
        let mut classes = objects.clone();
        classes.push(BACKGROUND_CLASS.to_string());
        let seg_layer = opts.seg_layer.unwrap_or(self.cfg.expert_layer);
        let seg = SegmentOptions {
            layer: Some(seg_layer),
            seed: opts.generate.seed,
            ..Default::default()
        };
        let total = layers.len() + 1;
        let mut run =
            |blur: Option<BlurSpec>, done: usize| -> Result<(Vec<u8>, Vec<u8>, Vec<f64>)> {
                let g = self.generate(
                    prompt,
                    &GenerateOptions {
                        blur,
                        ..opts.generate.clone()
                    },
                    |_, _, _| true,
                )?;
                let s = self.segment(&g.rgb, g.size, g.size, &classes, &seg)?;
                if !on_image(done, total) {
                    return Err(Error::Input("cancelled".into()));
                }
                Ok((g.rgb, s.labels, s.shares))
            };
        let objects_share = |shares: &[f64]| shares[..shares.len() - 1].iter().sum::<f64>();
        let (ref_rgb, ref_labels, ref_shares) = run(None, 1)?;
        let unperturbed = SweepEntry {
            layer: None,
            alignment: 1.0,
            object_share: objects_share(&ref_shares),
            class_shares: ref_shares,
            pixel_change: 0.0,
            rgb: ref_rgb.clone(),
        };
        let mut perturbed = vec![];
        for (k, &l) in layers.iter().enumerate() {
            let blur = BlurSpec {
                layers: vec![l],
                ..opts.blur.clone()
            };
            let (rgb, labels, shares) = run(Some(blur), k + 2)?;
            let alignment = (0..objects.len())
                .map(|c| iou(&labels, &ref_labels, c as u8))
                .sum::<f64>()
                / objects.len() as f64;
            let pixel_change = rgb
                .iter()
                .zip(&ref_rgb)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / (255.0 * rgb.len() as f64);
            perturbed.push(SweepEntry {
                layer: Some(l),
                alignment,
                object_share: objects_share(&shares),
                class_shares: shares,
                pixel_change,
                rgb,
            });
        }
        // Lowest alignment; among equals, the largest pixel change.
        let strongest = perturbed
            .iter()
            .min_by(|a, b| {
                a.alignment
                    .total_cmp(&b.alignment)
                    .then(b.pixel_change.total_cmp(&a.pixel_change))
            })
            .and_then(|e| e.layer)
            .unwrap_or(layers[0]);
        let warning = if unperturbed.object_share == 0.0 {
            Some(format!(
                "segment (block {seg_layer}) finds none of the named objects in the unperturbed image, \
                 so alignment cannot fall; the ranking falls back to pixel change"
            ))
        } else {
            None
        };
        Ok(Sweep {
            warning,
            prompt: prompt.to_string(),
            classes,
            seg_layer,
            mode: if opts.generate.perturb_guidance.is_some() {
                "perturbed_guidance".into()
            } else {
                "regenerate".into()
            },
            perturb_guidance: opts.generate.perturb_guidance,
            blur: BlurSpec {
                layers,
                ..opts.blur.clone()
            },
            size: self.cfg.image_size,
            unperturbed,
            perturbed,
            strongest_layer: strongest,
        })
    }
}

impl Sweep {
    /// The figure: unperturbed image, then one per perturbed block, each captioned with its
    /// scores; the strongest effect framed in red.
    pub fn figure(&self) -> Result<ImageGrid> {
        let tile = |e: &SweepEntry| -> Result<Tile> {
            let name = e
                .layer
                .map_or("unperturbed".into(), |l| format!("block {l}"));
            let mut t = Tile::new(e.rgb.clone(), self.size, self.size)?.with_caption(vec![
                name,
                format!("align {:.2}", e.alignment),
                format!("objects {:.0}%", 100.0 * e.object_share),
            ]);
            t.highlight = e.layer == Some(self.strongest_layer);
            Ok(t)
        };
        let tiles = std::iter::once(&self.unperturbed)
            .chain(&self.perturbed)
            .map(|e| tile(e).map(Some))
            .collect::<Result<Vec<_>>>()?;
        let cols = tiles.len().min(8);
        let how = match self.perturb_guidance {
            Some(s) => format!("perturbed guidance s = {s}"),
            None => "I2T blur in every forward".into(),
        };
        let mut g = ImageGrid::new(
            format!(
                "\"{}\": {how} (σ {}, kernel {}), one block at a time",
                self.prompt, self.blur.sigma, self.blur.kernel
            ),
            tiles,
            cols,
        );
        g.tile_px = 112;
        g.note = Some(format!(
            "align = mean IoU over the prompt's objects of segment masks (block {}) against the unperturbed image; strongest effect: block {}",
            self.seg_layer, self.strongest_layer
        ));
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_iou_by_hand() {
        assert_eq!(
            prompt_objects("A red circle, a blue square and a circle"),
            ["circle", "square"]
        );
        assert!(prompt_objects("a striped background").is_empty());
        let a = [0, 0, 1, 1];
        let b = [0, 1, 1, 2];
        assert_eq!(iou(&a, &b, 1), 1.0 / 3.0);
        assert_eq!(iou(&a, &b, 0), 0.5);
        assert_eq!(iou(&a, &b, 5), 1.0);
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::embedded::test_model::tiny_model;

    #[test]
    fn sweep_scores_every_block() {
        let m = tiny_model();
        let o = SweepOptions {
            generate: GenerateOptions {
                steps: 2,
                seed: 1,
                ..Default::default()
            },
            blur: BlurSpec::default(),
            layers: None,
            seg_layer: Some(1),
        };
        let s = m
            .perturb_sweep("a red circle and a blue square", &o, |_, _| true)
            .unwrap();
        assert_eq!(s.classes, ["circle", "square", "background"]);
        assert_eq!(s.perturbed.len(), 2);
        assert_eq!(s.unperturbed.alignment, 1.0);
        for e in std::iter::once(&s.unperturbed).chain(&s.perturbed) {
            assert!((0.0..=1.0).contains(&e.alignment));
            let total: f64 = e.class_shares.iter().sum();
            assert!((total - 1.0).abs() < 1e-9);
            assert!((e.object_share - e.class_shares[0] - e.class_shares[1]).abs() < 1e-12);
        }
        let best = s
            .perturbed
            .iter()
            .map(|e| e.alignment)
            .fold(f64::INFINITY, f64::min);
        let strongest = &s.perturbed[s.strongest_layer];
        assert_eq!(strongest.alignment, best);
        let fig = s.figure().unwrap();
        assert_eq!(fig.tiles.len(), 3);
        let framed: Vec<bool> = fig
            .tiles
            .iter()
            .map(|t| t.as_ref().unwrap().highlight)
            .collect();
        assert_eq!(framed.iter().filter(|&&f| f).count(), 1);
        assert!(framed[1 + s.strongest_layer]);
        let e = m
            .perturb_sweep("a striped background", &o, |_, _| true)
            .unwrap_err();
        assert!(e.to_string().contains("names no shape"));
    }
}
