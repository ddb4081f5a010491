//! Dataset evaluation of open-vocabulary segmentation as Seg4Diff's code does it: each image's
//! prompt is the names of the classes present in its label (an oracle class set), one forward,
//! argmax over those classes; pixel accuracy, mean accuracy and mIoU over the whole dataset.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{segment_layers, segment_unsupervised, I2tSegmenter, SegmentOptions};
use crate::error::{Error, Result};
use crate::metrics::{Confusion, Dataset, SegScores, IGNORE_LABEL};

/// Scores of one block.
#[derive(Debug, Clone, Serialize)]
pub struct LayerScores {
    pub layer: usize,
    pub miou: f64,
    pub pacc: f64,
    pub macc: f64,
    pub per_class_iou: BTreeMap<String, Option<f64>>,
    /// Pixel counts, row = ground-truth class, column = predicted class, in `classes.txt`
    /// order (ignored pixels left out); absent for unsupervised proposals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<u64>>>,
}

impl LayerScores {
    fn new(layer: usize, s: &SegScores, classes: &[String]) -> Self {
        Self {
            layer,
            miou: s.miou,
            pacc: s.pacc,
            macc: s.macc,
            per_class_iou: classes
                .iter()
                .cloned()
                .zip(s.per_class_iou.iter().copied())
                .collect(),
            confusion: None,
        }
    }

    fn with_confusion(mut self, c: &Confusion) -> Self {
        let n = c.num_classes();
        self.confusion = Some(
            (0..n)
                .map(|gt| (0..n).map(|p| c.count(gt, Some(p))).collect())
                .collect(),
        );
        self
    }
}

/// Evaluates `layers` on a dataset; `on_image(done, total)` reports progress and may cancel.
pub fn evaluate<M: I2tSegmenter + ?Sized>(
    model: &M,
    data: &Dataset,
    layers: &[usize],
    opts: &SegmentOptions,
    mut on_image: impl FnMut(usize, usize) -> bool,
) -> Result<Vec<LayerScores>> {
    let m = |e: crate::metrics::MetricsError| Error::Input(e.to_string());
    if data.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no images",
            data.root().display()
        )));
    }
    for c in data.classes() {
        model
            .check_class(c)
            .map_err(|e| Error::Input(format!("class `{c}` in classes.txt: {e}")))?;
    }
    let mut conf: Vec<Confusion> = layers
        .iter()
        .map(|_| Confusion::new(data.num_classes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(m)?;
    for i in 0..data.len() {
        let img = data.load_image(i).map_err(m)?;
        let label = data.load_label(i).map_err(m)?;
        let present = Dataset::classes_present(&label.data);
        if present.is_empty() {
            continue;
        }
        let names: Vec<String> = present.iter().map(|&c| data.classes()[c].clone()).collect();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let preds = segment_layers(model, img.as_raw(), w, h, &names, layers, opts)?;
        for (k, p) in preds.into_iter().enumerate() {
            let mapped: Vec<u8> = p
                .iter()
                .map(|&j| {
                    present
                        .get(j as usize)
                        .map(|&c| c as u8)
                        .unwrap_or(IGNORE_LABEL)
                })
                .collect();
            conf[k].add(&mapped, &label.data).map_err(m)?;
        }
        if !on_image(i + 1, data.len()) {
            return Err(Error::Input("cancelled".into()));
        }
    }
    Ok(layers
        .iter()
        .zip(&conf)
        .map(|(&l, c)| LayerScores::new(l, &c.scores(), data.classes()).with_confusion(c))
        .collect())
}

/// Evaluates unsupervised proposals on a dataset: per-image Hungarian matching (maximum
/// overlap) between proposals and the classes present, TP/FP/FN summed over the dataset.
pub fn evaluate_unsupervised<M: I2tSegmenter + ?Sized>(
    model: &M,
    data: &Dataset,
    threshold: f32,
    opts: &SegmentOptions,
    mut on_image: impl FnMut(usize, usize) -> bool,
) -> Result<LayerScores> {
    let m = |e: crate::metrics::MetricsError| Error::Input(e.to_string());
    if data.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no images",
            data.root().display()
        )));
    }
    let mut acc = crate::metrics::UnsupervisedEval::new(data.num_classes()).map_err(m)?;
    let mut layer = opts.layer.unwrap_or(model.default_layer());
    for i in 0..data.len() {
        let img = data.load_image(i).map_err(m)?;
        let label = data.load_label(i).map_err(m)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let p = segment_unsupervised(model, img.as_raw(), w, h, threshold, opts)?;
        layer = p.layer;
        acc.add(&p.labels, &label.data).map_err(m)?;
        if !on_image(i + 1, data.len()) {
            return Err(Error::Input("cancelled".into()));
        }
    }
    Ok(LayerScores::new(layer, &acc.scores(), data.classes()))
}
