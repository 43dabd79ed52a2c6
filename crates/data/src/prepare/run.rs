//! The preparation run: decode, crop and resize on a thread pool, write shards atomically,
//! resume from valid shards, write the manifest last.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fast_image_resize::Resizer;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::listing::{Candidate, Listing, RowError, ValCarve, SPLITS};
use super::recorded::{Expect, Recorded};
use super::{PrepareConfig, Source};
use crate::checksum::Checksum;
use crate::crop::{self, BoxError};
use crate::manifest::{
    self, Manifest, ShardEntry, SkipReason, SkippedRow, SourceInfo, SplitSummary,
};
use crate::shard::{Shard, ShardData};
use crate::{atomic, decode, labels, Error, Result};

/// The options file that ties existing shards to the options that made them.
pub const OPTIONS_FILE: &str = "prepare-options.json";

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// Threads in the decoding pool.
    pub threads: usize,
    pub shards_written: usize,
    pub shards_reused: usize,
    /// Shards the last run's manifest recorded that were missing, cut short or whose content
    /// hash no longer matched: re-made from the source.
    pub shards_damaged: Vec<PathBuf>,
    /// Images decoded (attempts, including failures).
    pub images_decoded: usize,
    pub seconds: f64,
}

/// Everything that decides the shards' content; a change means existing shards are stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Options {
    format: String,
    source: SourceInfo,
    size: usize,
    margin: f64,
    num_classes: usize,
    shard_size: usize,
    val_fraction: f64,
    val_seed: u64,
    skip_unknown_classes: bool,
}

pub(super) fn run(
    source: &Source,
    listing: &Listing,
    val_carve: Option<ValCarve>,
    out: &Path,
    config: &PrepareConfig,
) -> Result<(Manifest, RunReport)> {
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| Error::Options(format!("cannot start {} threads: {e}", config.threads)))?;
    let mut report = RunReport {
        threads: pool.current_num_threads(),
        ..RunReport::default()
    };
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let options = Options {
        format: manifest::FORMAT.into(),
        source: source.info(),
        size: config.size,
        margin: config.margin,
        num_classes: config.num_classes,
        shard_size: config.shard_size,
        val_fraction: config.val_fraction,
        val_seed: config.val_seed,
        skip_unknown_classes: config.skip_unknown_classes,
    };
    let same_options = read_options(&out.join(OPTIONS_FILE)) == Some(options.clone());
    // From here on the folder is incomplete until the new manifest lands.
    let recorded = Recorded::set_aside(out, same_options)?;
    clean_split_dir(out, false)?;
    // A split the source does not have (a test split, usually) gets no folder; one left by an
    // earlier run of another source is removed.
    let present: Vec<bool> = listing.splits.iter().map(|s| s.rows > 0).collect();
    for (split, &here) in SPLITS.iter().zip(&present) {
        let dir = out.join(split);
        if here {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            clean_split_dir(&dir, !same_options)?;
        } else if dir.is_dir() {
            clean_split_dir(&dir, true)?;
            remove_stale_shards(&dir, &[])?;
            let _ = fs::remove_dir(&dir);
        }
    }
    let bytes = serde_json::to_vec_pretty(&options).expect("options serialise");
    atomic::write_atomic(&out.join(OPTIONS_FILE), &bytes)?;

    let total: usize = listing.splits.iter().map(|s| s.candidates.len()).sum();
    let bar = crate::progress::bar(
        config.progress,
        total as u64,
        "preparing",
        crate::progress::Unit::Items("images"),
    );
    let job = Job {
        size: config.size as u32,
        margin: config.margin,
        pool: &pool,
        bar: &bar,
    };
    let mut skipped: BTreeMap<SkipReason, Vec<SkippedRow>> = BTreeMap::new();
    let mut splits = BTreeMap::new();
    for (si, split) in SPLITS.iter().enumerate() {
        if !present[si] {
            continue;
        }
        let src = &listing.splits[si];
        let dir = out.join(split);
        let mut summary = SplitSummary {
            rows: src.rows,
            class_histogram: vec![0; config.num_classes],
            ..SplitSummary::default()
        };
        let mut split_skips = src.skipped.clone();
        let mut files = Vec::new();
        for (k, block) in src.candidates.chunks(config.shard_size).enumerate() {
            let file = format!("shard-{k:05}.safetensors");
            let path = dir.join(&file);
            let existing = open_existing(&path, recorded.expect(split, &file), &mut report);
            let reused = existing.and_then(|(shard, sum)| Some((job.reuse(&shard, block)?, sum)));
            let ((kept, failed), sum) = match reused {
                Some((r, sum)) => {
                    report.shards_reused += 1;
                    report.images_decoded += r.1.len();
                    (r, Some(sum))
                }
                None => {
                    report.images_decoded += block.len();
                    let (r, sum) = job.build(&path, block)?;
                    if !r.0.is_empty() {
                        report.shards_written += 1;
                    }
                    (r, sum)
                }
            };
            for (c, (reason, detail)) in failed {
                split_skips.push((
                    reason,
                    SkippedRow {
                        split: split.to_string(),
                        row: c.row,
                        path: c.name.clone(),
                        detail,
                    },
                ));
            }
            for c in &kept {
                match usize::try_from(c.expression) {
                    Ok(i) => summary.class_histogram[i] += 1,
                    Err(_) => summary.no_class += 1,
                }
                summary.with_va += usize::from(!c.valence.is_nan());
            }
            summary.kept += kept.len();
            if let Some((bytes, checksum)) = sum.filter(|_| !kept.is_empty()) {
                files.push(file.clone());
                summary.shards.push(ShardEntry {
                    file,
                    count: kept.len(),
                    bytes: Some(bytes),
                    checksum: Some(checksum),
                });
            }
        }
        summary.skipped = split_skips.len();
        for (reason, row) in split_skips {
            skipped.entry(reason).or_default().push(row);
        }
        remove_stale_shards(&dir, &files)?;
        splits.insert(split.to_string(), summary);
    }
    bar.finish_and_clear();
    for rows in skipped.values_mut() {
        rows.sort_by_key(|r| (SPLITS.iter().position(|s| *s == r.split), r.row));
    }
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        source: source.info(),
        image_size: config.size,
        margin: config.margin,
        num_classes: config.num_classes,
        class_names: labels::class_names(config.num_classes)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        class_map: listing.class_map.clone(),
        splits,
        split_origins: SPLITS
            .iter()
            .zip(&listing.origins)
            .zip(&present)
            .filter(|(_, &here)| here)
            .map(|((s, o), _)| (s.to_string(), o.clone()))
            .collect(),
        val_carve,
        skipped,
    };
    manifest.check().map_err(|reason| Error::Invalid {
        path: out.to_path_buf(),
        reason: format!("internal count mismatch: {reason}"),
    })?;
    manifest.save(&out.join(manifest::FILE_NAME))?;
    Recorded::discard(out)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok((manifest, report))
}

type Block<'a> = (Vec<&'a Candidate>, Vec<(&'a Candidate, RowError)>);

/// A shard file's size and content hash, as the manifest records them.
type FileSum = (u64, Checksum);

/// Opens an existing shard for reuse if `expect` allows, with its size and hash. One the last run
/// recorded but that is missing or no longer that file is noted as damaged.
fn open_existing(path: &Path, expect: Expect, report: &mut RunReport) -> Option<(Shard, FileSum)> {
    match expect {
        Expect::Rebuild => None,
        Expect::Structure => {
            let shard = Shard::open(path).ok()?;
            let sum = (shard.file_len(), shard.checksum());
            Some((shard, sum))
        }
        Expect::Entry(entry) => match Shard::open_checked(path, entry) {
            Ok(shard) => {
                let sum = (shard.file_len(), entry.checksum?);
                Some((shard, sum))
            }
            Err(_) => {
                report.shards_damaged.push(path.to_path_buf());
                None
            }
        },
    }
}

struct Job<'a> {
    size: u32,
    margin: f64,
    pool: &'a rayon::ThreadPool,
    bar: &'a ProgressBar,
}

impl Job<'_> {
    /// Decodes a block in parallel and writes its shard (or removes a stale one when nothing
    /// decoded), returning the written file's size and hash.
    fn build<'c>(
        &self,
        path: &Path,
        block: &'c [Candidate],
    ) -> Result<(Block<'c>, Option<FileSum>)> {
        let results: Vec<_> = self.pool.install(|| {
            block
                .par_iter()
                .map_init(Resizer::new, |rz, c| {
                    let r = load(c, self.margin, self.size, rz);
                    self.bar.inc(1);
                    r
                })
                .collect()
        });
        let mut data = ShardData::new(self.size as usize);
        let (mut kept, mut failed) = (Vec::new(), Vec::new());
        for (c, r) in block.iter().zip(results) {
            match r {
                Ok(chw) => {
                    data.push(&chw, c.expression, c.valence, c.arousal, c.row as i64);
                    kept.push(c);
                }
                Err(e) => failed.push((c, e)),
            }
        }
        let sum = if data.is_empty() {
            remove_if_exists(path)?;
            None
        } else {
            // Hashed from the bytes written, not read back: what the manifest records is what
            // preparation made.
            let bytes = data.to_bytes()?;
            atomic::write_atomic(path, &bytes)?;
            Some((bytes.len() as u64, Checksum::of(&bytes)))
        };
        Ok(((kept, failed), sum))
    }

    /// Keeps an existing shard if it holds exactly what `block` should produce: same size,
    /// same rows and labels, and every row it lacks still fails to load.
    fn reuse<'c>(&self, shard: &Shard, block: &'c [Candidate]) -> Option<Block<'c>> {
        if shard.size() != self.size as usize {
            return None;
        }
        let mut present = vec![false; block.len()];
        let index: HashMap<usize, usize> =
            block.iter().enumerate().map(|(i, c)| (c.row, i)).collect();
        let mut last = None;
        for j in 0..shard.len() {
            let i = *index.get(&usize::try_from(shard.source_row[j]).ok()?)?;
            let c = &block[i];
            let same = last.is_none_or(|l| i > l)
                && shard.expression[j] == c.expression
                && shard.valence[j].to_bits() == c.valence.to_bits()
                && shard.arousal[j].to_bits() == c.arousal.to_bits();
            if !same {
                return None;
            }
            present[i] = true;
            last = Some(i);
        }
        let missing: Vec<&Candidate> = block
            .iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(c, _)| c)
            .collect();
        let retried: Vec<_> = self.pool.install(|| {
            missing
                .par_iter()
                .map_init(Resizer::new, |rz, c| {
                    load(c, self.margin, self.size, rz).err()
                })
                .collect()
        });
        let mut failed = Vec::new();
        for (c, r) in missing.into_iter().zip(retried) {
            failed.push((c, r?));
        }
        self.bar.inc(block.len() as u64);
        let kept = block
            .iter()
            .zip(&present)
            .filter(|(_, p)| **p)
            .map(|(c, _)| c)
            .collect();
        Some((kept, failed))
    }
}

/// Reads, decodes, crops and resizes one candidate into CHW bytes.
pub fn load(
    c: &Candidate,
    margin: f64,
    size: u32,
    resizer: &mut Resizer,
) -> std::result::Result<Vec<u8>, RowError> {
    let rgb = decode::read_rgb(&c.file)?;
    let (w, h) = rgb.dimensions();
    let rect = match c.face {
        None => crop::whole(w, h),
        Some(face) => crop::square_crop(face, margin, w, h).map_err(|e| match e {
            BoxError::Outside => (
                SkipReason::BoxOutsideImage,
                format!(
                    "box x={} y={} w={} h={} outside the {w}x{h} image",
                    face.x, face.y, face.w, face.h
                ),
            ),
            BoxError::Degenerate => (
                SkipReason::MalformedRow,
                format!("box width {} or height {} not positive", face.w, face.h),
            ),
        })?,
    };
    Ok(crop::crop_resize_chw(
        resizer,
        rgb.as_raw(),
        w,
        h,
        rect,
        size,
    ))
}

fn read_options(path: &Path) -> Option<Options> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn is_shard_name(name: &str) -> bool {
    name.starts_with("shard-") && name.ends_with(".safetensors")
}

/// Removes temp files left by a killed run and, when `all_shards`, every shard (they were made
/// with other options).
fn clean_split_dir(dir: &Path, all_shards: bool) -> Result<()> {
    for path in entries(dir)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temp = name.starts_with('.') && name.contains(".tmp");
        if temp || (all_shards && is_shard_name(&name)) {
            remove_if_exists(&path)?;
        }
    }
    Ok(())
}

/// Removes shard files that are not part of this run's output (left by a larger earlier run).
fn remove_stale_shards(dir: &Path, keep: &[String]) -> Result<()> {
    for path in entries(dir)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if is_shard_name(&name) && !keep.iter().any(|k| *k == name) {
            remove_if_exists(&path)?;
        }
    }
    Ok(())
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    Ok(out)
}
