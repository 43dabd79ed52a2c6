//! Atomic file writes ([`fer_atomic`]) with fer-data's error type.

use std::fs;
use std::path::Path;

pub use fer_atomic::temp_path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically, creating parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    fer_atomic::write(path, bytes).map_err(from)
}

/// Like [`write_atomic`], for writers that stream into the file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    fer_atomic::write_with(path, fill).map_err(from)
}

fn from(e: fer_atomic::Error) -> Error {
    Error::io(e.path, e.source)
}
