//! Errors of the segmentation metrics: bad inputs and unreadable evaluation datasets.

use std::path::PathBuf;

/// Anything that can go wrong while scoring segmentations or reading an evaluation dataset.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Two buffers that must describe the same pixels (or a buffer and its stated shape) differ in length.
    #[error("{what}: expected {expected} values, got {got}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A class index that is neither below the number of classes nor the ignore label 255.
    #[error("{what} value {value} at pixel {index} is out of range: {num_classes} classes (0..={max}) or 255 = ignore")]
    ClassOutOfRange {
        what: &'static str,
        value: u8,
        index: usize,
        num_classes: usize,
        max: usize,
    },
    /// A parameter that cannot be honoured (zero classes, empty source map, too many channels).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image or label file that cannot be decoded.
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// An evaluation dataset folder that does not follow the expected layout.
    #[error("{path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
}

/// Result alias of the metrics module.
pub type Result<T> = std::result::Result<T, MetricsError>;

impl MetricsError {
    pub(crate) fn dataset(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        MetricsError::Dataset {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Fails unless `got == expected`, naming `what`.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(MetricsError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
