//! The trainer's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while training, evaluating or predicting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    #[error("{0}")]
    NonFinite(String),
    #[error("{0}")]
    Checkpoint(String),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Dataset(#[from] fer_data::Error),
    #[error(transparent)]
    Model(#[from] fer_model::Error),
    #[error(transparent)]
    Loss(#[from] fer_losses::LossError),
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("data-parallel run: {0}")]
    Distributed(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
