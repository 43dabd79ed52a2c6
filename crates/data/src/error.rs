//! The one error type of `fer-data`.

use std::path::PathBuf;

/// Everything that can go wrong while reading, preparing or loading data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid shard: {reason}")]
    BadShard { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A shard that is not what the manifest recorded: its content hash differs.
    #[error(
        "{path}: damaged shard: its content hash is {actual} but the manifest records {expected}; \
         re-run prepare-data, which re-makes only the bad shards"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: crate::checksum::Checksum,
        actual: crate::checksum::Checksum,
    },
    /// A shard that is missing, cut short or holds another count than the manifest says.
    #[error("{path}: {reason}; re-run prepare-data, which re-makes only the bad shards")]
    Damaged { path: PathBuf, reason: String },
    #[error("invalid loader configuration: {0}")]
    Config(String),
    #[error("data loader: {0}")]
    Loader(String),
    #[error("invalid preparation options: {0}")]
    Options(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns, so every message names its file.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
