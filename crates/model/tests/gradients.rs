//! Every trainable variable gets a non-zero gradient from backward (ops without a backward would
//! silently leave some at zero), and the BatchNorm running statistics are left to the forward
//! pass.
//!
//! A head's narrow ReLU layer can be dead for every sample of one small random batch (then its
//! weights rightly get a zero gradient), so a variable passes when one of a few independent random
//! batches reaches it; an op without a backward never does.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{is_running_stat, trainable_vars, ModelConfig, TwoAttTwoMt};

fn check_all_gradients(cfg: &ModelConfig, batch: usize, size: usize) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = TwoAttTwoMt::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let trials: Vec<_> = (0..3).map(|_| backward_once(&model, batch, size)).collect();
    check_trials(&varmap, &trials);
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

fn check_trials(varmap: &VarMap, trials: &[candle_core::backprop::GradStore]) {
    let trainable = trainable_vars(varmap);
    let all = varmap.all_vars().len();
    let running = varmap
        .data()
        .lock()
        .unwrap()
        .keys()
        .filter(|k| is_running_stat(k))
        .count();
    assert!(running > 0);
    assert_eq!(trainable.len() + running, all);
    let mut dead = vec![];
    for (name, var) in &trainable {
        assert!(!is_running_stat(name));
        let norms: Vec<f32> = trials
            .iter()
            .map(|grads| {
                grads
                    .get(var.as_tensor())
                    .map(|g| {
                        g.sqr()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                    })
                    .unwrap_or(0.0)
            })
            .collect();
        assert!(
            norms.iter().all(|n| n.is_finite()),
            "{name}: non-finite gradient"
        );
        if norms.iter().all(|n| *n == 0.0) {
            dead.push(name.clone());
        }
    }
    assert!(dead.is_empty(), "no gradient for {dead:?}");
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if is_running_stat(name) {
            for grads in trials {
                assert!(
                    grads.get(var.as_tensor()).is_none(),
                    "{name} got a gradient"
                );
            }
        }
    }
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
    // The DESIGN.md sizes (ResNet-18, d 256, LSTM 128), on a small input to stay fast.
    check_all_gradients(&ModelConfig::default(), 2, 64);
}
