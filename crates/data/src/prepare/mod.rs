//! Dataset preparation: read a source, crop and resize every face, write shards and a manifest.
//!
//! ```text
//! OUT/
//!   prepare-options.json      the options the shards were made with (for resuming)
//!   train/shard-00000.safetensors ...
//!   val/shard-00000.safetensors ...
//!   test/shard-00000.safetensors ...    only when the source has a test split
//!   manifest.json             written last: its presence means the folder is complete
//!   manifest.previous.json    the last run's manifest, only while a rerun is in progress
//! ```
//!
//! The three splits have three roles, never mixed: `train` fits, `val` takes every decision and
//! `test` is evaluated once at the end. A source without a validation split of its own gets one
//! carved from its training rows ([`Listing::carve_val`]: stratified by class, seeded); the
//! manifest says where each split came from.
//!
//! The candidates of a split (rows whose labels are valid) are cut into consecutive blocks of
//! `shard_size`; block `k` becomes `shard-k`, holding the rows of that block whose image decoded,
//! in row order. A shard can thus hold fewer than `shard_size` samples, and a block in which
//! every image failed writes no file. The output depends only on the source and the options,
//! never on the thread count.
//!
//! A rerun with the same options keeps every shard that opens, has the right image size and
//! holds exactly the rows and labels its block should (the rows it lacks are re-tried, and must
//! fail again) and that is still the file the last complete run recorded: same size and content
//! hash. Anything else is rebuilt, so rerunning re-makes exactly the damaged or missing shards.
//! With different options all shards are rebuilt.

pub mod listing;
mod recorded;
mod run;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, SourceInfo};
use crate::{affectnet, folder, plain_csv, Error, Result};

pub use crate::decode::decode_rgb;
pub use listing::{carve_key, stratum_quotas, Candidate, Listing, SplitListing, ValCarve, SPLITS};
pub use recorded::PREVIOUS_FILE;
pub use run::{load, RunReport};

/// Where to read a dataset from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// An AffectNet tree (see [`crate::affectnet`]).
    AffectNet { root: PathBuf },
    /// An image folder per class (see [`crate::folder`]).
    Folder { root: PathBuf },
    /// A plain CSV and its image root (see [`crate::plain_csv`]).
    Csv { file: PathBuf, images: PathBuf },
}

impl Source {
    /// The manifest's description of the source.
    pub fn info(&self) -> SourceInfo {
        let (kind, path, images) = match self {
            Source::AffectNet { root } => ("affectnet", root, None),
            Source::Folder { root } => ("folder", root, None),
            Source::Csv { file, images } => ("csv", file, Some(images.clone())),
        };
        SourceInfo {
            kind: kind.into(),
            path: path.clone(),
            images,
        }
    }

    /// Reads the source's lists into candidates and skipped rows.
    pub fn read(&self, config: &PrepareConfig) -> Result<Listing> {
        match self {
            Source::AffectNet { root } => affectnet::read(root, config.num_classes),
            Source::Folder { root } => {
                folder::read(root, config.num_classes, config.skip_unknown_classes)
            }
            Source::Csv { file, images } => plain_csv::read(file, images, config.num_classes),
        }
    }
}

/// Preparation options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepareConfig {
    /// Output side `S` in pixels.
    pub size: usize,
    /// Box growth on each side, as a fraction of the box size (see [`crate::crop`]).
    pub margin: f64,
    /// 8 (all AffectNet classes) or 7 (Contempt dropped to "no class").
    pub num_classes: usize,
    /// Candidate rows per shard.
    pub shard_size: usize,
    /// Decoding threads; 0 = one per core.
    pub threads: usize,
    /// When the source has no validation split: the share of each class's training rows carved
    /// into `val`.
    pub val_fraction: f64,
    /// Seeds which training rows are carved into `val`.
    pub val_seed: u64,
    /// Count images in unknown class folders as skipped instead of failing.
    pub skip_unknown_classes: bool,
    /// Show a progress bar (only ever drawn on a terminal).
    pub progress: bool,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        PrepareConfig {
            size: 224,
            margin: 0.1,
            num_classes: 8,
            shard_size: 1024,
            threads: 0,
            val_fraction: 0.1,
            val_seed: 0,
            skip_unknown_classes: false,
            progress: false,
        }
    }
}

impl PrepareConfig {
    /// Rejects options that cannot produce a dataset.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Options(m));
        if self.size == 0 || self.size > 4096 {
            return bad(format!("size {} must be in 1..=4096", self.size));
        }
        if !(self.margin.is_finite() && (0.0..=4.0).contains(&self.margin)) {
            return bad(format!("margin {} must be in [0, 4]", self.margin));
        }
        if !matches!(self.num_classes, 7 | 8) {
            return bad(format!("classes {} must be 7 or 8", self.num_classes));
        }
        if self.shard_size == 0 {
            return bad("shard size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.val_fraction) {
            return bad(format!(
                "val fraction {} must be in [0, 1]",
                self.val_fraction
            ));
        }
        Ok(())
    }
}

/// Prepares `source` into `out` and returns the manifest (also written to
/// `out/manifest.json`).
///
/// ```
/// use fer_data::prepare::{prepare, PrepareConfig, Source};
///
/// let dir = tempfile::tempdir().unwrap();
/// // A tiny folder dataset: train/happy/a.png, val/sad/a.png and test/fear/a.png.
/// for (split, class) in [("train", "happy"), ("val", "sad"), ("test", "fear")] {
///     let d = dir.path().join("faces").join(split).join(class);
///     std::fs::create_dir_all(&d).unwrap();
///     image::RgbImage::from_pixel(20, 20, image::Rgb([200, 120, 90]))
///         .save(d.join("a.png"))
///         .unwrap();
/// }
/// let source = Source::Folder { root: dir.path().join("faces") };
/// let config = PrepareConfig { size: 8, ..PrepareConfig::default() };
/// let m = prepare(&source, &dir.path().join("out"), &config).unwrap();
/// assert_eq!(m.splits["train"].kept, 1);
/// assert_eq!(m.splits["val"].class_histogram[2], 1); // Sad
/// assert_eq!(m.splits["test"].class_histogram[4], 1); // Fear
/// assert_eq!(m.class_map["happy"], 1);
/// assert!(m.val_carve.is_none()); // the source had its own val/
/// assert_eq!(m.split_origins["test"], "the test/ folder");
/// ```
pub fn prepare(source: &Source, out: &Path, config: &PrepareConfig) -> Result<Manifest> {
    Ok(prepare_with_report(source, out, config)?.0)
}

/// [`prepare`], also returning what this run did (shards written or reused, threads, time).
pub fn prepare_with_report(
    source: &Source,
    out: &Path,
    config: &PrepareConfig,
) -> Result<(Manifest, RunReport)> {
    config.validate()?;
    let mut listing = source.read(config)?;
    let carve = listing.carve_val(config.val_fraction, config.val_seed)?;
    run::run(source, &listing, carve, out, config)
}

/// Opens the manifest of a prepared folder.
pub fn load_manifest(out: &Path) -> Result<Manifest> {
    Manifest::load(&out.join(crate::manifest::FILE_NAME))
}
