//! Sampling the rows of a split and writing them in either layout.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::{self, FilterType};
use image::{ImageEncoder, RgbImage};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;

use super::params::{sample_params, valence_arousal};
use super::render::{render, FaceBox, Rendered};
use super::rng::{item_rng, normal};
use super::{folder_class_name, Layout, SynthConfig, LABEL_NOISE, MIN_IMAGE_SIZE};
use crate::atomic::write_atomic;
use crate::labels::NO_VA;
use crate::{Error, Result};

/// AffectNet's CSV header, column for column.
pub const AFFECTNET_HEADER: [&str; 9] = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
];

/// Images per numbered sub folder, as AffectNet spreads its images over many folders.
const PER_SUBFOLDER: usize = 1000;

/// Threads that write files. Each write ends in an fsync, which blocks its thread, so a few
/// more writers than cores keep the drawing threads busy.
const WRITERS: usize = 8;

/// A file to write: its path and its bytes.
type Job = (PathBuf, Vec<u8>);

/// Runs `produce` (which queues files on the sender it gets) while [`WRITERS`] threads write the
/// queued files atomically. Returns the first error of either side, writers' errors first.
fn with_writers<T>(produce: impl FnOnce(&SyncSender<Job>) -> Result<T>) -> Result<T> {
    let (tx, rx) = sync_channel::<Job>(4 * WRITERS);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let job = rx.lock().map_err(|_| poisoned())?.recv();
                        match job {
                            Ok((path, bytes)) => write_atomic(&path, &bytes)?,
                            Err(_) => return Ok(()), // every sender is gone: all queued
                        }
                    }
                })
            })
            .collect();
        let produced = produce(&tx);
        drop(tx);
        for w in writers {
            w.join().map_err(|_| poisoned())??;
        }
        produced
    })
}

fn poisoned() -> Error {
    Error::Io {
        path: PathBuf::new(),
        source: std::io::Error::other("a file-writing thread panicked"),
    }
}

fn queue(tx: &SyncSender<Job>, path: PathBuf, bytes: Vec<u8>) -> Result<()> {
    tx.send((path, bytes)).map_err(|e| Error::Io {
        path: e.0 .0,
        source: std::io::Error::other("file writers stopped early"),
    })
}

/// Counts of one written split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SplitSummary {
    /// Rows (images) written.
    pub rows: usize,
    /// Rows per AffectNet code 0..=10.
    pub per_code: [usize; 11],
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SynthSummary {
    pub train: SplitSummary,
    pub val: SplitSummary,
}

#[derive(Clone, Copy)]
enum Split {
    Train,
    Val,
}

impl Split {
    fn stream(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Val => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// One drawn image and its labels.
struct Item {
    code: i64,
    rendered: Rendered,
    va: (f32, f32),
}

/// The shuffled codes of a split: `n` balanced over 0..=7 (or `per_class[c]` of code `c`), plus
/// about 2 % cycling over 8..=10 when `extras` is set.
fn split_codes(
    n: usize,
    per_class: Option<&[usize]>,
    extras: bool,
    seed: u64,
    split: Split,
) -> Vec<i64> {
    let mut codes: Vec<i64> = match per_class {
        Some(counts) => counts
            .iter()
            .enumerate()
            .flat_map(|(c, &k)| std::iter::repeat_n(c as i64, k))
            .collect(),
        None => (0..n).map(|i| (i % 8) as i64).collect(),
    };
    if extras {
        let extra = (codes.len() as f64 * 0.02).round() as usize;
        codes.extend((0..extra).map(|i| 8 + (i % 3) as i64));
    }
    codes.shuffle(&mut item_rng(seed, split.stream() + 100, 0));
    codes
}

fn draw(code: i64, seed: u64, split: Split, index: usize, size: u32) -> Item {
    let mut rng = item_rng(seed, split.stream(), index as u64);
    let params = sample_params(code, &mut rng);
    let rendered = render(&params, size);
    let va = if code == 9 || code == 10 {
        (NO_VA, NO_VA)
    } else {
        let (v, a) = valence_arousal(&params);
        let mut noisy = |x: f32| (x + LABEL_NOISE * normal(&mut rng)).clamp(-1.0, 1.0);
        (noisy(v), noisy(a))
    };
    Item { code, rendered, va }
}

fn encode_jpeg(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, 90)
        .encode_image(img)
        .map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: format!("JPEG encoding failed: {e}"),
        })?;
    Ok(buf)
}

fn encode_png(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    PngEncoder::new(&mut buf)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: format!("PNG encoding failed: {e}"),
        })?;
    Ok(buf.into_inner())
}

/// Writes the synthetic set described by `cfg` under `out` (see the module docs for the layout).
///
/// Images are drawn and written in parallel on the current rayon pool; each file is written
/// atomically. Existing files of the same names are replaced.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    if cfg.image_size < MIN_IMAGE_SIZE {
        return Err(Error::Invalid {
            path: out.to_path_buf(),
            reason: format!(
                "synthetic image size {} px is below the minimum of {MIN_IMAGE_SIZE} px",
                cfg.image_size
            ),
        });
    }
    if let Some(counts) = &cfg.train_class_counts {
        if counts.len() > 8 || counts.iter().sum::<usize>() == 0 {
            return Err(Error::Invalid {
                path: out.to_path_buf(),
                reason: format!(
                    "train_class_counts {counts:?}: give at most 8 counts (codes 0..=7), not all 0"
                ),
            });
        }
    }
    let extras = cfg.layout == Layout::AffectNet;
    let train_counts = cfg.train_class_counts.as_deref();
    let splits = [
        (
            Split::Train,
            split_codes(cfg.train, train_counts, extras, cfg.seed, Split::Train),
        ),
        (
            Split::Val,
            split_codes(cfg.val, None, extras, cfg.seed, Split::Val),
        ),
    ];
    let total = splits.iter().map(|s| s.1.len()).sum::<usize>() as u64;
    let pb = crate::progress::bar(
        true,
        total,
        "synthetic faces",
        crate::progress::Unit::Items("images"),
    );
    let mut summaries = Vec::new();
    for (split, codes) in &splits {
        let summary = match cfg.layout {
            Layout::AffectNet => write_affectnet_split(out, cfg, *split, codes, &pb)?,
            Layout::Folder => write_folder_split(out, cfg, *split, codes, &pb)?,
        };
        summaries.push(summary);
    }
    pb.finish_and_clear();
    let val = summaries.pop().unwrap_or_default();
    let train = summaries.pop().unwrap_or_default();
    Ok(SynthSummary { train, val })
}

fn count(codes: &[i64]) -> SplitSummary {
    let mut per_code = [0; 11];
    for &c in codes {
        per_code[c as usize] += 1;
    }
    SplitSummary {
        rows: codes.len(),
        per_code,
    }
}

fn write_affectnet_split(
    out: &Path,
    cfg: &SynthConfig,
    split: Split,
    codes: &[i64],
    pb: &ProgressBar,
) -> Result<SplitSummary> {
    let images = out.join("Manually_Annotated_Images");
    let rows: Vec<[String; 9]> = with_writers(|tx| {
        codes
            .par_iter()
            .enumerate()
            .map_with(tx.clone(), |tx, (i, &code)| {
                let item = draw(code, cfg.seed, split, i, cfg.image_size);
                let rel = format!("{}/{}_{i:06}.jpg", 1 + i / PER_SUBFOLDER, split.name());
                let path = images.join(&rel);
                let bytes = encode_jpeg(&item.rendered.image, &path)?;
                queue(tx, path, bytes)?;
                pb.inc(1);
                Ok(csv_row(rel, &item))
            })
            .collect::<Result<_>>()
    })?;
    let file = match split {
        Split::Train => "training.csv",
        Split::Val => "validation.csv",
    };
    let path = out.join("Manually_Annotated_file_lists").join(file);
    let csv_err = |e: csv::Error| Error::Invalid {
        path: path.clone(),
        reason: format!("writing CSV: {e}"),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(AFFECTNET_HEADER).map_err(csv_err)?;
    for row in &rows {
        w.write_record(row).map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Invalid {
        path: path.clone(),
        reason: format!("writing CSV: {e}"),
    })?;
    write_atomic(&path, &bytes)?;
    Ok(count(codes))
}

fn csv_row(rel: String, item: &Item) -> [String; 9] {
    let FaceBox {
        x,
        y,
        width,
        height,
    } = item.rendered.face_box;
    let landmarks = item
        .rendered
        .landmarks
        .iter()
        .map(|[x, y]| format!("{x:.2};{y:.2}"))
        .collect::<Vec<_>>()
        .join(";");
    let label = |v: f32| {
        if v == NO_VA {
            "-2".to_string()
        } else {
            format!("{v:.6}")
        }
    };
    [
        rel,
        x.to_string(),
        y.to_string(),
        width.to_string(),
        height.to_string(),
        landmarks,
        item.code.to_string(),
        label(item.va.0),
        label(item.va.1),
    ]
}

fn write_folder_split(
    out: &Path,
    cfg: &SynthConfig,
    split: Split,
    codes: &[i64],
    pb: &ProgressBar,
) -> Result<SplitSummary> {
    let dir = out.join(match split {
        Split::Train => "train",
        Split::Val => "test",
    });
    let side = (cfg.image_size / 2).max(1);
    with_writers(|tx| {
        codes
            .par_iter()
            .enumerate()
            .map_with(tx.clone(), |tx, (i, &code)| {
                let item = draw(code, cfg.seed, split, i, cfg.image_size);
                let b = item.rendered.face_box;
                let crop = imageops::crop_imm(&item.rendered.image, b.x, b.y, b.width, b.height);
                let face = imageops::resize(&crop.to_image(), side, side, FilterType::Triangle);
                let name = folder_class_name(code).unwrap_or("unknown");
                let path = dir.join(name).join(format!("{i}.png"));
                let bytes = encode_png(&face, &path)?;
                queue(tx, path, bytes)?;
                pb.inc(1);
                Ok(())
            })
            .collect::<Result<()>>()
    })?;
    Ok(count(codes))
}
