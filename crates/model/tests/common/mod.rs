//! The PyTorch fixtures written by `tests/reference/model/gen_fixtures.py`: where they are, and
//! loading one by case name (the loading itself is `fer_model::parity::Fixture`).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `Fixture::load(case)` by case name, for the tests that want a fixture's config.
pub struct Fixture;

impl Fixture {
    pub fn load(case: &str) -> fer_model::parity::Fixture {
        let path = fixture_path(&format!("{case}.safetensors"));
        fer_model::parity::Fixture::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }
}
