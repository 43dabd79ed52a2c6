//! What the last complete run recorded about its shards, so that a rerun keeps a shard only while
//! it is still the file that run wrote and re-makes the damaged or missing ones.
//!
//! A run sets the old manifest aside as `manifest.previous.json` instead of deleting it: the
//! folder stops being complete (no `manifest.json`), yet a run killed before its own manifest
//! lands leaves the checksums for the next one. Shards rebuilt in between hash as before, since
//! a shard's bytes depend only on the source and the options.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::manifest::{self, Manifest, ShardEntry};
use crate::{Error, Result};

/// The old manifest while a run is in progress.
pub const PREVIOUS_FILE: &str = "manifest.previous.json";

/// How an existing shard file may be reused.
pub(super) enum Expect<'a> {
    /// No record to go by (the first run into this folder was interrupted): reuse it when its
    /// rows and labels are right, as recorded by nothing but the file itself.
    Structure,
    /// Reuse it only when it is this file (size, checksum, count) and its rows are right.
    Entry(&'a ShardEntry),
    /// The last run did not write it: rebuild.
    Rebuild,
}

/// The shard entries of the last complete run, by split and file name.
pub(super) struct Recorded {
    entries: Option<HashMap<(String, String), ShardEntry>>,
}

impl Recorded {
    /// Moves `out/manifest.json` aside and reads what it (or one set aside by a killed run)
    /// records. With other options every shard is rebuilt anyway, so the record is dropped.
    pub(super) fn set_aside(out: &Path, same_options: bool) -> Result<Recorded> {
        let current = out.join(manifest::FILE_NAME);
        let previous = out.join(PREVIOUS_FILE);
        if !same_options {
            remove_if_exists(&current)?;
            remove_if_exists(&previous)?;
            return Ok(Recorded { entries: None });
        }
        if current.is_file() {
            fs::rename(&current, &previous).map_err(|e| Error::io(&current, e))?;
        }
        if !previous.is_file() {
            return Ok(Recorded { entries: None });
        }
        // A record that does not load vouches for no shard: all are rebuilt.
        let entries = Manifest::load(&previous)
            .map(|m| {
                m.splits
                    .into_iter()
                    .flat_map(|(split, s)| {
                        s.shards
                            .into_iter()
                            .filter(|e| e.checksum.is_some() && e.bytes.is_some())
                            .map(move |e| ((split.clone(), e.file.clone()), e))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Recorded {
            entries: Some(entries),
        })
    }

    pub(super) fn expect(&self, split: &str, file: &str) -> Expect<'_> {
        match &self.entries {
            None => Expect::Structure,
            Some(entries) => entries
                .get(&(split.to_string(), file.to_string()))
                .map_or(Expect::Rebuild, Expect::Entry),
        }
    }

    /// Drops the old manifest once the new one has landed.
    pub(super) fn discard(out: &Path) -> Result<()> {
        remove_if_exists(&out.join(PREVIOUS_FILE))
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}
