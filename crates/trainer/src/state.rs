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
    /// With `ema_decay` the val fields and `score` are the moving average's; this is the score
    /// of the trained weights themselves, for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_score: Option<f64>,
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

impl TrainState {
    /// Counts a finished epoch whose validation score is `score`; `true` when it is the stage's
    /// best so far (the first epoch always is).
    pub fn end_epoch(&mut self, score: f64) -> bool {
        self.epoch += 1;
        let best = self.best_score.is_none_or(|b| score > b);
        if best {
            self.best_score = Some(score);
            self.best_epoch = self.epoch;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        best
    }

    /// Whether early stopping ends the stage now: `patience` epochs without a better score,
    /// and epochs left of the `epochs` planned (a stage that is over anyway is not "stopped").
    pub fn out_of_patience(&self, patience: usize, epochs: usize) -> bool {
        self.bad_epochs >= patience && self.epoch < epochs
    }

    /// Moves to the next stage of the plan, which starts with no epochs, steps or best score.
    pub fn next_stage(&mut self) {
        *self = TrainState {
            stage_index: self.stage_index + 1,
            history: std::mem::take(&mut self.history),
            train_seconds: self.train_seconds,
            ..TrainState::default()
        };
    }
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
    /// Ranks of the data-parallel run that wrote the checkpoint.
    pub const WORLD_SIZE: &str = "world_size";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_epoch_and_patience_follow_the_scores() {
        let mut s = TrainState::default();
        let best: Vec<bool> = [0.5, 0.4, 0.6, 0.6, 0.55]
            .into_iter()
            .map(|score| s.end_epoch(score))
            .collect();
        // Ties are not improvements: the earlier epoch stays the best.
        assert_eq!(best, [true, false, true, false, false]);
        assert_eq!((s.epoch, s.best_epoch, s.bad_epochs), (5, 3, 2));
        assert_eq!(s.best_score, Some(0.6));
        assert!(s.out_of_patience(2, 10));
        assert!(!s.out_of_patience(3, 10));
        // The last planned epoch ends the stage by itself.
        assert!(!s.out_of_patience(2, 5));
    }

    #[test]
    fn a_new_stage_keeps_only_the_history_and_the_clock() {
        let mut s = TrainState {
            stage_index: 0,
            epoch: 4,
            step: 400,
            best_score: Some(0.7),
            best_epoch: 3,
            bad_epochs: 1,
            history: vec![],
            train_seconds: 12.5,
        };
        s.next_stage();
        assert_eq!(
            s,
            TrainState {
                stage_index: 1,
                train_seconds: 12.5,
                ..TrainState::default()
            }
        );
    }
}
