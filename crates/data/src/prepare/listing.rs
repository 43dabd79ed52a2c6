//! What every reader produces: per split, the rows worth decoding and the rows already skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crop::FaceBox;
use crate::labels;
use crate::manifest::{SkipReason, SkippedRow};
use crate::{Error, Result};

/// The three output splits, in output order: `train` fits, `val` takes every decision (best
/// epoch, early stopping, tuning), `test` is evaluated once at the end.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// A row whose labels are valid; its image still has to be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// 0-based data row in the source list (stored as `source_row`).
    pub row: usize,
    /// The path as written in the source, for messages and the manifest.
    pub name: String,
    /// The file to decode.
    pub file: PathBuf,
    /// `None`: the whole image is the face.
    pub face: Option<FaceBox>,
    /// Class index, -1 = none.
    pub expression: i64,
    /// NaN = none.
    pub valence: f32,
    pub arousal: f32,
}

/// One split of a source, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitListing {
    /// Data rows (or files) read.
    pub rows: usize,
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<(SkipReason, SkippedRow)>,
}

impl SplitListing {
    pub fn skip(
        &mut self,
        split: &str,
        row: usize,
        path: &str,
        reason: SkipReason,
        detail: String,
    ) {
        self.skipped.push((
            reason,
            SkippedRow {
                split: split.to_string(),
                row,
                path: path.to_string(),
                detail,
            },
        ));
    }
}

/// A whole source, as read: `train`, `val` and `test` ([`SPLITS`] order). A source without a
/// validation split of its own leaves `val` empty ([`Listing::carve_val`] fills it); one
/// without a test split leaves `test` empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub splits: [SplitListing; 3],
    /// Where each split's rows come from in the source, in words (for the manifest).
    pub origins: [String; 3],
    /// Name -> code mapping used for name-labelled sources.
    pub class_map: BTreeMap<String, i64>,
}

/// How a validation split was carved from the training rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValCarve {
    /// The share of each class's training candidates moved to `val` (rounded per class).
    pub fraction: f64,
    /// Seeds which candidates are chosen.
    pub seed: u64,
}

impl Listing {
    /// Moves a stratified, seeded share of the training candidates into `val`, when the source
    /// gave no validation rows; returns what was done (`None` when `val` came from the source).
    ///
    /// `round(fraction * n)` of the `n` training candidates go to `val`, shared among the classes
    /// (candidates without a class form one more group) in proportion to their size (largest
    /// remainders: each class gets its share rounded down or up). Within a class the candidates
    /// are ranked by a seeded hash of their source name and the first ones go. The choice depends only on the names, the classes, the fraction and the seed:
    /// not on the listing order, the thread count or earlier runs. Candidates keep their source
    /// row; a carved `val` row is a row of the training list.
    pub fn carve_val(&mut self, fraction: f64, seed: u64) -> Result<Option<ValCarve>> {
        if self.splits[0].rows == 0 {
            return Err(Error::Options(
                "the source has no training rows (every row is a val or test row)".into(),
            ));
        }
        if self.splits[1].rows > 0 {
            return Ok(None);
        }
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::Options(format!(
                "the source has no validation split and --val-fraction is {fraction}: \
                 give a fraction in (0, 1) to carve one from training"
            )));
        }
        let train = std::mem::take(&mut self.splits[0].candidates);
        let mut by_class: BTreeMap<i64, Vec<(f64, usize)>> = BTreeMap::new();
        for (i, c) in train.iter().enumerate() {
            by_class
                .entry(c.expression)
                .or_default()
                .push((carve_key(seed, &c.name), i));
        }
        let quotas = stratum_quotas(
            &by_class.values().map(Vec::len).collect::<Vec<_>>(),
            fraction,
        );
        let mut to_val = vec![false; train.len()];
        for (members, take) in by_class.values_mut().zip(quotas) {
            // Ties (equal keys) fall back to the listing position, so the order is total.
            members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(_, i) in &members[..take] {
                to_val[i] = true;
            }
        }
        let (mut kept, mut carved) = (Vec::new(), Vec::new());
        for (c, v) in train.into_iter().zip(to_val) {
            if v {
                carved.push(c);
            } else {
                kept.push(c);
            }
        }
        if carved.is_empty() {
            let n = kept.len();
            self.splits[0].candidates = kept;
            return Err(Error::Options(format!(
                "--val-fraction {fraction} carves no validation sample from {n} training \
                 candidates: raise it"
            )));
        }
        self.splits[0].rows -= carved.len();
        self.splits[1].rows = carved.len();
        self.splits[0].candidates = kept;
        self.splits[1].candidates = carved;
        self.origins[1] = format!(
            "carved from the training rows: {:.1} % of each class, seed {seed}",
            100.0 * fraction
        );
        Ok(Some(ValCarve { fraction, seed }))
    }
}

/// Splits `round(fraction * total)` among strata of the given sizes: each gets
/// `floor(fraction * size)`, and the rest go one each to the largest remainders (earlier strata
/// first on ties).
pub fn stratum_quotas(sizes: &[usize], fraction: f64) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    let want = (fraction * total as f64).round() as usize;
    let exact: Vec<f64> = sizes.iter().map(|&n| fraction * n as f64).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut left = want.saturating_sub(quotas.iter().sum());
    for i in order {
        if left == 0 {
            break;
        }
        if quotas[i] < sizes[i] {
            quotas[i] += 1;
            left -= 1;
        }
    }
    quotas
}

/// The rank of a candidate in the carve: FNV-1a over the seed and the name, then a SplitMix64
/// finaliser, mapped to [0, 1) (std's hasher is not stable across Rust versions; the carve must
/// not change).
pub fn carve_key(seed: u64, name: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A CSV list opened for row-by-row reading: the header names (trimmed) and the reader.
pub struct CsvList {
    pub path: PathBuf,
    pub headers: Vec<String>,
    pub reader: csv::Reader<std::fs::File>,
}

impl CsvList {
    /// Opens `path`; a missing file or a missing header is an error naming the file. Rows may
    /// have any number of fields: a wrong count is a skipped row, not a failed run.
    pub fn open(path: &Path) -> Result<CsvList> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(file);
        let headers = reader.byte_headers().map_err(|e| csv_error(path, e))?;
        let headers: Vec<String> = headers
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .collect();
        if headers.iter().all(|h| h.is_empty()) {
            return Err(Error::Invalid {
                path: path.to_path_buf(),
                reason: "empty file: a header row is required".into(),
            });
        }
        Ok(CsvList {
            path: path.to_path_buf(),
            headers,
            reader,
        })
    }

    /// The index of a column (case-insensitive), if present.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
    }

    /// The index of a required column, or an error naming the file and the column.
    pub fn require(&self, name: &str) -> Result<usize> {
        self.find(name).ok_or_else(|| Error::Invalid {
            path: self.path.clone(),
            reason: format!(
                "missing column `{name}` (header: {})",
                self.headers.join(",")
            ),
        })
    }

    /// Calls `each(row, fields)` for every data row and returns the row count. A row with the
    /// wrong number of fields or invalid UTF-8 is passed as `Err(BadRecord)` instead.
    pub fn for_each_row(
        mut self,
        mut each: impl FnMut(usize, std::result::Result<&[&str], BadRecord>),
    ) -> Result<usize> {
        let expected = self.headers.len();
        let mut record = csv::ByteRecord::new();
        let mut row = 0;
        loop {
            match self.reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) if e.is_io_error() => return Err(csv_error(&self.path, e)),
                Err(e) => {
                    each(
                        row,
                        Err(BadRecord::new("", format!("unreadable CSV record: {e}"))),
                    );
                    row += 1;
                    continue;
                }
            }
            let first = String::from_utf8_lossy(record.get(0).unwrap_or_default()).into_owned();
            let fields: std::result::Result<Vec<&str>, _> =
                record.iter().map(std::str::from_utf8).collect();
            match fields {
                Err(_) => each(
                    row,
                    Err(BadRecord::new(&first, "field is not valid UTF-8".into())),
                ),
                Ok(f) if f.len() != expected => each(
                    row,
                    Err(BadRecord::new(
                        &first,
                        format!("expected {expected} fields, found {}", f.len()),
                    )),
                ),
                Ok(f) => each(row, Ok(&f)),
            }
            row += 1;
        }
        Ok(row)
    }
}

/// A CSV record that could not be split into the header's fields.
#[derive(Debug, Clone)]
pub struct BadRecord {
    /// The first field, usually the image path, for the manifest.
    pub first: String,
    pub detail: String,
}

impl BadRecord {
    fn new(first: &str, detail: String) -> Self {
        BadRecord {
            first: first.trim().to_string(),
            detail,
        }
    }

    /// As a skipped row of `split`.
    pub fn skip(self, out: &mut SplitListing, split: &str, row: usize) {
        out.skip(
            split,
            row,
            &self.first,
            SkipReason::MalformedRow,
            self.detail,
        );
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        reason: format!("CSV: {e}"),
    }
}

/// A row-level problem: the reason and a detail for the manifest.
pub type RowError = (SkipReason, String);

/// Parses a required numeric field.
pub fn number(field: &str, what: &str) -> std::result::Result<f64, RowError> {
    let t = field.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err((
            SkipReason::MalformedRow,
            format!("{what} `{t}` is not a finite number"),
        )),
    }
}

/// One valence or arousal value: `None` for the -2 sentinel (or an empty field when
/// `empty_is_none`), an error outside [-1, 1].
pub fn affect(
    field: &str,
    what: &str,
    empty_is_none: bool,
) -> std::result::Result<Option<f32>, RowError> {
    if empty_is_none && field.trim().is_empty() {
        return Ok(None);
    }
    let v = number(field, what)?;
    if v as f32 == labels::NO_VA {
        return Ok(None);
    }
    if !(-1.0..=1.0).contains(&v) {
        return Err((
            SkipReason::LabelOutOfRange,
            format!("{what} {v} outside [-1, 1]"),
        ));
    }
    Ok(Some(v as f32))
}

/// Applies the label rules to an AffectNet code (`None` = no expression given) and the two
/// affect values: codes outside 0..=10 are out of range, codes that are not a class for
/// `num_classes` become -1, and a row with neither a class nor both affect values is unusable.
/// Valence and arousal are kept only as a pair: one sentinel drops both.
pub fn labels_of(
    code: Option<i64>,
    valence: Option<f32>,
    arousal: Option<f32>,
    num_classes: usize,
) -> std::result::Result<(i64, f32, f32), RowError> {
    if let Some(c) = code {
        if !(0..labels::EXPRESSION_NAMES.len() as i64).contains(&c) {
            return Err((
                SkipReason::LabelOutOfRange,
                format!("expression code {c} outside 0..=10"),
            ));
        }
    }
    let class = code
        .and_then(|c| labels::class_of_code(c, num_classes))
        .unwrap_or(-1);
    let (v, a) = match (valence, arousal) {
        (Some(v), Some(a)) => (v, a),
        _ => (f32::NAN, f32::NAN),
    };
    if class < 0 && v.is_nan() {
        let what = code.map_or("no expression".to_string(), |c| {
            format!("expression {c} ({})", labels::EXPRESSION_NAMES[c as usize])
        });
        return Err((
            SkipReason::NoUsableLabel,
            format!("{what} is not a class and valence/arousal are absent"),
        ));
    }
    Ok((class, v, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        assert_eq!(
            labels_of(Some(3), Some(0.5), Some(-0.25), 8).unwrap(),
            (3, 0.5, -0.25)
        );
        let (c, v, a) = labels_of(Some(8), Some(0.1), Some(0.2), 8).unwrap();
        assert_eq!((c, v, a), (-1, 0.1, 0.2));
        let (c, v, _) = labels_of(Some(7), None, None, 8).unwrap();
        assert!(c == 7 && v.is_nan());
        assert_eq!(
            labels_of(Some(7), None, None, 7).unwrap_err().0,
            SkipReason::NoUsableLabel
        );
        assert_eq!(
            labels_of(Some(9), None, None, 8).unwrap_err().0,
            SkipReason::NoUsableLabel
        );
        assert_eq!(
            labels_of(Some(11), Some(0.0), Some(0.0), 8).unwrap_err().0,
            SkipReason::LabelOutOfRange
        );
        let (_, v, a) = labels_of(Some(2), Some(0.3), None, 8).unwrap();
        assert!(v.is_nan() && a.is_nan());
    }

    #[test]
    fn affect_values() {
        assert_eq!(affect("-2", "valence", false).unwrap(), None);
        assert_eq!(affect(" -1 ", "valence", false).unwrap(), Some(-1.0));
        assert_eq!(affect("", "valence", true).unwrap(), None);
        assert_eq!(
            affect("", "valence", false).unwrap_err().0,
            SkipReason::MalformedRow
        );
        assert_eq!(
            affect("1.5", "valence", false).unwrap_err().0,
            SkipReason::LabelOutOfRange
        );
        assert_eq!(
            affect("NaN", "arousal", false).unwrap_err().0,
            SkipReason::MalformedRow
        );
        assert_eq!(
            affect("abc", "arousal", false).unwrap_err().0,
            SkipReason::MalformedRow
        );
    }
}
