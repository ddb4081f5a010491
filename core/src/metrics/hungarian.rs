//! Unsupervised-segmentation evaluation: Hungarian matching of proposals to classes, summed over a dataset.
//!
//! As Seg4Diff's `hungarian_matching`: per image, the overlap (pixel count) between every proposal
//! and every ground-truth class present is maximised by a one-to-one assignment; matched
//! proposals take their class, unmatched ones "no class". True/false positives and false
//! negatives are then summed over the whole dataset (not averaged per image), and
//! IoU_c = TP / (TP + FP + FN), pixel accuracy = ΣTP / counted pixels. Ties between optimal
//! assignments are settled by the solver; a pair with zero overlap is never a match.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

use super::confusion::{check_labels, Confusion, SegScores, IGNORE_LABEL};
use super::error::{check_len, Result};

/// Pixel overlaps of one image between proposals `0..num_proposals` and the classes present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// One more than the largest proposal id in the image.
    pub num_proposals: usize,
    /// Ground-truth classes with at least one pixel in the image, ascending.
    pub classes: Vec<usize>,
    /// Row-major `num_proposals × classes.len()`: pixels of proposal `p` labelled `classes[j]`.
    pub counts: Vec<u64>,
}

impl Overlap {
    /// Counts overlaps; ground-truth pixels equal to 255 are skipped, other values must be classes.
    pub fn new(proposals: &[u8], gt: &[u8], num_classes: usize) -> Result<Self> {
        check_len("proposal vs ground-truth pixels", gt.len(), proposals.len())?;
        check_labels("ground truth", gt, num_classes)?;
        let num_proposals = proposals.iter().max().map_or(0, |&m| m as usize + 1);
        let mut full = vec![0u64; num_proposals * num_classes];
        for (&p, &g) in proposals.iter().zip(gt) {
            if g != IGNORE_LABEL {
                full[p as usize * num_classes + g as usize] += 1;
            }
        }
        let classes: Vec<usize> = (0..num_classes)
            .filter(|&c| (0..num_proposals).any(|p| full[p * num_classes + c] > 0))
            .collect();
        let counts = (0..num_proposals)
            .flat_map(|p| classes.iter().map(move |&c| (p, c)))
            .map(|(p, c)| full[p * num_classes + c])
            .collect();
        Ok(Overlap {
            num_proposals,
            classes,
            counts,
        })
    }

    /// Pixels of proposal `p` labelled with the `j`-th present class.
    pub fn get(&self, p: usize, j: usize) -> u64 {
        self.counts[p * self.classes.len() + j]
    }

    /// The one-to-one assignment of largest total overlap: for each proposal id, its class.
    pub fn assign(&self) -> Vec<Option<usize>> {
        let (np, nc) = (self.num_proposals, self.classes.len());
        let mut class_of = vec![None; np];
        if np == 0 || nc == 0 {
            return class_of;
        }
        // The solver needs rows ≤ columns: put the smaller side on the rows.
        let pairs: Vec<(usize, usize)> = if np <= nc {
            let weights = self.weights(np, nc, |r, c| self.get(r, c));
            let (_, cols) = kuhn_munkres(&weights);
            cols.into_iter().enumerate().collect()
        } else {
            let weights = self.weights(nc, np, |r, c| self.get(c, r));
            let (_, cols) = kuhn_munkres(&weights);
            cols.into_iter().enumerate().map(|(j, p)| (p, j)).collect()
        };
        for (p, j) in pairs {
            if self.get(p, j) > 0 {
                class_of[p] = Some(self.classes[j]);
            }
        }
        class_of
    }

    fn weights(&self, rows: usize, cols: usize, at: impl Fn(usize, usize) -> u64) -> Matrix<i64> {
        let values = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r, c)))
            .map(|(r, c)| at(r, c) as i64)
            .collect();
        Matrix::from_vec(rows, cols, values).expect("rows × cols values")
    }
}

/// For one image, the class each proposal id is matched to (`None` = unmatched).
pub fn match_proposals(
    proposals: &[u8],
    gt: &[u8],
    num_classes: usize,
) -> Result<Vec<Option<usize>>> {
    Ok(Overlap::new(proposals, gt, num_classes)?.assign())
}

/// Dataset-level accumulator of Hungarian-matched unsupervised segmentations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupervisedEval {
    confusion: Confusion,
}

impl UnsupervisedEval {
    /// An empty accumulator over classes `0..num_classes` (1 to 255).
    pub fn new(num_classes: usize) -> Result<Self> {
        Ok(UnsupervisedEval {
            confusion: Confusion::new(num_classes)?,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.confusion.num_classes()
    }

    /// Matches one image's proposals to its classes and counts it; returns the matching used.
    pub fn add(&mut self, proposals: &[u8], gt: &[u8]) -> Result<Vec<Option<usize>>> {
        let class_of = match_proposals(proposals, gt, self.num_classes())?;
        let pred: Vec<u8> = proposals
            .iter()
            .map(|&p| class_of[p as usize].map_or(IGNORE_LABEL, |c| c as u8))
            .collect();
        self.confusion.add(&pred, gt)?;
        Ok(class_of)
    }

    /// Adds the counts of another accumulator over the same classes.
    pub fn merge(&mut self, other: &UnsupervisedEval) -> Result<()> {
        self.confusion.merge(&other.confusion)
    }

    /// Per class, summed over images: pixels of the class inside its matched proposal.
    pub fn true_positives(&self) -> Vec<u64> {
        self.confusion.true_positives()
    }

    /// Per class, summed over images: pixels of its matched proposal labelled otherwise.
    pub fn false_positives(&self) -> Vec<u64> {
        self.confusion.false_positives()
    }

    /// Per class, summed over images: pixels of the class outside its matched proposal.
    pub fn false_negatives(&self) -> Vec<u64> {
        self.confusion.false_negatives()
    }

    /// All counted pixels (ground truth not ignored).
    pub fn total(&self) -> u64 {
        self.confusion.total()
    }

    /// The confusion matrix of matched predictions ("no class" column = unmatched proposals).
    pub fn confusion(&self) -> &Confusion {
        &self.confusion
    }

    /// Pixel accuracy, mIoU (mean over classes with ground-truth pixels) and per-class values.
    pub fn scores(&self) -> SegScores {
        self.confusion.scores()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::error::MetricsError;

    const I: u8 = IGNORE_LABEL;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// `n` pixels of proposal `p` over class `g`.
    fn run(parts: &[(u8, u8, usize)]) -> (Vec<u8>, Vec<u8>) {
        let mut props = Vec::new();
        let mut gt = Vec::new();
        for &(p, g, n) in parts {
            props.extend(std::iter::repeat_n(p, n));
            gt.extend(std::iter::repeat_n(g, n));
        }
        (props, gt)
    }

    #[test]
    fn optimum_beats_greedy() {
        // Overlaps (proposal × class): p0 = [5, 4], p1 = [4, 0].
        // Greedy by largest overlap takes p0→c0 (5), leaving p1→c1 (0): total 5.
        // The optimum is p0→c1 + p1→c0 = 4 + 4 = 8.
        let (props, gt) = run(&[(0, 0, 5), (0, 1, 4), (1, 0, 4)]);
        let mut eval = UnsupervisedEval::new(2).unwrap();
        assert_eq!(eval.add(&props, &gt).unwrap(), vec![Some(1), Some(0)]);
        assert_eq!(eval.true_positives(), vec![4, 4]);
        assert_eq!(eval.false_positives(), vec![0, 5]);
        assert_eq!(eval.false_negatives(), vec![5, 0]);
        let s = eval.scores();
        // Greedy would give 5/13.
        assert!(close(s.pacc, 8.0 / 13.0));
        // IoU0 = 4 / (4 + 0 + 5), IoU1 = 4 / (4 + 5 + 0).
        assert!(close(s.per_class_iou[0].unwrap(), 4.0 / 9.0));
        assert!(close(s.per_class_iou[1].unwrap(), 4.0 / 9.0));
        assert!(close(s.miou, 4.0 / 9.0));
    }

    #[test]
    fn more_proposals_than_classes() {
        // Three classes, class 2 absent. Overlaps: p0 = [4, 0], p1 = [2, 1], p2 = [0, 3].
        // Optimum p0→c0 + p2→c1 = 7; p1 stays unmatched and adds no false positive.
        let (props, gt) = run(&[(0, 0, 4), (1, 0, 2), (1, 1, 1), (2, 1, 3)]);
        let overlap = Overlap::new(&props, &gt, 3).unwrap();
        assert_eq!(overlap.num_proposals, 3);
        assert_eq!(overlap.classes, vec![0, 1]);
        assert_eq!(overlap.counts, vec![4, 0, 2, 1, 0, 3]);
        let mut eval = UnsupervisedEval::new(3).unwrap();
        assert_eq!(eval.add(&props, &gt).unwrap(), vec![Some(0), None, Some(1)]);
        assert_eq!(eval.true_positives(), vec![4, 3, 0]);
        assert_eq!(eval.false_positives(), vec![0, 0, 0]);
        assert_eq!(eval.false_negatives(), vec![2, 1, 0]);
        let s = eval.scores();
        assert!(close(s.pacc, 0.7));
        assert!(close(s.per_class_iou[0].unwrap(), 4.0 / 6.0));
        assert!(close(s.per_class_iou[1].unwrap(), 3.0 / 4.0));
        assert_eq!(s.per_class_iou[2], None);
        assert!(close(s.miou, (4.0 / 6.0 + 3.0 / 4.0) / 2.0));
    }

    #[test]
    fn more_classes_than_proposals() {
        // Three classes present, two proposals. Overlaps: p0 = [3, 2, 0], p1 = [0, 1, 4].
        // Optimum p0→c0 + p1→c2 = 7; class 1 gets no proposal and scores IoU 0.
        let (props, gt) = run(&[(0, 0, 3), (0, 1, 2), (1, 1, 1), (1, 2, 4)]);
        let mut eval = UnsupervisedEval::new(3).unwrap();
        assert_eq!(eval.add(&props, &gt).unwrap(), vec![Some(0), Some(2)]);
        assert_eq!(eval.true_positives(), vec![3, 0, 4]);
        assert_eq!(eval.false_positives(), vec![2, 0, 1]);
        assert_eq!(eval.false_negatives(), vec![0, 3, 0]);
        let s = eval.scores();
        assert!(close(s.pacc, 0.7));
        // IoU = 3/5, 0/3, 4/5.
        assert_eq!(s.per_class_iou[1], Some(0.0));
        assert!(close(s.miou, (0.6 + 0.0 + 0.8) / 3.0));
    }

    #[test]
    fn dataset_totals_on_two_4x4_images() {
        // Image A (3 classes; 255 = ignore):
        //   gt          proposals
        //   0 0 1 1     0 0 0 1
        //   0 0 1 1     0 0 1 1
        //   2 2 1 1     2 0 1 1
        //   2 2 I I     2 2 1 3
        // Counted overlaps: p0 = {c0: 4, c1: 1, c2: 1}, p1 = {c1: 5}, p2 = {c2: 3};
        // p3 covers only an ignored pixel. 14 counted pixels.
        // Optimum p0→0, p1→1, p2→2 (4 + 5 + 3 = 12):
        //   TP = [4, 5, 3], FP = [2, 0, 0] (p0's c1 and c2 pixels), FN = [0, 1, 1].
        #[rustfmt::skip]
        let gt_a = [
            0, 0, 1, 1,
            0, 0, 1, 1,
            2, 2, 1, 1,
            2, 2, I, I,
        ];
        #[rustfmt::skip]
        let props_a = [
            0, 0, 0, 1,
            0, 0, 1, 1,
            2, 0, 1, 1,
            2, 2, 1, 3,
        ];
        // Image B (class 0 absent; proposal ids mean other things than in A):
        //   gt          proposals
        //   1 1 1 1     1 1 1 1
        //   1 1 1 1     1 1 0 0
        //   2 2 2 2     0 0 0 0
        //   2 2 2 2     0 0 0 1
        // Overlaps: p0 = {c1: 2, c2: 7}, p1 = {c1: 6, c2: 1}. Optimum p0→2, p1→1 (7 + 6 = 13):
        //   TP = [0, 6, 7], FP = [0, 1, 2], FN = [0, 2, 1]. 16 counted pixels.
        #[rustfmt::skip]
        let gt_b = [
            1, 1, 1, 1,
            1, 1, 1, 1,
            2, 2, 2, 2,
            2, 2, 2, 2,
        ];
        #[rustfmt::skip]
        let props_b = [
            1, 1, 1, 1,
            1, 1, 0, 0,
            0, 0, 0, 0,
            0, 0, 0, 1,
        ];
        let mut eval = UnsupervisedEval::new(3).unwrap();
        let map_a = eval.add(&props_a, &gt_a).unwrap();
        assert_eq!(map_a, vec![Some(0), Some(1), Some(2), None]);
        assert_eq!(eval.true_positives(), vec![4, 5, 3]);
        assert_eq!(eval.false_positives(), vec![2, 0, 0]);
        assert_eq!(eval.false_negatives(), vec![0, 1, 1]);
        assert_eq!(eval.add(&props_b, &gt_b).unwrap(), vec![Some(2), Some(1)]);

        // Dataset sums: TP = [4, 11, 10], FP = [2, 1, 2], FN = [0, 3, 2], 30 pixels.
        assert_eq!(eval.true_positives(), vec![4, 11, 10]);
        assert_eq!(eval.false_positives(), vec![2, 1, 2]);
        assert_eq!(eval.false_negatives(), vec![0, 3, 2]);
        assert_eq!(eval.total(), 30);
        let s = eval.scores();
        assert!(close(s.pacc, 25.0 / 30.0));
        // IoU = 4/6, 11/15, 10/14; mean = (70 + 77 + 75) / 105 / 3 = 74/105. The mean of the
        // two per-image mIoUs, (0.75 + 0.6833…) / 2 = 0.7167, would differ.
        assert!(close(s.per_class_iou[0].unwrap(), 4.0 / 6.0));
        assert!(close(s.per_class_iou[1].unwrap(), 11.0 / 15.0));
        assert!(close(s.per_class_iou[2].unwrap(), 10.0 / 14.0));
        assert!(close(s.miou, 74.0 / 105.0));

        // Accumulating the images separately and merging gives the same sums.
        let mut a = UnsupervisedEval::new(3).unwrap();
        a.add(&props_a, &gt_a).unwrap();
        let mut b = UnsupervisedEval::new(3).unwrap();
        b.add(&props_b, &gt_b).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, eval);
    }

    #[test]
    fn fully_ignored_image_and_bad_input() {
        let mut eval = UnsupervisedEval::new(2).unwrap();
        assert_eq!(eval.add(&[0, 1], &[I, I]).unwrap(), vec![None, None]);
        assert_eq!(eval.total(), 0);
        assert!(matches!(
            eval.add(&[0, 1], &[0, 2]),
            Err(MetricsError::ClassOutOfRange { value: 2, .. })
        ));
        assert!(eval.add(&[0], &[0, 1]).is_err());
        assert_eq!(eval.total(), 0);
    }
}
