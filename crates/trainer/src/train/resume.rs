//! Where a run starts: a fresh run folder or the last checkpoint of one, checked against what
//! the user asked for.

use std::path::Path;

use fer_model::checkpoint::{self, Checkpoint};

use super::save::{write_history, LAST};
use crate::config::TrainConfig;
use crate::run_folder::{self, Contents, RunLock};
use crate::state::{keys, TrainState};
use crate::world::World;
use crate::{Error, Result};

/// The config, state and checkpoint of the run being resumed from `out`'s last checkpoint.
pub(super) fn from_last(
    out: &Path,
    given: Option<&TrainConfig>,
    device: &candle_core::Device,
    world: &World,
) -> Result<(TrainConfig, TrainState, Checkpoint)> {
    let last = out.join(LAST);
    let ck = checkpoint::load(&last, device)?;
    let stored = ck.meta.get(keys::CONFIG).ok_or_else(|| {
        Error::Checkpoint(format!("{}: no training config stored", last.display()))
    })?;
    let cfg = TrainConfig::from_toml_str(stored, &last)?;
    if let Some(given) = given {
        check_same_model(given, &cfg, &last)?;
    }
    let state: TrainState = serde_json::from_str(ck.meta.get(keys::STATE).ok_or_else(|| {
        Error::Checkpoint(format!("{}: no training state stored", last.display()))
    })?)
    .map_err(|e| Error::Checkpoint(format!("{}: bad training state: {e}", last.display())))?;
    // A kill between the history and the checkpoint leaves the log an epoch ahead: from here on
    // it shows what the checkpoint holds, the epoch to be redone is logged again.
    if world.is_root() {
        write_history(out, &state.history)?;
        // Batches and their augmentations do not depend on the number of ranks; BatchNorm's
        // batch statistics do (each rank normalises its own part).
        let before: usize = ck
            .meta
            .get(keys::WORLD_SIZE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        if before != world.size() {
            eprintln!(
                "note: {} was written by {before} rank(s), resumed with {}: the same batches, but \
                 BatchNorm statistics over parts of another size, so the run will not match an \
                 uninterrupted one exactly",
                last.display(),
                world.size()
            );
        }
    }
    Ok((cfg, state, ck))
}

/// Checks `out` and takes its lock; `true` when there is a checkpoint to resume from. Leftovers
/// of a run killed before its first checkpoint are removed (a resume then starts afresh), and
/// so are the temp files of writes a kill cut short; files that are not a run's are never
/// touched, and a resume into a folder holding any is refused.
pub(super) fn open_run_folder(out: &Path, resume: bool) -> Result<(RunLock, bool)> {
    // Looked at before the lock is created, so a refused folder gets no file of ours; again
    // with the lock held, since another trainer may have written it meanwhile.
    refuse(out, &run_folder::inspect(out)?, resume)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lock = run_folder::lock(out)?;
    let contents = run_folder::inspect(out)?;
    refuse(out, &contents, resume)?;
    let resuming = resume && matches!(contents, Contents::Checkpointed);
    if resume && !resuming {
        eprintln!("no checkpoint in {}: starting a new run", out.display());
    }
    if let Contents::Leftovers(paths) = &contents {
        if !paths.is_empty() {
            let names: Vec<String> = paths
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            eprintln!(
                "removing what a run killed before its first checkpoint left in {}: {}",
                out.display(),
                names.join(", ")
            );
            run_folder::remove(paths)?;
        }
    }
    run_folder::remove(&run_folder::stale_temps(out)?)?;
    Ok((lock, resuming))
}

fn refuse(out: &Path, contents: &Contents, resume: bool) -> Result<()> {
    match contents {
        Contents::Foreign(why) if resume => Err(Error::Checkpoint(format!(
            "{} is not a run folder: {why}. --resume continues a run, or starts one in an empty \
             folder or one a run was killed in before its first checkpoint; choose another --out",
            out.display()
        ))),
        Contents::Checkpointed if !resume => Err(Error::Checkpoint(format!(
            "{} already holds a run: pass --resume to continue it or choose another --out",
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// A resume with an explicit config must not silently train another model.
fn check_same_model(given: &TrainConfig, stored: &TrainConfig, path: &Path) -> Result<()> {
    let a = toml::Value::try_from(&given.model).map_err(|e| Error::Config(e.to_string()))?;
    let b = toml::Value::try_from(&stored.model).map_err(|e| Error::Config(e.to_string()))?;
    let mut diffs = vec![];
    diff_values("model", &a, &b, &mut diffs);
    // The data decides the class count and the heads; only the architecture is compared.
    diffs.retain(|d| {
        !d.starts_with("model.num_classes")
            && !d.starts_with("model.categorical")
            && !d.starts_with("model.aux_head")
    });
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Checkpoint(format!(
        "{} was written with a different model config: {}",
        path.display(),
        diffs.into_iter().take(5).collect::<Vec<_>>().join("; ")
    )))
}

fn diff_values(at: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_values(&path, p, q, out),
                    (p, q) => out.push(format!("{path}: {p:?} vs {q:?}")),
                }
            }
        }
        _ if a != b => out.push(format!("{at}: {a} (given) vs {b} (checkpoint)")),
        _ => {}
    }
}
