//! Errors raised by the attention analyses: bad shapes or empty inputs, one line each.

/// Why an analysis rejected its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// A required input or dimension is empty (zero layers, heads, tokens…).
    #[error("empty input: {0}")]
    Empty(&'static str),
    /// A buffer does not hold the number of values its dimensions imply.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// Any other unusable argument (non-finite values, too many clusters…).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Result alias of the analysis module.
pub type Result<T> = std::result::Result<T, AnalysisError>;

/// Checks that `got == expected`, naming the buffer otherwise.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(AnalysisError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Checks that a dimension is non-zero.
pub(crate) fn check_nonzero(what: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        Err(AnalysisError::Empty(what))
    } else {
        Ok(())
    }
}
