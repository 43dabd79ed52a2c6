//! Optimizers, clipping and the schedule replayed against PyTorch (fixture written by
//! `tests/reference/optim/gen_optim.py` at the workspace root: AdamW / SGD with groups, `clip_grad_norm_`, LambdaLR warm-up+cosine).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use trainer::clip::clip_grad_norm;
use trainer::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use trainer::schedule::WarmupCosine;

const NAMES: [&str; 4] = [
    "backbone.conv.weight",
    "backbone.bn.weight",
    "head.fc.weight",
    "head.fc.bias",
];

struct Fixture {
    t: HashMap<String, Tensor>,
    steps: usize,
    sched: WarmupCosine,
    max_norm: f64,
    backbone_lr_scale: f64,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/optim.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let num = |k: &str| meta[k].parse::<f64>().unwrap();
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let steps = num("steps") as usize;
    Fixture {
        t,
        steps,
        sched: WarmupCosine {
            warmup_steps: num("warmup") as usize,
            total_steps: steps,
            min_factor: num("min_factor"),
        },
        max_norm: num("max_norm"),
        backbone_lr_scale: num("backbone_lr_scale"),
    }
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f64::max)
}

fn config(kind: OptimizerKind, fx: &Fixture) -> OptimizerConfig {
    match kind {
        OptimizerKind::Sgd => OptimizerConfig {
            kind,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.1,
            backbone_lr_scale: fx.backbone_lr_scale,
            ..Default::default()
        },
        OptimizerKind::Adamw => OptimizerConfig {
            kind,
            lr: 0.01,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            backbone_lr_scale: fx.backbone_lr_scale,
            ..Default::default()
        },
    }
}

fn vars(fx: &Fixture) -> Vec<(String, Var)> {
    NAMES
        .iter()
        .map(|n| {
            let v = Var::from_tensor(&fx.t[&format!("init.{n}")]).unwrap();
            (n.to_string(), v)
        })
        .collect()
}

fn grads_of(fx: &Fixture, k: usize, vars: &[(String, Var)]) -> GradStore {
    let mut g = GradStore::default();
    for (n, v) in vars {
        g.insert(v.as_tensor(), fx.t[&format!("grad.{k}.{n}")].clone());
    }
    g
}

/// Runs steps `from..to`, checking LR, pre-clip norm and parameters after each step.
fn replay(
    fx: &Fixture,
    tag: &str,
    opt: &mut Optimizer,
    vars: &[(String, Var)],
    from: usize,
    to: usize,
) {
    let all: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let lrs = fx.t[&format!("{tag}.lr")].to_vec1::<f64>().unwrap();
    let norms = fx.t[&format!("{tag}.norm")].to_vec1::<f64>().unwrap();
    for k in from..to {
        let lr = opt.config().lr * fx.sched.factor(k);
        assert!(
            (lr - lrs[k]).abs() <= 1e-12 * lrs[k],
            "{tag} step {k}: lr {lr} vs {}",
            lrs[k]
        );
        let mut g = grads_of(fx, k, vars);
        let norm = clip_grad_norm(&mut g, &all, fx.max_norm).unwrap();
        assert!(
            (norm - norms[k]).abs() <= 1e-12 * norms[k],
            "{tag} step {k}: norm"
        );
        opt.step(&g, lr).unwrap();
        for (n, v) in vars {
            let want = &fx.t[&format!("{tag}.param.{k}.{n}")];
            let e = max_rel_err(v.as_tensor(), want);
            assert!(e < 1e-10, "{tag} step {k} {n}: rel err {e}");
        }
    }
}

fn full_run(kind: OptimizerKind, tag: &str) {
    let fx = fixture();
    let vars = vars(&fx);
    let mut opt = Optimizer::new(&config(kind, &fx), vars.clone()).unwrap();
    replay(&fx, tag, &mut opt, &vars, 0, fx.steps);
}

#[test]
fn sgd_momentum_matches_pytorch() {
    full_run(OptimizerKind::Sgd, "sgd");
}

#[test]
fn adamw_matches_pytorch() {
    full_run(OptimizerKind::Adamw, "adamw");
}

/// Saving the state half way, rebuilding the optimizer from it and continuing lands exactly on
/// the uninterrupted PyTorch trajectory; the saved moments equal PyTorch's.
fn resumed_run(kind: OptimizerKind, tag: &str, slots: &[&str]) {
    let fx = fixture();
    let half = fx.steps / 2;
    let vars1 = vars(&fx);
    let mut opt = Optimizer::new(&config(kind, &fx), vars1.clone()).unwrap();
    replay(&fx, tag, &mut opt, &vars1, 0, half);
    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    for n in NAMES {
        for s in slots {
            let want = &fx.t[&format!("{tag}.state{}.{s}.{n}", half - 1)];
            let e = max_rel_err(&state[&format!("optim.{s}.{n}")], want);
            assert!(e < 1e-10, "{tag} state {s} {n}: {e}");
        }
        let step = state[&format!("optim.step.{n}")].to_vec1::<i64>().unwrap();
        assert_eq!(step, vec![half as i64]);
    }
    // Fresh variables holding the half-way values, a fresh optimizer, the saved state.
    let vars2: Vec<(String, Var)> = vars1
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut opt2 = Optimizer::new(&config(kind, &fx), vars2.clone()).unwrap();
    opt2.load_state(&state).unwrap();
    replay(&fx, tag, &mut opt2, &vars2, half, fx.steps);
}

#[test]
fn sgd_state_round_trip_resumes_exactly() {
    resumed_run(OptimizerKind::Sgd, "sgd", &["momentum_buffer"]);
}

#[test]
fn adamw_state_round_trip_resumes_exactly() {
    resumed_run(OptimizerKind::Adamw, "adamw", &["exp_avg", "exp_avg_sq"]);
}

#[test]
fn state_of_another_optimizer_or_model_is_rejected() {
    let fx = fixture();
    let vars1 = vars(&fx);
    let mut sgd = Optimizer::new(&config(OptimizerKind::Sgd, &fx), vars1.clone()).unwrap();
    replay(&fx, "sgd", &mut sgd, &vars1, 0, 1);
    let state: HashMap<String, Tensor> = sgd.state_tensors().unwrap().into_iter().collect();
    let mut adam = Optimizer::new(&config(OptimizerKind::Adamw, &fx), vars(&fx)).unwrap();
    let err = adam.load_state(&state).unwrap_err().to_string();
    assert!(
        err.contains("exp_avg") || err.contains("momentum_buffer"),
        "{err}"
    );

    let other = vec![(
        "head.other.weight".to_string(),
        Var::zeros((2, 2), candle_core::DType::F64, &Device::Cpu).unwrap(),
    )];
    let mut sgd2 = Optimizer::new(&config(OptimizerKind::Sgd, &fx), other).unwrap();
    let err = sgd2.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("unknown variable"), "{err}");
}

#[test]
fn groups_split_decay_and_backbone() {
    let fx = fixture();
    let opt = Optimizer::new(&config(OptimizerKind::Adamw, &fx), vars(&fx)).unwrap();
    let summary: Vec<(&str, f64, f64, Vec<&str>)> = opt
        .groups()
        .iter()
        .map(|g| {
            (
                g.name,
                g.lr_scale,
                g.weight_decay,
                g.params.iter().map(|(n, _)| n.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("backbone.decay", 0.1, 0.05, vec!["backbone.conv.weight"]),
            ("backbone.no_decay", 0.1, 0.0, vec!["backbone.bn.weight"]),
            ("head.decay", 1.0, 0.05, vec!["head.fc.weight"]),
            ("head.no_decay", 1.0, 0.0, vec!["head.fc.bias"]),
        ]
    );
}
