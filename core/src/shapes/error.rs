//! Errors of the shapes world.

use std::path::PathBuf;

/// Anything that can go wrong while parsing vocabulary words, generating scenes or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum ShapesError {
    /// A word that is not in the fixed vocabulary.
    #[error("unknown {kind} word {word:?}; the {kind} words are: {vocabulary}")]
    UnknownWord {
        kind: &'static str,
        word: String,
        vocabulary: String,
    },
    /// A scene configuration that cannot be honoured.
    #[error("invalid shapes scene configuration: {0}")]
    InvalidConfig(String),
    /// A file-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PNG encoding failure.
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A JSON encoding failure.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
