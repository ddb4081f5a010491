//! Confusion matrix of a semantic segmentation and the scores read from it (pAcc, mAcc, mIoU).
//!
//! Rows are ground-truth classes, columns predicted classes plus one last "no class" column for
//! pixels predicted as [`IGNORE_LABEL`] (unmatched proposals in unsupervised evaluation). Pixels
//! whose ground truth is [`IGNORE_LABEL`] are not counted. The scores follow detectron2's
//! `SemSegEvaluator`, which Seg4Diff evaluates with: classes without ground-truth pixels are left
//! out of mAcc and mIoU and reported as `None`.

use serde::Serialize;

use super::error::{check_len, MetricsError, Result};

/// Label value meaning "not annotated" in ground truth and "no class" in predictions.
pub const IGNORE_LABEL: u8 = 255;

/// Most classes a `u8` label map can hold next to the ignore label.
pub const MAX_CLASSES: usize = 255;

/// Scores of a segmentation, as fractions in `[0, 1]` (NaN when nothing was counted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegScores {
    /// Pixel accuracy: correctly labelled pixels over all counted pixels.
    pub pacc: f64,
    /// Mean of the per-class accuracies over classes with ground-truth pixels.
    pub macc: f64,
    /// Mean of the per-class IoUs over classes with ground-truth pixels.
    pub miou: f64,
    /// IoU of each class; `None` for classes without ground-truth pixels.
    pub per_class_iou: Vec<Option<f64>>,
    /// Accuracy (recall) of each class; `None` for classes without ground-truth pixels.
    pub per_class_acc: Vec<Option<f64>>,
}

/// Pixel counts of (ground truth, prediction) pairs, accumulated over any number of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    num_classes: usize,
    /// Row-major `num_classes × (num_classes + 1)`; the last column counts "no class" predictions.
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix over classes `0..num_classes` (1 to [`MAX_CLASSES`]).
    pub fn new(num_classes: usize) -> Result<Self> {
        if num_classes == 0 || num_classes > MAX_CLASSES {
            return Err(MetricsError::InvalidArgument(format!(
                "number of classes must be 1..={MAX_CLASSES}, got {num_classes}"
            )));
        }
        Ok(Confusion {
            num_classes,
            counts: vec![0; num_classes * (num_classes + 1)],
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Counts one image: `pred[i]` against `gt[i]`. Nothing is counted if any value is invalid.
    pub fn add(&mut self, pred: &[u8], gt: &[u8]) -> Result<()> {
        check_len("prediction vs ground-truth pixels", gt.len(), pred.len())?;
        check_labels("ground truth", gt, self.num_classes)?;
        check_labels("prediction", pred, self.num_classes)?;
        let stride = self.num_classes + 1;
        for (&p, &g) in pred.iter().zip(gt) {
            if g == IGNORE_LABEL {
                continue;
            }
            let col = if p == IGNORE_LABEL {
                self.num_classes
            } else {
                p as usize
            };
            self.counts[g as usize * stride + col] += 1;
        }
        Ok(())
    }

    /// Adds the counts of another matrix over the same classes.
    pub fn merge(&mut self, other: &Confusion) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(MetricsError::InvalidArgument(format!(
                "cannot merge confusion matrices over {} and {} classes",
                self.num_classes, other.num_classes
            )));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Pixels of ground-truth class `gt` predicted as `pred` (`None` = "no class").
    pub fn count(&self, gt: usize, pred: Option<usize>) -> u64 {
        let col = pred.unwrap_or(self.num_classes);
        assert!(gt < self.num_classes && col <= self.num_classes);
        self.counts[gt * (self.num_classes + 1) + col]
    }

    /// All counted pixels (ground truth not ignored).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Per class: pixels of the class predicted as the class (the diagonal).
    pub fn true_positives(&self) -> Vec<u64> {
        (0..self.num_classes)
            .map(|c| self.count(c, Some(c)))
            .collect()
    }

    /// Per class: pixels predicted as the class whose ground truth is another class.
    pub fn false_positives(&self) -> Vec<u64> {
        (0..self.num_classes)
            .map(|c| self.predicted(c) - self.count(c, Some(c)))
            .collect()
    }

    /// Per class: pixels of the class predicted as another class or as "no class".
    pub fn false_negatives(&self) -> Vec<u64> {
        (0..self.num_classes)
            .map(|c| self.ground_truth(c) - self.count(c, Some(c)))
            .collect()
    }

    /// Pixel accuracy: Σ diagonal / Σ all (NaN when nothing was counted).
    pub fn pixel_accuracy(&self) -> f64 {
        let correct: u64 = self.true_positives().iter().sum();
        ratio(correct, self.total())
    }

    /// Per class: diagonal / ground-truth pixels; `None` without ground-truth pixels.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        (0..self.num_classes)
            .map(|c| {
                let gt = self.ground_truth(c);
                (gt > 0).then(|| ratio(self.count(c, Some(c)), gt))
            })
            .collect()
    }

    /// Per class: diagonal / (row + column − diagonal); `None` without ground-truth pixels.
    pub fn per_class_iou(&self) -> Vec<Option<f64>> {
        (0..self.num_classes)
            .map(|c| {
                let gt = self.ground_truth(c);
                let tp = self.count(c, Some(c));
                (gt > 0).then(|| ratio(tp, gt + self.predicted(c) - tp))
            })
            .collect()
    }

    /// Mean accuracy over classes with ground-truth pixels (NaN when there are none).
    pub fn mean_accuracy(&self) -> f64 {
        mean_present(&self.per_class_accuracy())
    }

    /// Mean IoU over classes with ground-truth pixels (NaN when there are none).
    pub fn mean_iou(&self) -> f64 {
        mean_present(&self.per_class_iou())
    }

    /// All scores at once.
    pub fn scores(&self) -> SegScores {
        let per_class_iou = self.per_class_iou();
        let per_class_acc = self.per_class_accuracy();
        SegScores {
            pacc: self.pixel_accuracy(),
            macc: mean_present(&per_class_acc),
            miou: mean_present(&per_class_iou),
            per_class_iou,
            per_class_acc,
        }
    }

    /// Ground-truth pixels of class `c` (row sum, "no class" column included).
    fn ground_truth(&self, c: usize) -> u64 {
        let stride = self.num_classes + 1;
        self.counts[c * stride..(c + 1) * stride].iter().sum()
    }

    /// Pixels predicted as class `c` (column sum).
    fn predicted(&self, c: usize) -> u64 {
        (0..self.num_classes).map(|g| self.count(g, Some(c))).sum()
    }
}

/// Fails on the first value that is neither a class below `num_classes` nor [`IGNORE_LABEL`].
pub(crate) fn check_labels(what: &'static str, labels: &[u8], num_classes: usize) -> Result<()> {
    match labels
        .iter()
        .position(|&v| v != IGNORE_LABEL && v as usize >= num_classes)
    {
        None => Ok(()),
        Some(index) => Err(MetricsError::ClassOutOfRange {
            what,
            value: labels[index],
            index,
            num_classes,
            max: num_classes - 1,
        }),
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

fn mean_present(values: &[Option<f64>]) -> f64 {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        f64::NAN
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: u8 = IGNORE_LABEL;

    // Three classes. Counted pairs (gt, pred), gt = 255 skipped:
    //   gt 0: pred 0 ×3, pred 1 ×1, pred 255 ×1   -> row 5
    //   gt 1: pred 1 ×2, pred 2 ×1                -> row 3
    //   gt 2: none                                -> row 0
    // Columns: pred 0 = 3, pred 1 = 3, pred 2 = 1. Diagonal 3, 2, 0; total 8.
    const GT: [u8; 10] = [0, 0, 0, 1, 1, I, 0, 1, I, 0];
    const PRED: [u8; 10] = [0, 0, 1, 1, 2, 0, I, 1, 2, 0];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_scores() {
        let mut m = Confusion::new(3).unwrap();
        m.add(&PRED, &GT).unwrap();
        assert_eq!(m.total(), 8);
        assert_eq!(m.count(0, Some(0)), 3);
        assert_eq!(m.count(0, None), 1);
        // The gt-255 pixel predicted as 2 is not counted in column 2.
        assert_eq!(m.count(1, Some(2)), 1);
        assert_eq!(m.true_positives(), vec![3, 2, 0]);
        assert_eq!(m.false_positives(), vec![0, 1, 1]);
        assert_eq!(m.false_negatives(), vec![2, 1, 0]);

        let s = m.scores();
        assert!(close(s.pacc, 5.0 / 8.0));
        // acc0 = 3/5, acc1 = 2/3, class 2 has no ground truth.
        assert_eq!(s.per_class_acc[2], None);
        assert!(close(s.per_class_acc[0].unwrap(), 0.6));
        assert!(close(s.per_class_acc[1].unwrap(), 2.0 / 3.0));
        assert!(close(s.macc, (0.6 + 2.0 / 3.0) / 2.0));
        // iou0 = 3 / (5 + 3 - 3) = 0.6, iou1 = 2 / (3 + 3 - 2) = 0.5; class 2 predicted once
        // but without ground truth: left out of the mean, not counted as 0.
        assert!(close(s.per_class_iou[0].unwrap(), 0.6));
        assert!(close(s.per_class_iou[1].unwrap(), 0.5));
        assert_eq!(s.per_class_iou[2], None);
        assert!(close(s.miou, 0.55));
    }

    #[test]
    fn merge_equals_adding_both_parts() {
        let mut whole = Confusion::new(3).unwrap();
        whole.add(&PRED, &GT).unwrap();
        let mut a = Confusion::new(3).unwrap();
        a.add(&PRED[..4], &GT[..4]).unwrap();
        let mut b = Confusion::new(3).unwrap();
        b.add(&PRED[4..], &GT[4..]).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, whole);
        assert!(a.merge(&Confusion::new(4).unwrap()).is_err());
    }

    #[test]
    fn rejects_out_of_range_values_without_counting() {
        let mut m = Confusion::new(3).unwrap();
        let err = m.add(&[0, 1], &[0, 3]).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::ClassOutOfRange {
                value: 3,
                index: 1,
                ..
            }
        ));
        assert!(m.add(&[0, 4], &[0, 1]).is_err());
        assert!(m.add(&[0], &[0, 1]).is_err());
        assert_eq!(m.total(), 0);
        assert!(Confusion::new(0).is_err());
        assert!(Confusion::new(256).is_err());
    }

    #[test]
    fn empty_matrix_scores_are_nan_and_serialize_as_null() {
        let s = Confusion::new(2).unwrap().scores();
        assert!(s.pacc.is_nan() && s.macc.is_nan() && s.miou.is_nan());
        assert_eq!(s.per_class_iou, vec![None, None]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"pacc":null,"macc":null,"miou":null,"per_class_iou":[null,null],"per_class_acc":[null,null]}"#
        );
    }
}
