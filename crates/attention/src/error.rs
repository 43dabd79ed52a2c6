use thiserror::Error;

/// Invalid input given to an attention block.
///
/// The blocks return `candle_core::Result` (so they compose with candle code); these errors are
/// wrapped into `candle_core::Error` and keep their message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AttentionError {
    #[error("{block}: expected a rank-{expected} input {layout}, got shape {got:?}")]
    Rank {
        block: &'static str,
        expected: usize,
        layout: &'static str,
        got: Vec<usize>,
    },
    #[error("{block}: expected {expected} {what}, got {got} (input shape {shape:?})")]
    Size {
        block: &'static str,
        what: &'static str,
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    #[error("{block}: cannot attend over an empty {what} (input shape {shape:?})")]
    Empty {
        block: &'static str,
        what: &'static str,
        shape: Vec<usize>,
    },
}

impl From<AttentionError> for candle_core::Error {
    fn from(e: AttentionError) -> Self {
        candle_core::Error::wrap(e)
    }
}
