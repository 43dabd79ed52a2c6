//! Where a kill landed: the checkpoint before and after it, the temp files it cut short and
//! the last line the process printed.

use std::path::Path;
use std::time::Duration;

use super::child::{self, is_evaluation, is_progress};
use crate::state::{keys, TrainState};
use crate::{Error, Result};

/// How far the checkpoint in the run folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    None,
    /// The last epoch it holds (stage, epoch within the stage).
    Epoch(String, usize),
    /// All stages trained: only the final evaluation and the report are left.
    Trained,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::None => write!(f, "none"),
            Position::Epoch(s, e) => write!(f, "{s} epoch {e}"),
            Position::Trained => write!(f, "trained"),
        }
    }
}

/// Where in the run a kill landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    StartUp,
    Training,
    Evaluation,
    /// After an epoch's evaluation, before its checkpoint was complete.
    Saving,
    /// A temp file of the kill's process was left: the write was cut.
    MidWrite,
    /// The final evaluation or the report.
    Final,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::StartUp => "start-up",
            Phase::Training => "mid-epoch",
            Phase::Evaluation => "mid-evaluation",
            Phase::Saving => "saving (between files)",
            Phase::MidWrite => "mid-write (temp file cut)",
            Phase::Final => "final evaluation/report",
        }
    }
}

/// The state in `out`'s checkpoint and the run's stage count.
fn checkpointed(out: &Path) -> Result<Option<(TrainState, usize)>> {
    let last = out.join(crate::run_folder::LAST);
    if !last.is_file() {
        return Ok(None);
    }
    let ck = fer_model::checkpoint::load(&last, &candle_core::Device::Cpu)?;
    let get = |k: &str| {
        ck.meta
            .get(k)
            .ok_or_else(|| Error::Checkpoint(format!("{}: no {k:?} metadata", last.display())))
    };
    let state: TrainState = serde_json::from_str(get(keys::STATE)?)
        .map_err(|e| Error::Checkpoint(format!("{}: bad state: {e}", last.display())))?;
    let stages: Vec<String> = serde_json::from_str(get(keys::STAGES)?)
        .map_err(|e| Error::Checkpoint(format!("{}: bad stages: {e}", last.display())))?;
    Ok(Some((state, stages.len())))
}

/// Where the checkpoint in `out` stands, and how many epochs it holds.
pub fn position(out: &Path) -> Result<(Position, usize)> {
    let Some((state, stages)) = checkpointed(out)? else {
        return Ok((Position::None, 0));
    };
    let done = state.history.len();
    if state.stage_index >= stages {
        return Ok((Position::Trained, done));
    }
    Ok(match state.history.last() {
        Some(r) => (Position::Epoch(r.stage.clone(), r.epoch), done),
        None => (Position::None, 0),
    })
}

/// Where the kill landed, from the temp files it left, the last line the process printed and
/// the checkpoint after it.
pub(super) fn classify(
    out: &Path,
    pid: u32,
    lines: &[(Duration, String)],
    after: &Position,
) -> (Phase, String) {
    let mut cut: Vec<String> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| child::temp_of(&e.file_name().to_string_lossy(), pid).map(String::from))
        .collect();
    cut.sort();
    if !cut.is_empty() {
        return (Phase::MidWrite, format!("writing {}", cut.join(", ")));
    }
    let last = lines
        .iter()
        .rev()
        .map(|(_, l)| l.as_str())
        .find(|l| !l.starts_with("warning:"))
        .unwrap_or("");
    let head = |l: &str| l.split(':').next().unwrap_or("").to_string();
    if is_progress(last) {
        let batches = last.split(": ").nth(1).and_then(|r| r.split(' ').next());
        return (
            Phase::Training,
            format!("{}, after batch {}", head(last), batches.unwrap_or("?")),
        );
    }
    if is_evaluation(last) {
        return (Phase::Evaluation, head(last));
    }
    if last.contains(": loss ") || last.contains("stopping the stage early") {
        // The epoch's summary line: printed after its evaluation, before its checkpoint.
        let epoch = head(last);
        let epoch = epoch.split('/').next().unwrap_or("").to_string();
        let saved = match after {
            Position::Epoch(s, e) => format!("{s} epoch {e}") == epoch,
            Position::Trained => true,
            Position::None => false,
        };
        if !saved {
            return (
                Phase::Saving,
                format!("{epoch} evaluated, not yet checkpointed"),
            );
        }
        if *after == Position::Trained {
            return (Phase::Final, "final evaluation on val".into());
        }
        return (
            Phase::Training,
            format!("after {epoch}'s checkpoint, first batches of the next"),
        );
    }
    if last.starts_with("evaluating the final model") {
        return (Phase::Final, "final evaluation on test".into());
    }
    if *after == Position::Trained {
        return (Phase::Final, "start-up or final evaluation on val".into());
    }
    (Phase::StartUp, "before the first batch".into())
}
