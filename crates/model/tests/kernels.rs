//! The model on our CPU kernels (the default) and on plain candle ops gives the same outputs,
//! running statistics and gradients. Its own test binary: the kernel switch is process-wide.
//!
//! The reference is the plain-op model in f64: comparing two f32 runs measures their rounding
//! as much as their agreement. On this input the plain f32 run's BatchNorm gradients (candle
//! sums thousands of cancelling terms in one serial f32 chain) are up to 6.5e-2 of their size
//! away from f64, while the kernels (lane-wise partial sums, f64 across planes) stay within
//! 3e-5.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{trainable_vars, ModelConfig, TwoAttTwoMt};

/// Forward in train mode, backward of a fixed random projection of every output; returns the
/// outputs, then every variable's gradient (trainables) or value (running statistics), by name,
/// as f32.
fn run(cfg: &ModelConfig, x: &Tensor, fast: bool, dtype: DType) -> Vec<(String, Tensor)> {
    fer_kernels::set_enabled(fast);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
    let model = TwoAttTwoMt::new(cfg, vb).unwrap();
    // Same weights on both paths: overwrite the random init with a deterministic one.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let n = var.elem_count();
        // A function of the name only: the map's iteration order differs between runs.
        let seed = name
            .bytes()
            .fold(17usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % 1000;
        let v: Vec<f32> = (0..n)
            .map(|j| (((j * 7919 + seed * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 0.2)
            .collect();
        let v = if name.ends_with("running_var") {
            vec![1.0; n]
        } else {
            v
        };
        let v = Tensor::from_vec(v, var.shape(), &dev).unwrap();
        var.set(&v.to_dtype(dtype).unwrap()).unwrap();
    }
    let out = model.forward(&x.to_dtype(dtype).unwrap(), true).unwrap();
    let logits = out.logits.clone().unwrap();
    let r = Tensor::arange(0f32, logits.elem_count() as f32, &dev)
        .unwrap()
        .reshape(logits.dims())
        .unwrap()
        .sin()
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let loss = ((logits.clone() * r).unwrap().sum_all().unwrap()
        + (out.valence.clone() * 0.7).unwrap().sum_all().unwrap()
        - (out.arousal.clone() * 1.3).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut got = vec![
        ("logits".to_string(), logits),
        ("valence".to_string(), out.valence),
        ("arousal".to_string(), out.arousal),
    ];
    let mut names: Vec<_> = trainable_vars(&varmap).into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in names {
        got.push((format!("grad {name}"), grads.get(&var).unwrap().clone()));
    }
    let mut running: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.contains("running"))
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    running.sort_by(|a, b| a.0.cmp(&b.0));
    got.extend(running);
    got.into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn max_abs(t: &Tensor) -> f32 {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn fast_kernels_and_candle_ops_agree() {
    let mut cfg = ModelConfig::default();
    cfg.backbone.width = 0.125;
    // The loss below reads the main outputs only; the auxiliary head would get no gradient.
    cfg.aux_head = false;
    let x = Tensor::arange(0f32, (3 * 3 * 64 * 64) as f32, &Device::Cpu)
        .unwrap()
        .affine(0.37, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((3, 3, 64, 64))
        .unwrap();
    let fast = run(&cfg, &x, true, DType::F32);
    let exact = run(&cfg, &x, false, DType::F64);
    let plain = run(&cfg, &x, false, DType::F32);
    assert_eq!(fast.len(), exact.len());
    let (mut worst, mut plain_worst) = (0f32, 0f32);
    for (((name, a), (name_e, e)), (_, p)) in fast.iter().zip(&exact).zip(&plain) {
        assert_eq!(name, name_e);
        let scale = max_abs(e).max(1e-3);
        let diff = max_abs(&(a - e).unwrap());
        worst = worst.max(diff / scale);
        assert!(diff <= 1e-4 * scale, "{name}: {diff} (scale {scale})");
        // The plain f32 forward is well conditioned: outputs and running statistics agree too.
        if !name.starts_with("grad ") {
            let diff = max_abs(&(p - e).unwrap());
            assert!(diff <= 1e-4 * scale, "plain {name}: {diff} (scale {scale})");
        }
        plain_worst = plain_worst.max(max_abs(&(p - e).unwrap()) / scale);
    }
    assert!(
        worst > 0.0,
        "f32 kernels against f64 ops must differ in rounding"
    );
    // The fast path must not be the less accurate one.
    assert!(
        worst <= plain_worst,
        "kernels {worst} vs plain {plain_worst}"
    );
}
