//! An image folder per class (the FER-2013 layout): `ROOT/train/<class>/*.png`, optionally
//! `ROOT/val/<class>/...` and `ROOT/test/<class>/...`. Without `val/`, preparation carves the
//! validation split from `train/` (see [`Listing::carve_val`](crate::prepare::Listing::carve_val)); `test/` is the test split, never
//! a stand-in for validation.
//!
//! Class folder names map to AffectNet codes through [`labels::code_of_name`] (any case;
//! `angry`, `happy`, `neutral`, ...). Files with an image extension of [`decode::EXTENSIONS`]
//! (`.jpg`, `.png`, `.bmp`, `.tiff`, `.webp`, `.gif`, ...; any case) are the samples, in (class
//! folder, file name) order; other files are not samples and are not counted. Images are taken
//! as face crops (no box) and carry no valence/arousal.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::manifest::SkipReason;
use crate::prepare::listing::{self, Candidate, Listing, SplitListing};
use crate::{decode, labels};
use crate::{Error, Result};

/// Reads the folder tree at `root`. An unknown class folder is an error unless
/// `skip_unknown_classes`, in which case its files are skipped rows with that reason.
pub fn read(root: &Path, num_classes: usize, skip_unknown_classes: bool) -> Result<Listing> {
    if !root.is_dir() {
        return Err(Error::Invalid {
            path: root.to_path_buf(),
            reason: "image folder root not found".into(),
        });
    }
    if !root.join("train").is_dir() {
        return Err(Error::Invalid {
            path: root.to_path_buf(),
            reason: "no train/ split folder: expected train/<class>/*.png (plus optional val/ \
                     and test/ in the same layout)"
                .into(),
        });
    }
    let mut listing = Listing::default();
    for (i, split) in listing::SPLITS.iter().enumerate() {
        let dir = root.join(split);
        if i > 0 && !dir.is_dir() {
            continue;
        }
        listing.splits[i] = read_split(
            root,
            &dir,
            split,
            num_classes,
            skip_unknown_classes,
            &mut listing.class_map,
        )?;
        listing.origins[i] = format!("the {split}/ folder");
    }
    Ok(listing)
}

fn read_split(
    root: &Path,
    dir: &Path,
    split: &str,
    num_classes: usize,
    skip_unknown: bool,
    class_map: &mut BTreeMap<String, i64>,
) -> Result<SplitListing> {
    let mut classes = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            classes.push(path);
        }
    }
    classes.sort();
    let mut out = SplitListing::default();
    for class_dir in classes {
        let name = class_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let code = labels::code_of_name(&name);
        if code.is_none() && !skip_unknown {
            return Err(Error::Invalid {
                path: class_dir.clone(),
                reason: format!(
                    "unknown class folder `{name}` (known: {}; or skip it with \
                     --skip-unknown-classes)",
                    labels::class_names(labels::NUM_CLASSES).join(", ")
                ),
            });
        }
        if let Some(c) = code {
            class_map.insert(name.clone(), c);
        }
        for file in images_in(&class_dir)? {
            let row = out.rows;
            out.rows += 1;
            let rel = rel_name(root, &file);
            let Some(code) = code else {
                out.skip(
                    split,
                    row,
                    &rel,
                    SkipReason::UnknownClassFolder,
                    format!("class folder `{name}` is not a known class"),
                );
                continue;
            };
            match labels::class_of_code(code, num_classes) {
                Some(class) => out.candidates.push(Candidate {
                    row,
                    name: rel,
                    file,
                    face: None,
                    expression: class,
                    valence: f32::NAN,
                    arousal: f32::NAN,
                }),
                None => out.skip(
                    split,
                    row,
                    &rel,
                    SkipReason::NoUsableLabel,
                    format!("`{name}` is not a class with {num_classes} classes"),
                ),
            }
        }
    }
    if out.rows == 0 {
        return Err(Error::Invalid {
            path: dir.to_path_buf(),
            reason: format!(
                "no images ({}) in any class folder",
                decode::extension_list()
            ),
        });
    }
    Ok(out)
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if decode::has_image_extension(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn rel_name(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned()
}
