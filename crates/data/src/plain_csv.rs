//! A plain CSV for users' own data: `path,expression,valence,arousal[,x,y,w,h][,split]`.
//!
//! - The header row is required; columns are found by name (any case, any order).
//! - `path` is relative to the image root (an absolute path is used as is).
//! - `expression` is an AffectNet code (0..=10) or a class name (`happy`, `Angry`, ...), or empty
//!   for none; valence and arousal are in [-1, 1], empty or -2 for none.
//! - `x,y,w,h` (all four or none) give the face box; an empty box on a row means the whole image.
//! - `split` (optional): `train`/`training`, `val`/`valid`/`validation` or `test`; a row without
//!   one (no column, or an empty field) is a training row. When no row is `val`, preparation
//!   carves the validation split from the training rows (stratified by class, seeded: see
//!   [`Listing::carve_val`](crate::prepare::Listing::carve_val)). `test` rows are never used for
//!   a decision.

use std::collections::BTreeMap;
use std::path::Path;

use crate::crop::FaceBox;
use crate::labels;
use crate::manifest::SkipReason;
use crate::prepare::listing::{self, Candidate, CsvList, Listing, RowError};
use crate::{Error, Result};

/// Reads the CSV at `file`, images under `images`.
pub fn read(file: &Path, images: &Path, num_classes: usize) -> Result<Listing> {
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
                // A record that cannot be split has no trustworthy split column either: it is
                // reported with the training rows.
                splits_of_row.push(0);
                return bad.skip(&mut listing.splits[0], listing::SPLITS[0], row);
            }
        };
        let name = f[cols.path].trim();
        let split = match cols.split.map(|c| f[c].trim()) {
            None | Some("") => Ok(0),
            Some(v) => split_of_name(v),
        };
        let parsed = match split {
            Ok(s) => parse_row(f, &cols, num_classes, &mut names)
                .map(|p| (s, p))
                .map_err(|e| (s, e)),
            Err(e) => Err((0, e)),
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
        if split.rows > 0 {
            listing.origins[i] = match (i, cols.split) {
                (0, None) => "every row (no split column)".to_string(),
                (0, Some(_)) => "rows with split = train (or empty)".to_string(),
                _ => format!("rows with split = {}", listing::SPLITS[i]),
            };
        }
    }
    listing.class_map = names;
    Ok(listing)
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
        "val" | "valid" | "validation" => Ok(1),
        "test" => Ok(2),
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
