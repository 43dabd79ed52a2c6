//! Which stages a run trains, decided from the mode and from what labels the data carries.

use fer_losses::Stage;

use crate::config::{Mode, StageConfig, TrainConfig};
use crate::{Error, Result};

/// One stage of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    pub loss: Stage,
    /// `stage1`, `stage2`, `joint` or `va-only`: names files, logs and metrics.
    pub name: &'static str,
    /// Which config section holds its epochs and learning rate (1 or 2).
    pub section: u8,
}

impl StagePlan {
    pub fn config<'a>(&self, cfg: &'a TrainConfig) -> &'a StageConfig {
        if self.section == 2 {
            &cfg.stage2
        } else {
            &cfg.stage1
        }
    }

    /// Stage 1 stops early on accuracy; the stages that learn valence/arousal on mean CCC.
    pub fn scores_ccc(&self) -> bool {
        self.loss.uses_va()
    }
}

const S1: StagePlan = StagePlan {
    loss: Stage::Categorical,
    name: "stage1",
    section: 1,
};
const S2: StagePlan = StagePlan {
    loss: Stage::Dimensional,
    name: "stage2",
    section: 2,
};
const JOINT: StagePlan = StagePlan {
    loss: Stage::Joint,
    name: "joint",
    section: 1,
};
const VA: StagePlan = StagePlan {
    loss: Stage::VaOnly,
    name: "va-only",
    section: 1,
};

/// Whether a run of these stages (by name, as a checkpoint records them) trained valence and
/// arousal; unknown names count as training them, so nothing is hidden from older files.
pub fn trains_va<S: AsRef<str>>(stage_names: &[S]) -> bool {
    stage_names.iter().any(|n| {
        [S1, S2, JOINT, VA]
            .iter()
            .find(|p| p.name == n.as_ref())
            .is_none_or(|p| p.loss.uses_va())
    })
}

/// What the data holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    pub va: bool,
    pub classes: bool,
}

/// Adapts `cfg` to the data and returns the stages plus notes for the user. Data without V/A
/// trains the categorical task only; data without classes trains V/A only.
pub fn resolve(
    cfg: &mut TrainConfig,
    labels: Labels,
    num_classes: usize,
) -> Result<(Vec<StagePlan>, Vec<String>)> {
    let mut notes = vec![];
    if !labels.va && !labels.classes {
        return Err(Error::Data(
            "the training split has neither class nor valence/arousal labels".into(),
        ));
    }
    if cfg.model.num_classes != num_classes {
        notes.push(format!(
            "the data has {num_classes} classes: model.num_classes set to {num_classes} (config said {})",
            cfg.model.num_classes
        ));
        cfg.model.num_classes = num_classes;
    }
    let stages = if !labels.va {
        if cfg.mode == Mode::VaOnly {
            return Err(Error::Data(
                "mode \"va-only\" needs valence/arousal labels and the data has none".into(),
            ));
        }
        notes.push(
            "the data has no valence/arousal labels: training the categorical task only (stage 1)"
                .into(),
        );
        vec![S1]
    } else if !labels.classes {
        if cfg.mode != Mode::VaOnly {
            notes.push(
                "the data has no class labels: training valence/arousal only (va-only)".into(),
            );
        }
        cfg.mode = Mode::VaOnly;
        cfg.model.categorical = false;
        cfg.model.aux_head = false;
        vec![VA]
    } else {
        match cfg.mode {
            Mode::TwoStage => vec![S1, S2],
            Mode::Joint => vec![JOINT],
            Mode::VaOnly => {
                cfg.model.aux_head = false;
                vec![VA]
            }
        }
    };
    Ok((stages, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn va_training_by_stage_names() {
        assert!(!trains_va(&["stage1"]));
        assert!(trains_va(&["stage1", "stage2"]));
        assert!(trains_va(&["joint"]) && trains_va(&["va-only"]));
        assert!(trains_va(&["a-later-stage"]));
    }

    #[test]
    fn folder_data_trains_stage1_only() {
        let mut cfg = TrainConfig::default();
        let (s, notes) = resolve(
            &mut cfg,
            Labels {
                va: false,
                classes: true,
            },
            8,
        )
        .unwrap();
        assert_eq!(s.iter().map(|p| p.name).collect::<Vec<_>>(), vec!["stage1"]);
        assert!(notes[0].contains("no valence/arousal"));
    }

    #[test]
    fn va_only_data_drops_the_categorical_head() {
        let mut cfg = TrainConfig::default();
        cfg.model.aux_head = true;
        let (s, _) = resolve(
            &mut cfg,
            Labels {
                va: true,
                classes: false,
            },
            8,
        )
        .unwrap();
        assert_eq!(s[0].loss, Stage::VaOnly);
        assert!(!cfg.model.categorical && !cfg.model.aux_head);
    }

    #[test]
    fn two_stage_and_class_count() {
        let mut cfg = TrainConfig::default();
        let (s, notes) = resolve(
            &mut cfg,
            Labels {
                va: true,
                classes: true,
            },
            7,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(cfg.model.num_classes, 7);
        assert_eq!(notes.len(), 1);
        assert!(resolve(
            &mut cfg,
            Labels {
                va: false,
                classes: false
            },
            7
        )
        .is_err());
    }
}
