//! What a run writes: checkpoints (weights, optimizer moments, the run state), the history,
//! and what a failed write leaves.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use fer_model::checkpoint;

use super::Ctx;
use crate::plan::StagePlan;
use crate::run_folder;
use crate::state::{keys, EpochRecord, TrainState};
use crate::{Error, Result};

pub const LAST: &str = run_folder::LAST;
pub const BEST: &str = "best.safetensors";
/// Optimizer tensors' names in a checkpoint start with this.
pub(super) const OPTIM_PREFIX: &str = "train.";

pub fn best_name(stage: &str) -> String {
    format!("best-{stage}.safetensors")
}

pub(super) fn save(
    ctx: &Ctx,
    state: &TrainState,
    plan: StagePlan,
    optim: &[(String, Tensor)],
    path: &Path,
) -> Result<()> {
    // One writer: rank 0 (every rank holds the same weights and state).
    if !ctx.world.is_root() {
        return Ok(());
    }
    let mut meta = BTreeMap::new();
    let json = |v: &dyn erased::Json| v.to_json();
    meta.insert(keys::STATE.into(), json(state)?);
    meta.insert(keys::CONFIG.into(), ctx.cfg.to_toml()?);
    meta.insert(keys::STAGE.into(), plan.name.into());
    meta.insert(keys::EPOCH.into(), state.epoch.to_string());
    meta.insert(keys::STEP.into(), state.step.to_string());
    meta.insert(
        keys::RNG.into(),
        format!(
            "seed {}: weights from per-variable ChaCha8 streams; loader orders and augmentations from (seed ^ stage << 32, epoch, position)",
            ctx.cfg.seed
        ),
    );
    meta.insert(keys::IMAGE_SIZE.into(), ctx.train.image_size().to_string());
    meta.insert(keys::MARGIN.into(), ctx.manifest.margin.to_string());
    meta.insert(keys::CLASS_NAMES.into(), json(&ctx.manifest.class_names)?);
    let names: Vec<&str> = ctx.stages.iter().map(|s| s.name).collect();
    meta.insert(keys::STAGES.into(), json(&names)?);
    meta.insert(keys::WORLD_SIZE.into(), ctx.world.size().to_string());
    checkpoint::save(path, &ctx.varmap, &ctx.cfg.model, optim, &meta)
        .map_err(|e| write_failed(&ctx.out, e.into()))
}

mod erased {
    pub trait Json {
        fn to_json(&self) -> crate::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> crate::Result<String> {
            serde_json::to_string(self).map_err(|e| crate::Error::Config(e.to_string()))
        }
    }
}

pub(super) fn write_history(out: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::new();
    for r in history {
        s.push_str(&serde_json::to_string(r).map_err(|e| Error::Config(e.to_string()))?);
        s.push('\n');
    }
    fer_data::atomic::write_atomic(&out.join(run_folder::HISTORY), s.as_bytes())
        .map_err(|e| write_failed(out, e.into()))
}

/// A failed write of the run folder (a full disk, a folder made read-only) says what survived
/// it: atomic writes leave every earlier file, the last checkpoint included, as it was.
pub(super) fn write_failed(out: &Path, e: Error) -> Error {
    let last = out.join(LAST);
    let what_next = if last.is_file() {
        format!(
            "the last checkpoint, {}, is intact: free space or make {} writable, then continue \
             with --resume",
            last.display(),
            out.display()
        )
    } else {
        format!(
            "nothing was checkpointed yet: free space or make {} writable, then start again",
            out.display()
        )
    };
    Error::Checkpoint(format!("writing the run folder failed: {e}; {what_next}"))
}
