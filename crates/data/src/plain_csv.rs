//! A plain CSV for users' own data: `path,expression,valence,arousal[,x,y,w,h][,split]`.
//!
//! - The header row is required; columns are found by name (any case, any order).
//! - `path` is relative to the image root (an absolute path is used as is).
//! - `expression` is an AffectNet code (0..=10) or a class name (`happy`, `Angry`, ...), or empty
//!   for none; valence and arousal are in [-1, 1], empty or -2 for none.
//! - `x,y,w,h` (all four or none) give the face box; an empty box on a row means the whole image.
//! - Without a `split` column (`train`/`training` or `val`/`validation`/`test`), a row goes to
//!   `val` when a hash of its path falls below `val_fraction`: the same row always lands in the
//!   same split, whatever the order of the file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::crop::FaceBox;
use crate::labels;
use crate::manifest::SkipReason;
use crate::prepare::listing::{self, Candidate, CsvList, Listing, RowError};
use crate::{Error, Result};

/// Reads the CSV at `file`, images under `images`.
pub fn read(file: &Path, images: &Path, num_classes: usize, val_fraction: f64) -> Result<Listing> {
    if !images.is_dir() {
        return Err(Error::Invalid {
            path: images.to_path_buf(),
            reason: "image folder not found".into(),
        });
    }
    let list = CsvList::open(file)?;
    let cols = Columns::find(&list)?;
    let mut listing = Listing::default();
    let mut names = BTreeMap::new();
    let mut splits_of_row = Vec::new();
    let rows = list.for_each_row(|row, fields| {
        let f = match fields {
            Ok(f) => f,
            Err(bad) => {
                // A record that cannot be split has no trustworthy split column either.
                let s = split_by_hash(&bad.first, val_fraction);
                splits_of_row.push(s);
                return bad.skip(&mut listing.splits[s], listing::SPLITS[s], row);
            }
        };
        let name = f[cols.path].trim();
        let by_hash = split_by_hash(name, val_fraction);
        let split = match cols.split.map(|c| f[c].trim()) {
            None | Some("") => Ok(by_hash),
            Some(v) => split_of_name(v),
        };
        let parsed = match split {
            Ok(s) => parse_row(f, &cols, num_classes, &mut names)
                .map(|p| (s, p))
                .map_err(|e| (s, e)),
            Err(e) => Err((by_hash, e)),
        };
        match parsed {
            Ok((s, (face, (expression, valence, arousal)))) => {
                splits_of_row.push(s);
                listing.splits[s].candidates.push(Candidate {
                    row,
                    name: name.to_string(),
                    file: images.join(name),
                    face,
                    expression,
                    valence,
                    arousal,
                });
            }
            Err((s, (reason, detail))) => {
                splits_of_row.push(s);
                listing.splits[s].skip(listing::SPLITS[s], row, name, reason, detail);
            }
        }
    })?;
    if rows == 0 {
        return Err(Error::Invalid {
            path: file.to_path_buf(),
            reason: "no data rows below the header".into(),
        });
    }
    debug_assert_eq!(rows, splits_of_row.len());
    for (i, split) in listing.splits.iter_mut().enumerate() {
        split.rows = splits_of_row.iter().filter(|&&s| s == i).count();
    }
    listing.class_map = names;
    Ok(listing)
}

/// The split (0 = train, 1 = val) a path falls in for `val_fraction`.
pub fn split_by_hash(path: &str, val_fraction: f64) -> usize {
    usize::from(unit_hash(path) < val_fraction)
}

/// A stable hash of `s` mapped to [0, 1): FNV-1a then a SplitMix64 finaliser (std's hasher is
/// not guaranteed stable across Rust versions, and the split must not change).
pub fn unit_hash(s: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

struct Columns {
    path: usize,
    expression: usize,
    valence: usize,
    arousal: usize,
    face: Option<[usize; 4]>,
    split: Option<usize>,
}

impl Columns {
    fn find(list: &CsvList) -> Result<Columns> {
        let face = ["x", "y", "w", "h"].map(|n| list.find(n));
        let face = match face {
            [Some(x), Some(y), Some(w), Some(h)] => Some([x, y, w, h]),
            [None, None, None, None] => None,
            _ => {
                return Err(Error::Invalid {
                    path: list.path.clone(),
                    reason: "box columns must be all of x,y,w,h or none".into(),
                })
            }
        };
        Ok(Columns {
            path: list.require("path")?,
            expression: list.require("expression")?,
            valence: list.require("valence")?,
            arousal: list.require("arousal")?,
            face,
            split: list.find("split"),
        })
    }
}

fn split_of_name(v: &str) -> std::result::Result<usize, RowError> {
    match v.to_ascii_lowercase().as_str() {
        "train" | "training" => Ok(0),
        "val" | "valid" | "validation" | "test" => Ok(1),
        _ => Err((SkipReason::MalformedRow, format!("unknown split `{v}`"))),
    }
}

type Parsed = (Option<FaceBox>, (i64, f32, f32));

fn parse_row(
    f: &[&str],
    cols: &Columns,
    num_classes: usize,
    names: &mut BTreeMap<String, i64>,
) -> std::result::Result<Parsed, RowError> {
    if f[cols.path].trim().is_empty() {
        return Err((SkipReason::MalformedRow, "empty image path".into()));
    }
    let e = f[cols.expression].trim();
    let code = if e.is_empty() {
        None
    } else if let Ok(c) = e.parse::<i64>() {
        Some(c)
    } else if let Some(c) = labels::code_of_name(e) {
        names.insert(e.to_string(), c);
        Some(c)
    } else {
        return Err((
            SkipReason::MalformedRow,
            format!("expression `{e}` is neither a code nor a class name"),
        ));
    };
    let face = match cols.face {
        Some(c) if !c.iter().all(|&i| f[i].trim().is_empty()) => Some(FaceBox {
            x: listing::number(f[c[0]], "x")?,
            y: listing::number(f[c[1]], "y")?,
            w: listing::number(f[c[2]], "w")?,
            h: listing::number(f[c[3]], "h")?,
        }),
        _ => None,
    };
    let valence = listing::affect(f[cols.valence], "valence", true)?;
    let arousal = listing::affect(f[cols.arousal], "arousal", true)?;
    Ok((
        face,
        listing::labels_of(code, valence, arousal, num_classes)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_split_is_stable_and_proportional() {
        // Pinned against an independent Python implementation of FNV-1a + SplitMix64: a change
        // here would silently move rows between splits.
        for (s, want) in [
            ("a.png", 0.8162309729057672),
            ("img/0.jpg", 0.5290119853121469),
            ("faces/happy/x.jpg", 0.6627301161497368),
            ("", 0.9576734252420561),
        ] {
            assert_eq!(unit_hash(s), want, "{s}");
        }
        let n = 20_000;
        let val = (0..n)
            .filter(|i| split_by_hash(&format!("img/{i}.jpg"), 0.1) == 1)
            .count();
        // Binomial(20000, 0.1): sd = 42; 5 sd either side.
        assert!((1790..=2210).contains(&val), "{val}");
        assert_eq!(split_by_hash("x", 0.0), 0);
        assert_eq!(split_by_hash("x", 1.0), 1);
    }
}
