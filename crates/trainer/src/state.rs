//! What a checkpoint records about the run besides weights and optimizer moments, and the
//! per-epoch history that `metrics.jsonl` is written from.

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// `stage1`, `stage2`, `joint` or `va-only`.
    pub stage: String,
    /// 1-based within the stage.
    pub epoch: usize,
    /// Optimizer steps taken in the stage so far.
    pub step: usize,
    /// Learning rate of the last step (unscaled group).
    pub lr: f64,
    /// Sample-weighted means over the epoch's batches.
    pub train_loss: f64,
    pub train_ce: Option<f64>,
    pub train_va: Option<f64>,
    pub train_aux: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_macro_f1: Option<f64>,
    pub val_valence_ccc: Option<f64>,
    pub val_arousal_ccc: Option<f64>,
    pub val_valence_rmse: Option<f64>,
    pub val_arousal_rmse: Option<f64>,
    /// Val predictions per class (absent without a categorical head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_predicted: Option<Vec<u64>>,
    /// The collapse warning of this epoch, if any (see [`crate::collapse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse: Option<String>,
    /// The early-stopping score of the stage (accuracy in stage 1, mean CCC otherwise).
    pub score: f64,
    pub best: bool,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The resumable position of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Index into the run's stage plan.
    pub stage_index: usize,
    /// Epochs completed in the current stage.
    pub epoch: usize,
    /// Optimizer steps taken in the current stage.
    pub step: usize,
    pub best_score: Option<f64>,
    pub best_epoch: usize,
    /// Epochs since the best score (for patience).
    pub bad_epochs: usize,
    pub history: Vec<EpochRecord>,
    /// Training time of all previous invocations (a resumed run adds its own).
    pub train_seconds: f64,
}

/// Checkpoint metadata keys.
pub mod keys {
    pub const STATE: &str = "train_state";
    pub const CONFIG: &str = "train_config";
    pub const STAGE: &str = "stage";
    pub const EPOCH: &str = "epoch";
    pub const STEP: &str = "step";
    pub const RNG: &str = "rng";
    pub const IMAGE_SIZE: &str = "image_size";
    pub const MARGIN: &str = "margin";
    pub const CLASS_NAMES: &str = "class_names";
    pub const STAGES: &str = "stages";
}
