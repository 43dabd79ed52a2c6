//! What the harnesses share: a scratch folder for the readers that only take a path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A per-process scratch folder (under the system temp folder), created once.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fer-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Writes `bytes` to `name` inside the scratch folder and returns its path. The readers under
/// test take paths; the file is rewritten on every input, which costs microseconds.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch subfolder");
    }
    std::fs::write(&path, bytes).expect("scratch file");
    path
}
