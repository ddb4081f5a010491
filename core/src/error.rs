//! The library's error type: every failure a user can cause, with a message that names the culprit.

use std::path::PathBuf;

/// Errors raised by `ditlens-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path the user gave does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that should be safetensors is not (wrong format, truncated, corrupt header).
    #[error("{path} is not a readable safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    /// The checkpoint's tensor names match no layout this crate knows.
    #[error("unknown checkpoint layout in {path}: {reason}")]
    UnknownLayout { path: PathBuf, reason: String },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("checkpoint is missing tensor `{name}`")]
    MissingTensor { name: String },
    /// A tensor exists but has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A configuration file is unreadable or inconsistent with the weights.
    #[error("bad config: {0}")]
    Config(String),
    /// Loading weights failed (missing tensor, wrong shape), already phrased for the user.
    #[error("{0}")]
    Load(String),
    /// The caller passed inputs the model cannot take (names, dtypes, sizes).
    #[error("bad input: {0}")]
    Input(String),
    /// A part of a pipeline (text encoder, tokenizer, VAE, transformer) is absent.
    #[error("{part} not found: {looked}. {hint}")]
    MissingPart {
        part: String,
        looked: String,
        hint: String,
    },
    /// A tokenizer's files are missing, unreadable or inconsistent.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// Anything raised by the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
