use thiserror::Error;

/// Invalid input given to the bidirectional RNN.
///
/// `BiRnn` returns `candle_core::Result` (so it composes with candle code); these errors are
/// wrapped into `candle_core::Error` and keep their message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BiRnnError {
    #[error("BiRnn: expected a rank-3 input [B, L, d], got shape {got:?}")]
    Rank { got: Vec<usize> },
    #[error("BiRnn: expected {expected} input features, got {got} (input shape {shape:?})")]
    Features {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },
    #[error("BiRnn: cannot run over an empty sequence (input shape {shape:?})")]
    Empty { shape: Vec<usize> },
}

impl From<BiRnnError> for candle_core::Error {
    fn from(e: BiRnnError) -> Self {
        candle_core::Error::wrap(e)
    }
}
