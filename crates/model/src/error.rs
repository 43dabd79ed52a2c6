use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape error, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The model configuration is not usable; the message names the field.
    #[error("invalid model config: {0}")]
    Config(String),

    /// A config file could not be parsed.
    #[error("{path}: cannot parse model config: {msg}")]
    ConfigParse { path: PathBuf, msg: String },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file is malformed or does not fit the model it is loaded into.
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// A weight file to import is not a usable ResNet state dict.
    #[error("{path}: {msg}")]
    Import { path: PathBuf, msg: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
