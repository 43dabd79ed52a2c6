//! The AffectNet layout: `Manually_Annotated_file_lists/{training,validation}.csv` and images
//! under `Manually_Annotated_Images/`.
//!
//! Columns are found by header name, so their order does not matter; the landmarks column is
//! not used. The official validation list becomes the `test` split, as the literature uses it
//! (AffectNet's test set was never released); the `val` split for every training decision is
//! carved from the training list at preparation.

use std::path::Path;

use crate::crop::FaceBox;
use crate::manifest::SkipReason;
use crate::prepare::listing::{self, Candidate, CsvList, Listing, RowError, SplitListing};
use crate::{Error, Result};

/// The training list, relative to the AffectNet root.
pub const TRAIN_LIST: &str = "Manually_Annotated_file_lists/training.csv";
/// The validation list, relative to the AffectNet root.
pub const VAL_LIST: &str = "Manually_Annotated_file_lists/validation.csv";
/// The image root, relative to the AffectNet root.
pub const IMAGES_DIR: &str = "Manually_Annotated_Images";
/// The header of both lists.
pub const COLUMNS: [&str; 9] = [
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

/// Reads both lists of the AffectNet tree at `root`.
pub fn read(root: &Path, num_classes: usize) -> Result<Listing> {
    if !root.is_dir() {
        return Err(Error::Invalid {
            path: root.to_path_buf(),
            reason: "AffectNet root folder not found".into(),
        });
    }
    let images = root.join(IMAGES_DIR);
    let mut listing = Listing::default();
    // Split index 1 (val) stays empty: it is carved from training.
    for (i, list) in [(0, TRAIN_LIST), (2, VAL_LIST)] {
        listing.splits[i] = read_list(&root.join(list), &images, listing::SPLITS[i], num_classes)?;
    }
    listing.origins[0] = TRAIN_LIST.to_string();
    listing.origins[2] = format!("{VAL_LIST} (AffectNet's official validation set)");
    Ok(listing)
}

/// Reads one AffectNet list; image paths are relative to `images`.
pub fn read_list(
    csv_path: &Path,
    images: &Path,
    split: &str,
    num_classes: usize,
) -> Result<SplitListing> {
    let list = CsvList::open(csv_path)?;
    let mut col = [0usize; 9];
    for (c, name) in col.iter_mut().zip(COLUMNS) {
        *c = list.require(name)?;
    }
    let mut out = SplitListing::default();
    let rows = list.for_each_row(|row, fields| {
        let f = match fields {
            Ok(f) => f,
            Err(bad) => return bad.skip(&mut out, split, row),
        };
        let name = f[col[0]].trim();
        match parse_row(f, &col, num_classes) {
            Ok((face, (expression, valence, arousal))) => out.candidates.push(Candidate {
                row,
                name: name.to_string(),
                file: images.join(name),
                face: Some(face),
                expression,
                valence,
                arousal,
            }),
            Err((reason, detail)) => out.skip(split, row, name, reason, detail),
        }
    })?;
    if rows == 0 {
        return Err(Error::Invalid {
            path: csv_path.to_path_buf(),
            reason: "no data rows below the header".into(),
        });
    }
    out.rows = rows;
    Ok(out)
}

type Labels = (i64, f32, f32);

fn parse_row(
    f: &[&str],
    col: &[usize; 9],
    num_classes: usize,
) -> std::result::Result<(FaceBox, Labels), RowError> {
    if f[col[0]].trim().is_empty() {
        return Err((SkipReason::MalformedRow, "empty image path".into()));
    }
    let face = FaceBox {
        x: listing::number(f[col[1]], "face_x")?,
        y: listing::number(f[col[2]], "face_y")?,
        w: listing::number(f[col[3]], "face_width")?,
        h: listing::number(f[col[4]], "face_height")?,
    };
    let code_text = f[col[6]].trim();
    let code = code_text.parse::<i64>().map_err(|_| {
        (
            SkipReason::MalformedRow,
            format!("expression `{code_text}` is not an integer code"),
        )
    })?;
    let valence = listing::affect(f[col[7]], "valence", false)?;
    let arousal = listing::affect(f[col[8]], "arousal", false)?;
    let labels = listing::labels_of(Some(code), valence, arousal, num_classes)?;
    Ok((face, labels))
}
