//! A prepared folder checked against its manifest: which shards a split must have, and whether
//! each one is the file that preparation wrote (size, content hash, count, labels).
//!
//! The loader runs [`expected_shards`] and [`Shard::open_checked`] on every open;
//! `cargo xtask verify-data` runs [`check_shard`], [`compare_split`] and [`unlisted_shards`]
//! over a whole folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::checksum::Checksum;
use crate::loader::Label;
use crate::manifest::{self, Manifest, ShardEntry, SplitSummary};
use crate::shard::{list_shards, Shard};
use crate::{Error, Result};

/// The shards to open for `split_dir`, each with its manifest entry when the folder above it
/// holds a manifest (`split_dir/../manifest.json`); without one (a bare folder of shards) every
/// shard file, unchecked.
///
/// With a manifest, the split must be in it and the folder must hold no shard file the manifest
/// does not list; a manifest without checksums (before v3) prints a note, once per process.
pub fn expected_shards(split_dir: &Path) -> Result<Vec<(PathBuf, Option<ShardEntry>)>> {
    let root = split_dir.parent().unwrap_or(Path::new(""));
    let manifest_path = root.join(manifest::FILE_NAME);
    if !manifest_path.is_file() {
        return Ok(list_shards(split_dir)?
            .into_iter()
            .map(|p| (p, None))
            .collect());
    }
    let m = Manifest::load(&manifest_path)?;
    let name = split_dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let split = m.splits.get(&name).ok_or_else(|| Error::Invalid {
        path: split_dir.to_path_buf(),
        reason: format!(
            "{} has no `{name}` split; re-run prepare-data",
            manifest_path.display()
        ),
    })?;
    if let Some(note) = unverified_note(root, &m) {
        static NOTE: Once = Once::new();
        NOTE.call_once(|| eprintln!("note: {note}"));
    }
    if let Some(extra) = unlisted(split_dir, split)?.into_iter().next() {
        return Err(unlisted_error(&extra));
    }
    Ok(split
        .shards
        .iter()
        .map(|e| (split_dir.join(&e.file), Some(e.clone())))
        .collect())
}

/// What to tell the user about a manifest whose shards cannot be verified; `None` from v3 on.
pub fn unverified_note(root: &Path, m: &Manifest) -> Option<String> {
    (!m.has_checksums()).then(|| {
        format!(
            "{} was prepared as {}, without shard checksums: a damaged shard cannot be told \
             from a good one; re-run prepare-data to record them",
            root.display(),
            m.format
        )
    })
}

/// What one shard holds, counted as the manifest counts a split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub samples: usize,
    /// Samples per class index.
    pub class_histogram: Vec<usize>,
    pub no_class: usize,
    pub with_va: usize,
    /// The verified content hash; `None` when the manifest records none.
    pub checksum: Option<Checksum>,
}

impl ShardStats {
    /// Adds another shard's counts (for a split's totals).
    pub fn add(&mut self, other: &ShardStats) {
        self.samples += other.samples;
        if self.class_histogram.len() < other.class_histogram.len() {
            self.class_histogram.resize(other.class_histogram.len(), 0);
        }
        for (a, b) in self.class_histogram.iter_mut().zip(&other.class_histogram) {
            *a += b;
        }
        self.no_class += other.no_class;
        self.with_va += other.with_va;
    }
}

/// Checks one shard of `split` in the prepared folder `root` against its manifest entry: present,
/// size, content hash, count, then each sample's labels (a class below `num_classes` or none,
/// valence and arousal finite or missing).
pub fn check_shard(
    root: &Path,
    split: &str,
    entry: &ShardEntry,
    num_classes: usize,
) -> Result<ShardStats> {
    let path = root.join(split).join(&entry.file);
    let shard = Shard::open_checked(&path, entry)?;
    let mut stats = ShardStats {
        samples: shard.len(),
        class_histogram: vec![0; num_classes],
        checksum: entry.checksum,
        ..ShardStats::default()
    };
    for i in 0..shard.len() {
        let label = Label::of(&shard, i);
        let bad = |reason: String| Error::Damaged {
            path: path.clone(),
            reason: format!(
                "damaged shard: sample {i} (source row {}): {reason}",
                label.source_row
            ),
        };
        crate::loader::check_label(&label).map_err(bad)?;
        match usize::try_from(label.expression) {
            Ok(c) => {
                *stats
                    .class_histogram
                    .get_mut(c)
                    .ok_or_else(|| bad(format!("class {c}, but the set has {num_classes}")))? += 1
            }
            Err(_) => stats.no_class += 1,
        }
        // The manifest counts a sample with valence as a valence/arousal one (preparation keeps
        // the two together).
        stats.with_va += usize::from(!label.valence.is_nan());
    }
    Ok(stats)
}

/// The differences between a split's manifest counts and what its shards hold, in words.
pub fn compare_split(name: &str, summary: &SplitSummary, found: &ShardStats) -> Vec<String> {
    let mut problems = Vec::new();
    let mut differs = |what: &str, recorded: String, held: String| {
        if recorded != held {
            problems.push(format!(
                "split {name}: the manifest records {what} {recorded}, the shards hold {held}"
            ));
        }
    };
    differs("kept", summary.kept.to_string(), found.samples.to_string());
    differs(
        "class histogram",
        format!("{:?}", summary.class_histogram),
        format!("{:?}", found.class_histogram),
    );
    differs(
        "no class",
        summary.no_class.to_string(),
        found.no_class.to_string(),
    );
    differs(
        "with valence/arousal",
        summary.with_va.to_string(),
        found.with_va.to_string(),
    );
    problems
}

/// Shard files in the split folders of `root` that the manifest does not list.
pub fn unlisted_shards(root: &Path, m: &Manifest) -> Result<Vec<PathBuf>> {
    let mut extra = Vec::new();
    for (name, split) in &m.splits {
        let dir = root.join(name);
        if dir.is_dir() {
            extra.extend(unlisted(&dir, split)?);
        }
    }
    Ok(extra)
}

/// The error for a shard file the manifest does not list.
pub fn unlisted_error(path: &Path) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        reason: "a shard file the manifest does not list (it would be trained on unaccounted); \
                 remove it, or re-run prepare-data, which removes leftover shard-*.safetensors"
            .into(),
    }
}

fn unlisted(dir: &Path, split: &SplitSummary) -> Result<Vec<PathBuf>> {
    let listed: BTreeSet<&str> = split.shards.iter().map(|e| e.file.as_str()).collect();
    Ok(list_shards(dir)?
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !listed.contains(name.as_ref())
        })
        .collect())
}
