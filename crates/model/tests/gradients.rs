//! After one backward every trainable variable has a non-zero gradient (ops without a backward
//! would silently leave some at zero), and the BatchNorm running statistics are left to the
//! forward pass.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{is_running_stat, trainable_vars, ModelConfig, TwoAttTwoMt};

fn check_all_gradients(cfg: &ModelConfig, batch: usize, size: usize) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = TwoAttTwoMt::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
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
    let grads = Tensor::stack(&terms, 0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let trainable = trainable_vars(&varmap);
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
        let norm = grads
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
        if !(norm > 0.0 && norm.is_finite()) {
            dead.push(name.clone());
        }
    }
    assert!(dead.is_empty(), "no gradient for {dead:?}");
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if is_running_stat(name) {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient"
            );
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
