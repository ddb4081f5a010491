//! Segmentation from I2T maps (the paper's scheme) for any model that can give them: the
//! embedded model and SD3 pipelines implement [`I2tSegmenter`]; open-vocabulary masks,
//! unsupervised proposals and dataset evaluation are written once over it.

pub mod eval;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::metrics::{argmax_labels, resize_bilinear};

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

/// Head-mean I2T maps of one noised image with one prompt.
#[derive(Debug, Clone)]
pub struct I2tMaps {
    /// `[N, L]` per requested block (N image tokens, L text positions).
    pub maps: Vec<Tensor>,
    pub sigma: f32,
    pub timestep: f32,
}

/// A model whose joint attention can segment an image.
pub trait I2tSegmenter {
    /// Number of joint blocks.
    fn num_layers(&self) -> usize;
    /// The block read when none is named (the expert layer).
    fn default_layer(&self) -> usize;
    /// Image-token grid `(rows, cols)` at the model's input.
    fn grid(&self) -> (usize, usize);
    /// The prompt naming `classes` and the text positions of each class (subword pieces of a
    /// name all listed, special tokens excluded).
    fn class_prompt(&self, classes: &[String]) -> Result<(String, Vec<Vec<usize>>)>;
    /// The text positions of the empty prompt that unsupervised segmentation reads.
    fn empty_prompt_positions(&self) -> Result<Vec<usize>>;
    /// A clear error when `name` cannot be a class (e.g. an unknown word).
    fn check_class(&self, name: &str) -> Result<()>;
    /// One forward of the RGB image (`w × h`, squashed to the model's input) noised to the
    /// options' step, with `prompt`; head-mean I2T at `layers`.
    fn i2t_maps(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        prompt: &str,
        layers: &[usize],
        opts: &SegmentOptions,
    ) -> Result<I2tMaps>;
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

/// Token positions of each class name in the prompt "c1 c2 …" for a word-level tokenizer with
/// BOS at position 0 (a class may be several words).
pub fn word_class_prompt(classes: &[String]) -> Result<(String, Vec<Vec<usize>>)> {
    check_classes(classes)?;
    let mut words = vec![];
    let mut tokens = vec![];
    for c in classes {
        let ws: Vec<&str> = c.split_whitespace().collect();
        // Position 0 is BOS; word k sits at k + 1.
        tokens.push((words.len() + 1..words.len() + 1 + ws.len()).collect());
        words.extend(ws);
    }
    Ok((words.join(" "), tokens))
}

/// The class list is not empty and no name is blank.
pub fn check_classes(classes: &[String]) -> Result<()> {
    if classes.is_empty() {
        return Err(Error::Input("the class list is empty".into()));
    }
    if classes
        .iter()
        .any(|c| c.split_whitespace().next().is_none())
    {
        return Err(Error::Input("a class name is empty".into()));
    }
    Ok(())
}

/// Class maps `[C, N]` (flattened) from head-mean I2T `[N, L]`: the mean over each class's
/// positions.
fn class_maps(i2t_mean: &Tensor, class_tokens: &[Vec<usize>]) -> Result<Vec<f32>> {
    let (n, l) = i2t_mean.dims2()?;
    let cols = i2t_mean.t()?.contiguous()?;
    let mut out = Vec::with_capacity(class_tokens.len() * n);
    for toks in class_tokens {
        if toks.is_empty() || toks.iter().any(|&t| t >= l) {
            return Err(Error::Input(format!(
                "class token positions {toks:?} are not within the {l} text positions"
            )));
        }
        let idx = Tensor::new(
            toks.iter().map(|&t| t as u32).collect::<Vec<_>>(),
            i2t_mean.device(),
        )?;
        let m = cols.index_select(&idx, 0)?.mean(0)?;
        out.extend(m.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn check_layer<M: I2tSegmenter + ?Sized>(model: &M, layer: usize) -> Result<()> {
    let n = model.num_layers();
    if layer >= n {
        return Err(Error::Input(format!(
            "layer {layer} does not exist (the model has blocks 0..{})",
            n.saturating_sub(1)
        )));
    }
    Ok(())
}

/// Labels per pixel at `w × h` from maps `[C, grid]` (bilinear upsampling, argmax).
fn labels_from_maps<M: I2tSegmenter + ?Sized>(
    model: &M,
    maps: &[f32],
    c: usize,
    w: usize,
    h: usize,
) -> Result<Vec<u8>> {
    let (gh, gw) = model.grid();
    let up = resize_bilinear(maps, c, gh, gw, h, w).map_err(|e| Error::Input(e.to_string()))?;
    argmax_labels(&up, c, h, w).map_err(|e| Error::Input(e.to_string()))
}

/// Open-vocabulary segmentation of an RGB image (`w × h`) into `classes`.
pub fn segment<M: I2tSegmenter + ?Sized>(
    model: &M,
    rgb: &[u8],
    w: usize,
    h: usize,
    classes: &[String],
    opts: &SegmentOptions,
) -> Result<Segmentation> {
    let layer = opts.layer.unwrap_or(model.default_layer());
    check_layer(model, layer)?;
    let (prompt, class_tokens) = model.class_prompt(classes)?;
    let got = model.i2t_maps(rgb, w, h, &prompt, &[layer], opts)?;
    let cm = class_maps(&got.maps[0], &class_tokens)?;
    let labels = labels_from_maps(model, &cm, classes.len(), w, h)?;
    let mut shares = vec![0f64; classes.len()];
    labels.iter().for_each(|&l| shares[l as usize] += 1.0);
    shares
        .iter_mut()
        .for_each(|s| *s /= labels.len().max(1) as f64);
    Ok(Segmentation {
        classes: classes.to_vec(),
        layer,
        sigma: got.sigma,
        timestep: got.timestep,
        width: w,
        height: h,
        labels,
        shares,
        class_tokens,
    })
}

/// Segments into `classes` at several blocks in one forward; returns labels per block at
/// `w × h`, with values = indices into `classes`.
pub fn segment_layers<M: I2tSegmenter + ?Sized>(
    model: &M,
    rgb: &[u8],
    w: usize,
    h: usize,
    classes: &[String],
    layers: &[usize],
    opts: &SegmentOptions,
) -> Result<Vec<Vec<u8>>> {
    for &l in layers {
        check_layer(model, l)?;
    }
    let (prompt, class_tokens) = model.class_prompt(classes)?;
    let got = model.i2t_maps(rgb, w, h, &prompt, layers, opts)?;
    got.maps
        .iter()
        .map(|m| {
            let cm = class_maps(m, &class_tokens)?;
            labels_from_maps(model, &cm, classes.len(), w, h)
        })
        .collect()
}

/// Unsupervised segmentation of an RGB image (`w × h`) at a block: the empty prompt's maps,
/// min-max normalised, softmax over pixels, merged by symmetric KL under `threshold`.
pub fn segment_unsupervised<M: I2tSegmenter + ?Sized>(
    model: &M,
    rgb: &[u8],
    w: usize,
    h: usize,
    threshold: f32,
    opts: &SegmentOptions,
) -> Result<Proposals> {
    let layer = opts.layer.unwrap_or(model.default_layer());
    check_layer(model, layer)?;
    let got = model.i2t_maps(rgb, w, h, "", &[layer], opts)?;
    let positions = model.empty_prompt_positions()?;
    let (_, l) = got.maps[0].dims2()?;
    if positions.is_empty() || positions.iter().any(|&p| p >= l) {
        return Err(Error::Input(format!(
            "unsupervised positions {positions:?} are not within the {l} text positions"
        )));
    }
    let idx = Tensor::new(
        positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        got.maps[0].device(),
    )?;
    // [N, L] → [P, N]: one map per read text position.
    let t = got.maps[0].t()?.contiguous()?.index_select(&idx, 0)?;
    let (p, n) = t.dims2()?;
    let flat: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let seg = crate::analysis::segment_maps(&flat, p, n, threshold)
        .map_err(|e| Error::Input(e.to_string()))?;
    let k = seg.clusters.len();
    let dist: Vec<f32> = seg.distributions.iter().flatten().copied().collect();
    let labels = labels_from_maps(model, &dist, k, w, h)?;
    let clusters = seg
        .clusters
        .into_iter()
        .map(|c| c.into_iter().map(|i| positions[i]).collect())
        .collect();
    Ok(Proposals {
        layer,
        threshold,
        sigma: got.sigma,
        width: w,
        height: h,
        clusters,
        labels,
    })
}

/// Head-mean I2T `[N, L]` of batch item 0 at each of `layers`.
pub fn head_mean_i2t(
    blocks: &[crate::capture::BlockCapture],
    layers: &[usize],
) -> Result<Vec<Tensor>> {
    layers
        .iter()
        .map(|&l| {
            let i2t = blocks
                .get(l)
                .and_then(|b| b.attn.i2t.as_ref())
                .ok_or_else(|| Error::Input(format!("no I2T captured at block {l}")))?;
            Ok(i2t.to_dtype(DType::F32)?.mean(1)?.get(0)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_prompt_positions_skip_bos_and_span_multiword_names() {
        let classes = vec!["red circle".to_string(), "background".to_string()];
        let (p, toks) = word_class_prompt(&classes).unwrap();
        assert_eq!(p, "red circle background");
        assert_eq!(toks, vec![vec![1, 2], vec![3]]);
        assert!(word_class_prompt(&[]).is_err());
        assert!(word_class_prompt(&["  ".to_string()]).is_err());
    }

    #[test]
    fn class_maps_average_their_positions() {
        // N = 2 image tokens, L = 3 positions.
        let i2t = Tensor::new(
            &[[0.1f32, 0.2, 0.7], [0.5, 0.3, 0.2]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let m = class_maps(&i2t, &[vec![1, 2], vec![0]]).unwrap();
        let want = [0.45f32, 0.25, 0.1, 0.5];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{m:?}");
        }
        assert!(class_maps(&i2t, &[vec![3]]).is_err());
        assert!(class_maps(&i2t, &[vec![]]).is_err());
    }
}
