//! Attention maps are distributions; bad input is refused with a clear message; weights start
//! from PyTorch's default initialisation; configs read from serde formats.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_attention::{GlobalPool, LayerSelfAttention, PositionAttention, PositionAttentionConfig};

fn dev() -> Device {
    Device::Cpu
}

/// Non-negative, rows summing to 1 (within f32 rounding), finite.
fn assert_distribution(t: &Tensor, rows: usize) {
    let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert!(flat.iter().all(|x| x.is_finite() && *x >= 0.0), "{flat:?}");
    let per_row = flat.len() / rows;
    for r in flat.chunks(per_row) {
        let s: f32 = r.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
    }
}

#[test]
fn position_attention_map_is_a_distribution() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let att = PositionAttention::new(6, &PositionAttentionConfig { d: 8, a: 4 }, vb).unwrap();
    // Scale 1 and a scale that saturates tanh and gives large scores: softmax must stay stable.
    for scale in [1.0, 1e4] {
        let f = (Tensor::randn(0f32, 1.0, (3, 6, 4, 7), &dev()).unwrap() * scale).unwrap();
        let out = att.forward(&f).unwrap();
        assert_eq!(out.alpha.dims(), &[3, 4, 7]);
        assert_eq!(out.v.dims(), &[3, 8]);
        assert_distribution(&out.alpha, 3);
    }
}

#[test]
fn position_attention_flat_map_gets_uniform_weights() {
    // Every position of a constant map scores the same, whatever the weights.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let att = PositionAttention::new(2, &PositionAttentionConfig { d: 4, a: 3 }, vb).unwrap();
    let flat = (Tensor::ones((1, 2, 3, 3), DType::F32, &dev()).unwrap() * 0.7).unwrap();
    let alpha = att.forward(&flat).unwrap().alpha;
    let alpha: Vec<f32> = alpha.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        alpha.iter().all(|a| (a - 1.0 / 9.0).abs() < 1e-6),
        "{alpha:?}"
    );
}

#[test]
fn position_attention_hand_computed() {
    // C = d = a = 1 with unit weights and zero biases: p = f, e = tanh(f), v = u + g.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev());
    let att = PositionAttention::new(1, &PositionAttentionConfig { d: 1, a: 1 }, vb).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let value = if name.ends_with("bias") { 0.0 } else { 1.0 };
        var.set(
            &var.as_tensor()
                .ones_like()
                .unwrap()
                .affine(0.0, value)
                .unwrap(),
        )
        .unwrap();
    }
    let f = Tensor::new(&[0f64, 5.0], &dev())
        .unwrap()
        .reshape((1, 1, 1, 2))
        .unwrap();
    let out = att.forward(&f).unwrap();
    let w = 5f64.tanh().exp();
    let alpha = [1.0 / (1.0 + w), w / (1.0 + w)];
    let v = alpha[1] * 5.0 + 2.5;
    let got_alpha: Vec<f64> = out.alpha.flatten_all().unwrap().to_vec1().unwrap();
    let got_v: f64 = out.v.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
    assert!((got_alpha[0] - alpha[0]).abs() < 1e-12 && (got_alpha[1] - alpha[1]).abs() < 1e-12);
    assert!((got_v - v).abs() < 1e-12, "{got_v} vs {v}");
}

#[test]
fn global_pool_is_the_mean_of_the_projection_with_uniform_map() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let pool = GlobalPool::new(3, &PositionAttentionConfig { d: 2, a: 9 }, vb).unwrap();
    // Hand-set weights: proj = [[1, 0, 0], [1, 1, 1]], bias = [0.5, -1].
    let w = Tensor::new(&[[1f32, 0., 0.], [1., 1., 1.]], &dev())
        .unwrap()
        .reshape((2, 3, 1, 1))
        .unwrap();
    varmap.data().lock().unwrap()["proj.weight"]
        .set(&w)
        .unwrap();
    varmap.data().lock().unwrap()["proj.bias"]
        .set(&Tensor::new(&[0.5f32, -1.], &dev()).unwrap())
        .unwrap();
    // One sample, 3 channels over 2 positions: c0 = [1, 3], c1 = [2, 2], c2 = [0, 4].
    let f = Tensor::new(&[1f32, 3., 2., 2., 0., 4.], &dev())
        .unwrap()
        .reshape((1, 3, 1, 2))
        .unwrap();
    let out = pool.forward(&f).unwrap();
    // v0 = mean(c0) + 0.5 = 2.5; v1 = mean(c0 + c1 + c2) - 1 = mean([3, 9]) - 1 = 5.
    assert_eq!(out.v.to_vec2::<f32>().unwrap(), vec![vec![2.5, 5.0]]);
    assert_eq!(
        out.alpha.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0.5, 0.5]
    );
    assert_eq!(
        varmap.all_vars().len(),
        2,
        "GlobalPool has only proj.weight and proj.bias"
    );
}

#[test]
fn layer_attention_weights_are_a_distribution() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let att = LayerSelfAttention::new(10, 4, vb).unwrap();
    for scale in [1.0, 1e4] {
        let h = (Tensor::randn(0f32, 1.0, (5, 3, 10), &dev()).unwrap() * scale).unwrap();
        let out = att.forward(&h).unwrap();
        assert_eq!(out.z.dims(), &[5, 10]);
        assert_distribution(&out.beta, 5);
    }
}

#[test]
fn layer_attention_of_identical_layers_returns_that_layer() {
    // With h_1 = h_2 = h_3 every score is equal: beta = 1/3 and z = h_1.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let att = LayerSelfAttention::new(4, 3, vb).unwrap();
    let one = Tensor::new(&[[0.3f32, -1.0, 2.0, 0.0]], &dev()).unwrap();
    let h = Tensor::stack(&[&one, &one, &one], 1).unwrap();
    let out = att.forward(&h).unwrap();
    let z = out.z.to_vec2::<f32>().unwrap();
    for (a, b) in z[0].iter().zip([0.3f32, -1.0, 2.0, 0.0]) {
        assert!((a - b).abs() < 1e-6);
    }
    for b in out.beta.to_vec2::<f32>().unwrap()[0].iter() {
        assert!((b - 1.0 / 3.0).abs() < 1e-6);
    }
}

fn err_of(r: candle_core::Result<impl std::fmt::Debug>) -> String {
    r.expect_err("bad input accepted").to_string()
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    let cfg = PositionAttentionConfig { d: 4, a: 2 };
    let att = PositionAttention::new(6, &cfg, vb.pp("a")).unwrap();
    let pool = GlobalPool::new(6, &cfg, vb.pp("p")).unwrap();
    let att2 = LayerSelfAttention::new(4, 2, vb.pp("l")).unwrap();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev()).unwrap();

    let e = err_of(att.forward(&z(&[2, 5, 3, 3])));
    assert!(
        e.contains("PositionAttention") && e.contains("expected 6 channels, got 5"),
        "{e}"
    );
    let e = err_of(att.forward(&z(&[2, 6, 9])));
    assert!(e.contains("rank-4") && e.contains("[2, 6, 9]"), "{e}");
    let e = err_of(pool.forward(&z(&[1, 6, 0, 3])));
    assert!(e.contains("GlobalPool") && e.contains("empty"), "{e}");
    let e = err_of(att2.forward(&z(&[2, 3, 5])));
    assert!(
        e.contains("LayerSelfAttention") && e.contains("expected 4 features, got 5"),
        "{e}"
    );
    let e = err_of(att2.forward(&z(&[2, 0, 4])));
    assert!(e.contains("empty layer sequence"), "{e}");
}

#[test]
fn fresh_weights_follow_pytorch_default_init() {
    // PyTorch: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases of Linear/Conv2d,
    // i.e. std = bound / sqrt(3).
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev());
    PositionAttention::new(400, &PositionAttentionConfig { d: 256, a: 128 }, vb).unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, fan_in) in [
        ("proj.weight", 400),
        ("score_w.weight", 256),
        ("fuse.weight", 512),
    ] {
        let w: Vec<f32> = data[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound), "{name} exceeds {bound}");
        let n = w.len() as f32;
        let mean = w.iter().sum::<f32>() / n;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        let want = bound / 3f32.sqrt();
        assert!(
            (std / want - 1.0).abs() < 0.03,
            "{name}: std {std} vs {want}"
        );
        assert!(mean.abs() < 0.02 * bound, "{name}: mean {mean}");
    }
    assert_eq!(data["score_v.weight"].as_tensor().dims(), &[1, 128, 1, 1]);
    assert_eq!(data["proj.weight"].as_tensor().dims(), &[256, 400, 1, 1]);
}

#[test]
fn config_reads_from_json_with_defaults() {
    let cfg: PositionAttentionConfig = serde_json::from_str(r#"{"a": 64}"#).unwrap();
    assert_eq!(cfg, PositionAttentionConfig { d: 256, a: 64 });
    assert!(serde_json::from_str::<PositionAttentionConfig>(r#"{"dd": 3}"#).is_err());
    let back: PositionAttentionConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}
