//! Data side of 2Att-2Mt: synthetic faces, AffectNet / folder / CSV readers, safetensors shards,
//! and the training loader.
//!
//! The path every dataset takes: a source layout (AffectNet CSVs, an image folder per class, or a
//! plain CSV) is read into rows, [`prepare`] crops and resizes each face and writes
//! [`shard`]s plus a manifest, and the [`loader`] memory-maps the shards and yields batches of
//! candle tensors.

pub mod atomic;
pub mod checksum;
pub mod error;
pub mod shard;

pub mod affectnet;
pub mod augment;
pub mod crop;
pub mod decode;
pub mod folder;
pub mod integrity;
pub mod labels;
pub mod loader;
pub mod manifest;
pub mod plain_csv;
pub mod prepare;
pub mod progress;
pub mod synth;

pub use error::{Error, Result};
