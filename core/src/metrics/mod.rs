//! Semantic-segmentation evaluation as in Seg4Diff: confusion-matrix scores, Hungarian-matched unsupervised scores, resizing and dataset reading.

pub mod confusion;
pub mod dataset;
pub mod error;
pub mod hungarian;
pub mod resize;

pub use confusion::{Confusion, SegScores, IGNORE_LABEL, MAX_CLASSES};
pub use dataset::{read_label, Dataset, LabelMap, Sample, IMAGE_EXTENSIONS};
pub use error::{MetricsError, Result};
pub use hungarian::{match_proposals, Overlap, UnsupervisedEval};
pub use resize::{argmax_labels, resize_bilinear, resize_labels_nearest};
