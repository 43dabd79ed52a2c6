//! The run configuration: one TOML file with the model, loss, optimizer, data and stage sections.

use std::path::{Path, PathBuf};

use fer_data::augment::AugmentConfig;
use fer_losses::LossConfig;
use fer_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerConfig;
use crate::{Error, Result};

/// The configuration `trainer` uses when run with no arguments.
pub const DEFAULT_CPU_TOML: &str = include_str!("../../../configs/default-cpu.toml");

/// `configs/fer2013-cpu.toml`, embedded for the benchmark of its model (`bench-train` case d).
pub const FER2013_CPU_TOML: &str = include_str!("../../../configs/fer2013-cpu.toml");

/// What is trained, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Stage 1 categorical, then stage 2 `L_va + lambda L_ce` from the stage-1 weights.
    TwoStage,
    /// One stage with both losses.
    Joint,
    /// One stage, valence/arousal only, no categorical head.
    VaOnly,
}

/// Loader settings for training (evaluation never augments or shuffles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Images per optimizer step. In a data-parallel run this is the global batch, split across
    /// the ranks, so a config trains the same way on any number of processes.
    pub batch_size: usize,
    /// Gradient accumulation: each rank's share of a batch is forwarded and backpropagated in
    /// this many parts (each with its own BatchNorm statistics, as a rank of a data-parallel run
    /// has), their gradients summed before the step. Less memory per step, same update as this
    /// many times more ranks.
    pub micro_batches: usize,
    pub eval_batch_size: usize,
    /// The loader's own decoding/augmentation threads (separate from the compute threads).
    pub loader_threads: usize,
    pub prefetch: usize,
    /// Class-balanced sampling (with replacement).
    pub balanced: bool,
    /// Inverse-frequency class weights in the cross-entropy, from the training histogram.
    pub class_weighted: bool,
    pub augment: AugmentConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            micro_batches: 1,
            eval_batch_size: 64,
            loader_threads: 1,
            prefetch: 2,
            balanced: false,
            class_weighted: false,
            augment: AugmentConfig::default(),
        }
    }
}

/// One training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    pub epochs: usize,
    /// Overrides `optimizer.lr` for this stage.
    pub lr: Option<f64>,
    /// Linear warm-up length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Floor of the cosine decay as a fraction of the stage's learning rate.
    pub min_lr_factor: f64,
    /// Stop after this many epochs without a better validation score (none: never stop early).
    pub patience: Option<usize>,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            lr: None,
            warmup_epochs: 1.0,
            min_lr_factor: 0.01,
            patience: None,
        }
    }
}

/// Everything a training run needs besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub mode: Mode,
    /// Seeds the weight initialisation and every random draw of the loader.
    pub seed: u64,
    /// Clip the gradients to this global L2 norm (none: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// torchvision ResNet weights (`.pth` or `.safetensors`) to start the backbone from.
    pub backbone_weights: Option<PathBuf>,
    /// Faces drawn in the attention heat-map figure of the report.
    pub report_faces: usize,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999); then
    /// validation, the best checkpoints and the final model are the average's (none: off).
    pub ema_decay: Option<f64>,
    pub model: ModelConfig,
    pub loss: LossConfig,
    pub optimizer: OptimizerConfig,
    pub data: DataConfig,
    /// Stage 1 of `two-stage`; the single stage of `joint` and `va-only`.
    pub stage1: StageConfig,
    /// Stage 2 of `two-stage` (unused otherwise).
    pub stage2: StageConfig,
    /// Whether the TOML set `model.aux_head` itself. When it did not, the trainer decides: on for
    /// a backbone trained from scratch (it stalls without), off with pretrained weights.
    #[serde(skip)]
    pub aux_head_set: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: Mode::TwoStage,
            seed: 0,
            clip_grad_norm: Some(5.0),
            backbone_weights: None,
            report_faces: 6,
            ema_decay: None,
            model: ModelConfig::default(),
            loss: LossConfig::default(),
            optimizer: OptimizerConfig::default(),
            data: DataConfig::default(),
            stage1: StageConfig::default(),
            stage2: StageConfig::default(),
            aux_head_set: false,
        }
    }
}

/// Command-line values that replace config fields.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub backbone_weights: Option<PathBuf>,
}

impl TrainConfig {
    pub fn from_toml_str(s: &str, origin: &Path) -> Result<Self> {
        let mut cfg: TrainConfig = toml::from_str(s).map_err(|e| Error::ConfigFile {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.aux_head_set = toml::from_str::<toml::Table>(s)
            .ok()
            .and_then(|t| t.get("model")?.get("aux_head").cloned())
            .is_some();
        cfg.validate().map_err(|e| Error::ConfigFile {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&s, path)
    }

    /// The embedded default (`configs/default-cpu.toml`).
    pub fn default_cpu() -> Self {
        Self::from_toml_str(DEFAULT_CPU_TOML, Path::new("configs/default-cpu.toml"))
            .expect("the embedded default config is valid")
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Decides `model.aux_head` when the config left it out (docs/ARCHITECTURE.md: a backbone
    /// trained from scratch needs the auxiliary head, a pretrained one does not) and says which
    /// it is and why.
    pub fn resolve_aux_head(&mut self, has_stage2: bool) -> String {
        let why = if !self.model.categorical {
            self.model.aux_head = false;
            "no categorical task"
        } else if self.aux_head_set {
            "set in the config"
        } else if self.backbone_weights.is_some() {
            self.model.aux_head = false;
            "default with pretrained backbone weights"
        } else {
            self.model.aux_head = true;
            "default for a backbone trained from scratch"
        };
        self.aux_head_set = true;
        let state = if self.model.aux_head { "on" } else { "off" };
        let weight = match (self.model.aux_head, has_stage2) {
            (false, _) => String::new(),
            (true, false) => format!(", loss weight {}", self.loss.aux_weight),
            (true, true) => format!(
                ", loss weight {} in stage 1{}",
                self.loss.aux_weight,
                if self.loss.aux_in_stage2 {
                    " and stage 2"
                } else {
                    ", none in stage 2"
                }
            ),
        };
        format!("auxiliary categorical head: {state} ({why}{weight})")
    }

    /// `--epochs` sets every stage's epochs; `--lr` the base rate (and clears stage overrides).
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let Some(e) = o.epochs {
            self.stage1.epochs = e;
            self.stage2.epochs = e;
        }
        if let Some(b) = o.batch_size {
            self.data.batch_size = b;
        }
        if let Some(lr) = o.lr {
            self.optimizer.lr = lr;
            self.stage1.lr = None;
            self.stage2.lr = None;
        }
        if let Some(s) = o.seed {
            self.seed = s;
        }
        if let Some(w) = &o.backbone_weights {
            self.backbone_weights = Some(w.clone());
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        self.model
            .validate()
            .map_err(|e| Error::Config(format!("model: {e}")))?;
        self.loss
            .validate()
            .map_err(|e| Error::Config(format!("loss: {e}")))?;
        self.optimizer.validate()?;
        self.data
            .augment
            .validate()
            .map_err(|e| Error::Config(format!("data.augment: {e}")))?;
        if self.data.micro_batches == 0 {
            return Err(Error::Config(
                "data.micro_batches must be at least 1".into(),
            ));
        }
        if self.data.batch_size == 0 || self.data.eval_batch_size == 0 {
            return Err(Error::Config("data: batch sizes must be at least 1".into()));
        }
        if self.data.loader_threads == 0 {
            return Err(Error::Config(
                "data.loader_threads must be at least 1".into(),
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if c.is_nan() || c <= 0.0 {
                return Err(Error::Config("clip_grad_norm must be > 0".into()));
            }
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return Err(Error::Config(format!(
                    "ema_decay must be in [0, 1), got {d}"
                )));
            }
        }
        for (name, s) in [("stage1", &self.stage1), ("stage2", &self.stage2)] {
            if s.epochs == 0 {
                return Err(Error::Config(format!("{name}.epochs must be at least 1")));
            }
            if let Some(lr) = s.lr {
                if lr.is_nan() || lr <= 0.0 {
                    return Err(Error::Config(format!("{name}.lr must be > 0")));
                }
            }
            if s.warmup_epochs.is_nan() || s.warmup_epochs < 0.0 {
                return Err(Error::Config(format!("{name}.warmup_epochs must be >= 0")));
            }
            if !(0.0..=1.0).contains(&s.min_lr_factor) {
                return Err(Error::Config(format!(
                    "{name}.min_lr_factor must be in [0, 1]"
                )));
            }
        }
        if self.mode == Mode::VaOnly && self.model.categorical {
            // va-only has no categorical head; say so rather than silently changing the model.
            return Err(Error::Config(
                "mode = \"va-only\" needs model.categorical = false".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_round_trips() {
        let cfg = TrainConfig::default_cpu();
        let back = TrainConfig::from_toml_str(&cfg.to_toml().unwrap(), Path::new("x")).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn the_auxiliary_head_follows_the_design_unless_set() {
        let parse = |s: &str| TrainConfig::from_toml_str(s, Path::new("x.toml")).unwrap();
        // Left out, from scratch: on.
        let mut c = parse("[model]\nnum_classes = 7\n");
        assert!(!c.aux_head_set);
        let note = c.resolve_aux_head(true);
        assert!(c.model.aux_head, "{note}");
        assert!(
            note.contains("on (default for a backbone trained from scratch"),
            "{note}"
        );
        assert!(note.contains("in stage 1 and stage 2"), "{note}");
        // Left out, pretrained backbone: off.
        let mut c = parse("backbone_weights = \"r18.pth\"\n");
        let note = c.resolve_aux_head(true);
        assert!(
            !c.model.aux_head && note.contains("off (default with pretrained"),
            "{note}"
        );
        // Set: kept either way, and said so.
        let mut c = parse("[model]\naux_head = false\n");
        let note = c.resolve_aux_head(false);
        assert!(
            !c.model.aux_head && note.contains("off (set in the config)"),
            "{note}"
        );
        let mut c = parse("backbone_weights = \"r18.pth\"\n[model]\naux_head = true\n");
        c.loss.aux_in_stage2 = false;
        let note = c.resolve_aux_head(true);
        assert!(
            c.model.aux_head && note.contains("none in stage 2"),
            "{note}"
        );
        // Once resolved, the written config says it explicitly.
        let back = parse(&c.to_toml().unwrap());
        assert!(back.aux_head_set && back.model.aux_head);
    }

    #[test]
    fn unknown_field_names_the_file() {
        let err =
            TrainConfig::from_toml_str("mode = \"two-stage\"\nepochz = 3\n", Path::new("a.toml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("a.toml") && err.contains("epochz"), "{err}");
    }

    #[test]
    fn overrides_apply() {
        let mut cfg = TrainConfig::default();
        cfg.stage2.lr = Some(0.3);
        cfg.apply(&Overrides {
            epochs: Some(3),
            batch_size: Some(7),
            lr: Some(0.02),
            seed: Some(9),
            backbone_weights: Some(PathBuf::from("r18.pth")),
        })
        .unwrap();
        assert_eq!(cfg.backbone_weights, Some(PathBuf::from("r18.pth")));
        assert_eq!((cfg.stage1.epochs, cfg.stage2.epochs), (3, 3));
        assert_eq!(cfg.data.batch_size, 7);
        assert_eq!((cfg.optimizer.lr, cfg.stage2.lr, cfg.seed), (0.02, None, 9));
        assert!(cfg
            .apply(&Overrides {
                epochs: Some(0),
                ..Default::default()
            })
            .is_err());
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"));
        for name in [
            "default-cpu.toml",
            "affectnet-resnet50.toml",
            "folder-cpu.toml",
            "fer2013-cpu.toml",
        ] {
            let cfg = TrainConfig::from_file(&dir.join(name)).unwrap();
            assert!(cfg.stage1.epochs > 0, "{name}");
        }
        let r50 = TrainConfig::from_file(&dir.join("affectnet-resnet50.toml")).unwrap();
        assert_eq!(r50.optimizer.kind, crate::optim::OptimizerKind::Adamw);
        assert_eq!((r50.model.backbone.depth, r50.loss.aux_weight), (50, 0.0));
    }
}
