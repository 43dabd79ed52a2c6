//! The run folder as the trainer leaves it. A run may be killed at any moment, so `--resume`
//! must tell a run killed before its first checkpoint (start it afresh) from a folder of
//! someone else's files (refuse, delete nothing), clear the temp files a killed write left
//! behind, and keep a second trainer out of a folder that one is writing.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::{Error, Result};

pub const CONFIG: &str = "config.toml";
pub const HISTORY: &str = "metrics.jsonl";
pub const LAST: &str = "last.safetensors";
/// Held (`flock`) by the trainer writing the folder; the OS drops it when the process dies,
/// however it dies, so a stale lock never blocks a resume.
pub const LOCK: &str = ".trainer.lock";

/// What a run writes before its first `last.safetensors`: all that a run killed that early
/// can have left.
fn is_early_file(name: &str) -> bool {
    name == CONFIG
        || name == HISTORY
        || name == LOCK
        || name == "best.safetensors"
        || (name.starts_with("best-") && name.ends_with(".safetensors"))
}

/// Every file a run writes (see `report::write` for the figures).
fn is_run_file(name: &str) -> bool {
    is_early_file(name)
        || matches!(
            name,
            LAST | "metrics.json"
                | "report.md"
                | "va-scatter.png"
                | "confusion.png"
                | "confusion-test.png"
                | "attention.png"
        )
        || (name.starts_with("curves-") && name.ends_with(".png"))
}

/// The file a temp name `.<name>.tmp<pid>` (see `fer_data::atomic::temp_path`) was to become,
/// with the writer's pid, when `<name>` is a run file.
fn temp_target(name: &str) -> Option<(&str, u32)> {
    let (target, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    let pid = pid.parse().ok()?;
    is_run_file(target).then_some((target, pid))
}

/// What `--out` holds.
#[derive(Debug)]
pub enum Contents {
    /// No folder, or an empty one.
    Empty,
    /// A run with a checkpoint to continue from.
    Checkpointed,
    /// Only what a run killed before its first checkpoint leaves: safe to clear.
    Leftovers(Vec<PathBuf>),
    /// Something that is not (only) a run of ours; the reason names the files.
    Foreign(String),
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = vec![];
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn list(names: &[&str]) -> String {
    let mut s = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s
}

/// Looks at `dir` without changing it.
pub fn inspect(dir: &Path) -> Result<Contents> {
    if !dir.exists() {
        return Ok(Contents::Empty);
    }
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "{} is a file, not a run folder: choose another --out",
            dir.display()
        )));
    }
    if dir.join(LAST).is_file() {
        return Ok(Contents::Checkpointed);
    }
    let names = entries(dir)?;
    if names.is_empty() {
        return Ok(Contents::Empty);
    }
    let foreign: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !is_early_file(n) && temp_target(n).is_none())
        .collect();
    if !foreign.is_empty() {
        return Ok(Contents::Foreign(format!(
            "it holds files a run killed before its first checkpoint does not leave: {}",
            list(&foreign)
        )));
    }
    let finished: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != LOCK && temp_target(n).is_none())
        .collect();
    // A run writes config.toml before anything else, so files without it are not a run's.
    if !finished.is_empty() {
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Ok(Contents::Foreign(format!(
                "it holds {} but no {CONFIG}, which a run writes first",
                list(&finished)
            )));
        }
        if let Err(e) = TrainConfig::from_file(&config) {
            return Ok(Contents::Foreign(format!(
                "its {CONFIG} is not a training config ({e})"
            )));
        }
    }
    // config.toml goes last, so that a removal cut short still leaves a recognisable run.
    let mut paths: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.as_str() != LOCK && n.as_str() != CONFIG)
        .map(|n| dir.join(n))
        .collect();
    if names.iter().any(|n| n == CONFIG) {
        paths.push(dir.join(CONFIG));
    }
    Ok(Contents::Leftovers(paths))
}

/// Temp files of run files that no live writer owns: a killed run's half-written files.
/// Called with the lock held, so every temp but this process's own is stale.
pub fn stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let own = std::process::id();
    Ok(entries(dir)?
        .into_iter()
        .filter(|n| temp_target(n).is_some_and(|(_, pid)| pid != own))
        .map(|n| dir.join(n))
        .collect())
}

pub fn remove(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match fs::remove_file(p) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(Error::io(p, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Held while a trainer writes the folder; released when dropped or when the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the folder's lock, failing at once when another trainer holds it.
pub fn lock(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            Error::Checkpoint(format!(
                "{}: cannot write in the run folder ({e}): make it writable or choose another \
                 --out",
                path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(Error::Checkpoint(format!(
                "{}: another trainer is writing this run folder: wait for it to end or choose \
                 another --out",
                dir.display()
            )))
        }
        // Without file locks (some network file systems) two trainers are not kept apart, but
        // one trainer still runs.
        Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {}
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    Ok(RunLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn temp_names_of_run_files_only() {
        assert_eq!(temp_target(".last.safetensors.tmp123"), Some((LAST, 123)));
        assert_eq!(
            temp_target(".curves-stage2.png.tmp9"),
            Some(("curves-stage2.png", 9))
        );
        assert_eq!(temp_target(".notes.txt.tmp5"), None);
        assert_eq!(temp_target(".last.safetensors.tmp"), None);
        assert_eq!(temp_target("last.safetensors.tmp5"), None);
        assert_eq!(temp_target(".last.safetensors.tmpx"), None);
    }

    #[test]
    fn missing_and_empty_folders_hold_no_run() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            inspect(&d.path().join("nope")).unwrap(),
            Contents::Empty
        ));
        assert!(matches!(inspect(d.path()).unwrap(), Contents::Empty));
        touch(d.path(), "f", "");
        let e = inspect(&d.path().join("f")).unwrap_err().to_string();
        assert!(e.contains("is a file, not a run folder"), "{e}");
    }

    #[test]
    fn a_run_killed_early_is_recognised_config_last() {
        let d = tempfile::tempdir().unwrap();
        touch(
            d.path(),
            CONFIG,
            &TrainConfig::default_cpu().to_toml().unwrap(),
        );
        for n in [
            "best-stage1.safetensors",
            HISTORY,
            LOCK,
            ".best.safetensors.tmp77",
        ] {
            touch(d.path(), n, "x");
        }
        let Contents::Leftovers(paths) = inspect(d.path()).unwrap() else {
            panic!("not recognised as leftovers");
        };
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                ".best.safetensors.tmp77",
                "best-stage1.safetensors",
                HISTORY,
                CONFIG
            ]
        );
        remove(&paths).unwrap();
        let left: Vec<_> = entries(d.path()).unwrap();
        assert_eq!(left, [LOCK]);
        assert!(matches!(inspect(d.path()).unwrap(), Contents::Leftovers(p) if p.is_empty()));
    }

    #[test]
    fn other_files_are_foreign_and_named() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "thesis.pdf", "x");
        touch(d.path(), CONFIG, "x");
        let Contents::Foreign(why) = inspect(d.path()).unwrap() else {
            panic!("a foreign file went unnoticed");
        };
        assert!(why.contains("thesis.pdf"), "{why}");

        // Our names without the config.toml every run writes first.
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "best.safetensors", "x");
        let Contents::Foreign(why) = inspect(d.path()).unwrap() else {
            panic!("a lone best.safetensors taken for a run");
        };
        assert!(why.contains("no config.toml"), "{why}");

        // A config.toml that is not ours.
        touch(d.path(), CONFIG, "[server]\nport = 80\n");
        let Contents::Foreign(why) = inspect(d.path()).unwrap() else {
            panic!("a foreign config.toml taken for a run");
        };
        assert!(why.contains("not a training config"), "{why}");

        // What only a finished run writes is not a leftover of a killed one.
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "report.md", "x");
        assert!(matches!(inspect(d.path()).unwrap(), Contents::Foreign(_)));
    }

    #[test]
    fn stale_temps_spare_our_own_and_foreign_names() {
        let d = tempfile::tempdir().unwrap();
        let own = format!(".last.safetensors.tmp{}", std::process::id());
        for n in [own.as_str(), ".last.safetensors.tmp1", ".x.tmp1", LAST] {
            touch(d.path(), n, "x");
        }
        assert_eq!(
            stale_temps(d.path()).unwrap(),
            [d.path().join(".last.safetensors.tmp1")]
        );
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path()).unwrap();
        let e = lock(d.path()).unwrap_err().to_string();
        assert!(e.contains("another trainer is writing"), "{e}");
        drop(first);
        lock(d.path()).unwrap();
    }
}
