use thiserror::Error;

/// Everything that can go wrong in this crate.
#[derive(Debug, Error)]
pub enum LossError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Tensors or slices whose shapes do not fit together.
    #[error("{what}: {detail}")]
    Shape { what: &'static str, detail: String },

    /// A class target or predicted class outside `-1..K` (targets) or `0..K` (predictions).
    #[error("{what}: sample {index} has class {value}, expected {expected}")]
    InvalidClass {
        what: &'static str,
        index: usize,
        value: i64,
        expected: String,
    },

    /// A mask entry that is neither 0 nor 1.
    #[error("{what}: sample {index} has mask value {value}, expected 0 or 1")]
    InvalidMask {
        what: &'static str,
        index: usize,
        value: f64,
    },

    /// A value that must be finite (a valid sample's target, a logit, a weight) is not.
    #[error("{what}: sample {index} is not finite ({value})")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },

    /// A configuration value out of its domain.
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, LossError>;

pub(crate) fn shape_err(what: &'static str, detail: impl Into<String>) -> LossError {
    LossError::Shape {
        what,
        detail: detail.into(),
    }
}
