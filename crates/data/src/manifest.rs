//! `manifest.json`: what a prepared dataset holds and what was left out of it, and why.
//!
//! It is written last by [`crate::prepare`], so a folder with a manifest is complete.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::{atomic, Error, Result};

/// Format tag stored in every manifest.
pub const FORMAT: &str = "fer-prepared-v3";

/// The format before shard checksums: loads, but its shards cannot be verified. Still read.
pub const FORMAT_V2: &str = "fer-prepared-v2";

/// The format before the train/val/test roles: `val` may be the source's test set. Still read.
pub const FORMAT_V1: &str = "fer-prepared-v1";

/// The file name of the manifest inside a prepared folder.
pub const FILE_NAME: &str = "manifest.json";

/// Why a source row did not make it into a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SkipReason {
    #[serde(rename = "missing file")]
    MissingFile,
    #[serde(rename = "unreadable file")]
    UnreadableFile,
    #[serde(rename = "undecodable image")]
    UndecodableImage,
    /// Over the decoding limits of [`crate::decode`] (a decompression bomb, or a huge picture).
    #[serde(rename = "image too large")]
    ImageTooLarge,
    #[serde(rename = "box outside image")]
    BoxOutsideImage,
    #[serde(rename = "malformed row")]
    MalformedRow,
    #[serde(rename = "label out of range")]
    LabelOutOfRange,
    #[serde(rename = "no usable label")]
    NoUsableLabel,
    #[serde(rename = "unknown class folder")]
    UnknownClassFolder,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MissingFile => "missing file",
            SkipReason::UnreadableFile => "unreadable file",
            SkipReason::UndecodableImage => "undecodable image",
            SkipReason::ImageTooLarge => "image too large",
            SkipReason::BoxOutsideImage => "box outside image",
            SkipReason::MalformedRow => "malformed row",
            SkipReason::LabelOutOfRange => "label out of range",
            SkipReason::NoUsableLabel => "no usable label",
            SkipReason::UnknownClassFolder => "unknown class folder",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One skipped source row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedRow {
    /// `train`, `val` or `test`.
    pub split: String,
    /// 0-based data row of the source list (header excluded); for folder sources, the index in
    /// the split's sorted file list. A carved `val` split's rows are rows of the training list.
    pub row: usize,
    /// The image path as written in the source (relative to the image root).
    pub path: String,
    /// Details of the failure (the decoder's message, the offending field, ...).
    pub detail: String,
}

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the split folder.
    pub file: String,
    pub count: usize,
    /// File size in bytes (from v3 on): a cut-off file is refused without reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Content hash of the whole file (from v3 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// Data rows (or files) read from the source.
    pub rows: usize,
    pub kept: usize,
    pub skipped: usize,
    /// Kept samples per class index (`class_names` order).
    pub class_histogram: Vec<usize>,
    /// Kept samples without a class (valence/arousal only).
    pub no_class: usize,
    /// Kept samples with valence and arousal.
    pub with_va: usize,
    pub shards: Vec<ShardEntry>,
}

/// Where the data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `affectnet`, `folder` or `csv`.
    pub kind: String,
    /// The AffectNet root, the folder root, or the CSV file.
    pub path: PathBuf,
    /// The image root of a CSV source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub source: SourceInfo,
    pub image_size: usize,
    pub margin: f64,
    pub num_classes: usize,
    pub class_names: Vec<String>,
    /// Folder name (or CSV label name) -> AffectNet code, for sources labelled by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub class_map: BTreeMap<String, i64>,
    /// `train`, `val` and, when the source has one, `test`.
    pub splits: BTreeMap<String, SplitSummary>,
    /// Where each split came from, in words (empty in a v1 manifest).
    #[serde(default)]
    pub split_origins: BTreeMap<String, String>,
    /// How `val` was carved from the training rows; `None` when the source had its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_carve: Option<crate::prepare::ValCarve>,
    /// Every skipped row, grouped by reason.
    pub skipped: BTreeMap<SkipReason, Vec<SkippedRow>>,
}

/// The sum of `counts`, `None` past `usize::MAX`.
fn checked_total(counts: impl IntoIterator<Item = usize>) -> Option<usize> {
    counts.into_iter().try_fold(0usize, usize::checked_add)
}

fn shown(total: Option<usize>) -> String {
    total.map_or_else(|| format!("more than {}", usize::MAX), |t| t.to_string())
}

impl Manifest {
    /// Reads and checks a manifest.
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a valid manifest: {e}"),
        })?;
        if ![FORMAT, FORMAT_V2, FORMAT_V1].contains(&m.format.as_str()) {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                reason: format!("manifest format `{}`, expected `{FORMAT}`", m.format),
            });
        }
        m.check().map_err(|reason| Error::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(m)
    }

    /// Writes the manifest atomically as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        atomic::write_atomic(path, &bytes)
    }

    /// Checks that the counts add up: kept + skipped = rows, the shards hold the kept samples,
    /// the histogram covers them, and the skip lists match the per-split counts; from v3 on,
    /// every shard has its size and checksum.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, s) in &self.splits {
            if let Some(e) = s
                .shards
                .iter()
                .find(|e| self.has_checksums() && (e.bytes.is_none() || e.checksum.is_none()))
            {
                return Err(format!(
                    "split {name}: shard {} has no size or checksum, which a {FORMAT} manifest \
                     records for every shard",
                    e.file
                ));
            }
            // The counts come from the file: checked sums, so a count near usize::MAX is a
            // mismatch rather than an overflow (a panic, or a wrapped sum that matches).
            if s.kept.checked_add(s.skipped) != Some(s.rows) {
                return Err(format!(
                    "split {name}: kept {} + skipped {} != rows {}",
                    s.kept, s.skipped, s.rows
                ));
            }
            let in_shards = checked_total(s.shards.iter().map(|e| e.count));
            if in_shards != Some(s.kept) {
                return Err(format!(
                    "split {name}: shards hold {}, kept {}",
                    shown(in_shards),
                    s.kept
                ));
            }
            let classed = checked_total(s.class_histogram.iter().copied());
            if classed.and_then(|c| c.checked_add(s.no_class)) != Some(s.kept) {
                return Err(format!(
                    "split {name}: histogram {} + no class {} != kept {}",
                    shown(classed),
                    s.no_class,
                    s.kept
                ));
            }
            let listed = self
                .skipped
                .values()
                .flatten()
                .filter(|r| &r.split == name)
                .count();
            if listed != s.skipped {
                return Err(format!(
                    "split {name}: {listed} skipped rows listed, {} counted",
                    s.skipped
                ));
            }
        }
        Ok(())
    }

    /// True for a manifest written before the train/val/test roles: its `val` split may be the
    /// source's test set, so numbers chosen on it are not held-out numbers.
    pub fn is_legacy(&self) -> bool {
        self.format == FORMAT_V1
    }

    /// Whether every shard's size and content hash are recorded (v3 on); older manifests load,
    /// but their shards cannot be verified.
    pub fn has_checksums(&self) -> bool {
        self.format == FORMAT
    }

    /// Whether the dataset has a `test` split.
    pub fn has_test(&self) -> bool {
        self.splits.get("test").is_some_and(|s| s.kept > 0)
    }

    /// Number of skipped rows for `reason` (all splits).
    pub fn skipped_count(&self, reason: SkipReason) -> usize {
        self.skipped.get(&reason).map_or(0, Vec::len)
    }

    /// The shard paths of `split`, given the prepared folder `root`.
    pub fn shard_paths(&self, root: &Path, split: &str) -> Vec<PathBuf> {
        self.splits.get(split).map_or_else(Vec::new, |s| {
            s.shards
                .iter()
                .map(|e| root.join(split).join(&e.file))
                .collect()
        })
    }
}
