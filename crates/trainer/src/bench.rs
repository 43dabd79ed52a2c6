//! The training benchmark's measurement: images/second of a stage-2 training step (train-mode
//! forward, `L_va + lambda * CE (+ aux_weight * CE_aux)`, backward, AdamW step) and of an
//! eval-mode forward, on random inputs, for the model sizes of [`CASES`]. `cargo xtask
//! bench-train` runs it on the CPU (one child process per config, for its peak RSS) and `trainer
//! gpu-check` on a GPU; `tests/reference/bench/bench_pytorch.py` times PyTorch the same way, given
//! the case's [`Case::model`] as JSON.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_losses::{stage_loss, ClassInputs, LossConfig, Stage, VaInputs};
use fer_model::{trainable_vars, ModelConfig, TwoAttTwoMt};
use serde::{Deserialize, Serialize};

use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::world::World;
use crate::{Error, Result};

/// Untimed steps before the timed ones (ours and PyTorch alike).
pub const WARMUP: usize = 2;

/// The model a [`Case`] trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `ModelConfig::default()` (the paper-sized model) with this backbone depth and no
    /// auxiliary head.
    Paper { depth: usize },
    /// The `[model]` of a shipped config (its TOML, embedded).
    Config(&'static str),
}

/// One benchmark config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: &'static str,
    /// What the row label says about the model, e.g. "ResNet-18".
    pub desc: &'static str,
    pub arch: Arch,
    pub size: usize,
    pub batch: usize,
}

/// a: ResNet-18 at 112 px, batch 32; b: ResNet-18 at 224 px, batch 16; c: ResNet-50 at 224 px,
/// batch 8 (a-c: the default model, no auxiliary head); d: the FER-2013 CPU model
/// (`configs/fer2013-cpu.toml`) at 48 px, batch 64; e: the default CPU model
/// (`configs/default-cpu.toml`) at 48 px, batch 64 (d, e: with their auxiliary head).
pub const CASES: [Case; 5] = [
    Case {
        name: "a",
        desc: "ResNet-18",
        arch: Arch::Paper { depth: 18 },
        size: 112,
        batch: 32,
    },
    Case {
        name: "b",
        desc: "ResNet-18",
        arch: Arch::Paper { depth: 18 },
        size: 224,
        batch: 16,
    },
    Case {
        name: "c",
        desc: "ResNet-50",
        arch: Arch::Paper { depth: 50 },
        size: 224,
        batch: 8,
    },
    Case {
        name: "d",
        desc: "FER R18 x0.5",
        arch: Arch::Config(crate::config::FER2013_CPU_TOML),
        size: 48,
        batch: 64,
    },
    Case {
        name: "e",
        desc: "default R18 x0.25",
        arch: Arch::Config(crate::config::DEFAULT_CPU_TOML),
        size: 48,
        batch: 64,
    },
];

impl Case {
    /// The model config this case builds (the PyTorch twin gets it as JSON).
    pub fn model(&self) -> ModelConfig {
        match self.arch {
            Arch::Paper { depth } => {
                let mut cfg = ModelConfig::default();
                cfg.backbone.depth = depth;
                cfg.aux_head = false;
                cfg
            }
            Arch::Config(toml) => {
                crate::config::TrainConfig::from_toml_str(toml, std::path::Path::new(self.name))
                    .expect("the shipped configs parse (tested)")
                    .model
            }
        }
    }

    /// The row label, e.g. "(a) ResNet-18 112 px, batch 32".
    pub fn label(&self) -> String {
        format!(
            "({}) {} {} px, batch {}",
            self.name, self.desc, self.size, self.batch
        )
    }
}

/// What one process measured (ours or PyTorch's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub train_img_s: f64,
    pub infer_img_s: f64,
    /// Host memory: on a GPU the device memory is not in it.
    pub peak_rss_mib: f64,
    /// Data-parallel runs only: the ranks, and the share of a training step spent summing
    /// gradients across them (median all-reduce time over median step time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_share: Option<f64>,
    /// The gradients summed per step (MiB of f32) and the median seconds that took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_seconds: Option<f64>,
}

/// Measures `case` on `dev` in this process: [`WARMUP`] + `steps` training steps, then as many
/// eval-mode forwards; the median step time of each. The figures are the trainer's when the
/// process has tuned its allocator as the trainer does ([`crate::alloc::keep_freed_memory`]).
pub fn measure(case: &Case, steps: usize, dev: &Device) -> Result<Speed> {
    measure_in(&World::single(), case, steps, dev)
}

/// [`measure`] as one rank of a data-parallel run: each rank steps on its part of the batch
/// and the ranks sum their gradients before the optimizer step, as `trainer train` does. The
/// images per second are the global batch's; inference is per rank (nothing is exchanged).
pub fn measure_in(world: &World, case: &Case, steps: usize, dev: &Device) -> Result<Speed> {
    let cfg = case.model();
    let varmap = VarMap::new();
    let model = TwoAttTwoMt::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let opt_cfg = OptimizerConfig {
        kind: OptimizerKind::Adamw,
        lr: 1e-4,
        ..OptimizerConfig::default()
    };
    let mut opt = Optimizer::new(&opt_cfg, trainable_vars(&varmap))?;
    let loss_cfg = LossConfig::default();

    let (global, s, k) = (case.batch, case.size, cfg.num_classes);
    let b = world.part().range(global).len();
    let weight = b as f64 / global as f64;
    let vars = opt.vars();
    let floats: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut reduce_secs = Vec::with_capacity(steps + WARMUP);
    let images = Tensor::randn(0f32, 1.0, (b, 3, s, s), dev)?;
    let classes = Tensor::rand(0f32, k as f32, b, dev)?.floor()?;
    let classes = classes.clamp(0f32, (k - 1) as f32)?.to_dtype(DType::I64)?;
    let valence = Tensor::rand(-1f32, 1.0, b, dev)?;
    let arousal = Tensor::rand(-1f32, 1.0, b, dev)?;
    let mask = Tensor::ones(b, DType::F32, dev)?;

    let train = time_steps(steps, dev, || {
        let out = model.forward(&images, true)?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::Config("the benchmark model has no class logits".into()))?;
        let class = ClassInputs {
            logits,
            aux_logits: out.aux_logits.as_ref(),
            targets: &classes,
        };
        let va = VaInputs {
            valence_pred: &out.valence,
            arousal_pred: &out.arousal,
            valence: &valence,
            arousal: &arousal,
            mask: &mask,
        };
        let parts = stage_loss(Stage::Dimensional, &loss_cfg, Some(class), Some(va))?;
        let mut grads = parts.total.backward()?;
        let t = Instant::now();
        world.sum_gradients(&mut grads, &vars, weight)?;
        reduce_secs.push(t.elapsed().as_secs_f64());
        opt.step(&grads, opt_cfg.lr)?;
        Ok(())
    })?;
    let reduce = median(&mut reduce_secs[WARMUP..].to_vec()).unwrap_or(0.0);
    let infer = time_steps(steps, dev, || {
        model.forward(&images, false)?;
        Ok(())
    })?;
    let distributed = world.size() > 1;
    Ok(Speed {
        train_img_s: global as f64 / train,
        infer_img_s: b as f64 / infer,
        peak_rss_mib: peak_rss_kib()? as f64 / 1024.0,
        ranks: distributed.then_some(world.size()),
        allreduce_share: distributed.then_some(reduce / train),
        allreduce_mib: distributed.then_some(floats as f64 * 4.0 / (1 << 20) as f64),
        allreduce_seconds: distributed.then_some(reduce),
    })
}

/// Median seconds of `steps` calls of `f` after [`WARMUP`] untimed ones. Each call ends with a
/// device synchronisation: GPU work is queued, and the clock would otherwise stop at the launch.
fn time_steps(steps: usize, dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    dev.synchronize()?;
    let mut secs = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    median(&mut secs).ok_or_else(|| Error::Config("the benchmark needs at least one step".into()))
}

pub use fer_measure::median;

/// This process's peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> Result<u64> {
    fer_measure::peak_rss_kib()
        .ok_or_else(|| Error::Data("/proc/self/status: no VmHWM line (not Linux?)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_build_the_models_they_name() {
        let names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        for case in &CASES {
            case.model().validate().unwrap();
        }
        // a-c: the default model, depth set, no auxiliary head.
        let c = CASES[2].model();
        assert_eq!(c.backbone.depth, 50);
        assert!(!c.aux_head);
        let mut default = ModelConfig::default();
        default.backbone.depth = 50;
        default.aux_head = false;
        assert_eq!(c, default);
        assert_eq!(CASES[0].label(), "(a) ResNet-18 112 px, batch 32");
        assert_eq!(CASES[3].label(), "(d) FER R18 x0.5 48 px, batch 64");
    }

    /// d and e benchmark the CPU configs' models, with their auxiliary head and batch size.
    #[test]
    fn cpu_cases_are_their_config_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for (case, file) in [
            (&CASES[3], "fer2013-cpu.toml"),
            (&CASES[4], "default-cpu.toml"),
        ] {
            let cfg = crate::config::TrainConfig::from_file(&dir.join(file)).unwrap();
            assert_eq!(case.model(), cfg.model, "config {} vs {file}", case.name);
            assert!(cfg.model.aux_head, "{file}");
            assert_eq!(case.batch, cfg.data.batch_size, "{file}");
        }
    }
}
