//! Every trainable variable gets a non-zero gradient from backward (ops without a backward would
//! silently leave some at zero), and the BatchNorm running statistics are left to the forward
//! pass.
//!
//! A head's narrow ReLU layer can be dead for every sample of a batch (then its weights rightly get
//! a zero gradient). Whether it is depends mostly on the initial weights, not on the input: the
//! pooled, attended features vary little between images. So each trial draws a fresh model as well
//! as a fresh batch, and a variable passes when one of those independent trials reaches it; an op
//! without a backward never does.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{is_running_stat, trainable_vars, ModelConfig, TwoAttTwoMt};

struct Trial {
    varmap: VarMap,
    grads: candle_core::backprop::GradStore,
}

fn check_all_gradients(cfg: &ModelConfig, batch: usize, size: usize) {
    let trials: Vec<_> = (0..3)
        .map(|_| {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let model = TwoAttTwoMt::new(cfg, vb).unwrap();
            let grads = backward_once(&model, batch, size);
            Trial { varmap, grads }
        })
        .collect();
    check_trials(&trials);
}

fn backward_once(
    model: &TwoAttTwoMt,
    batch: usize,
    size: usize,
) -> candle_core::backprop::GradStore {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &dev).unwrap();
    let out = model.forward(&x, true).unwrap();
    let mut terms = vec![];
    for t in [
        out.logits.as_ref(),
        Some(&out.valence),
        Some(&out.arousal),
        out.aux_logits.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let r = Tensor::randn(0f32, 1.0, t.dims(), &dev).unwrap();
        terms.push((t * r).unwrap().sum_all().unwrap());
    }
    Tensor::stack(&terms, 0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn check_trials(trials: &[Trial]) {
    let mut dead = vec![];
    for (i, trial) in trials.iter().enumerate() {
        let trainable = trainable_vars(&trial.varmap);
        let data = trial.varmap.data().lock().unwrap();
        let running: Vec<_> = data.keys().filter(|k| is_running_stat(k)).collect();
        assert!(!running.is_empty());
        assert_eq!(trainable.len() + running.len(), data.len());
        for name in running {
            assert!(
                trial.grads.get(data[name].as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
        for (name, var) in &trainable {
            let norm = trial
                .grads
                .get(var.as_tensor())
                .map(|g| {
                    g.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .unwrap_or(0.0);
            assert!(norm.is_finite(), "{name}: non-finite gradient");
            let was_dead = i == 0 || dead.contains(name);
            dead.retain(|d| d != name);
            if was_dead && norm == 0.0 {
                dead.push(name.clone());
            }
        }
    }
    assert!(dead.is_empty(), "no gradient in any trial for {dead:?}");
}

#[test]
fn every_fixture_config_trains_every_variable() {
    for case in [
        "r18_w0625_lstm_aux",
        "r18_w0625_small_gru_k7",
        "r18_w0625_small_s2_no_att1",
        "r18_w0625_small_s2_no_att2",
        "r18_w0625_small_s2_va_only",
        "r50_w0625_lstm",
        "r34_w0625_gru",
    ] {
        let cfg = common::Fixture::load(case).config;
        let size = if cfg.backbone.stem == fer_model::Stem::Small {
            32
        } else {
            64
        };
        check_all_gradients(&cfg, 4, size);
    }
}

#[test]
fn default_config_trains_every_variable() {
    // The default sizes (ResNet-18, d 256, LSTM 128), on a small input to stay fast.
    check_all_gradients(&ModelConfig::default(), 2, 64);
}
