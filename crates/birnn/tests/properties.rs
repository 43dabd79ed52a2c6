//! Structure of the bidirectional RNN: which steps each direction sees, the symmetry between
//! directions, initialisation, config parsing and refused input.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_birnn::{BiRnn, BiRnnConfig, RnnKind};
use fer_test_support::max_abs_diff;

const KINDS: [RnnKind; 2] = [RnnKind::Lstm, RnnKind::Gru];

fn build(kind: RnnKind, varmap: &VarMap) -> BiRnn {
    let vb = VarBuilder::from_varmap(varmap, DType::F64, &Device::Cpu);
    BiRnn::new(3, &BiRnnConfig { kind, hidden: 4 }, vb).unwrap()
}

#[test]
fn forward_states_see_the_past_and_backward_states_the_future() {
    for kind in KINDS {
        let varmap = VarMap::new();
        let rnn = build(kind, &varmap);
        let x = Tensor::randn(0f64, 1.0, (2, 5, 3), &Device::Cpu).unwrap();
        let out = rnn.forward(&x).unwrap();
        // Change step 2 only.
        let bump = Tensor::zeros((2, 5, 3), DType::F64, &Device::Cpu)
            .unwrap()
            .slice_assign(
                &[0..2, 2..3, 0..3],
                &Tensor::ones((2, 1, 3), DType::F64, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let out2 = rnn.forward(&(&x + bump).unwrap()).unwrap();
        for t in 0..5 {
            let fwd = max_abs_diff(
                &out.i((.., t, 0..4)).unwrap(),
                &out2.i((.., t, 0..4)).unwrap(),
            );
            let bwd = max_abs_diff(
                &out.i((.., t, 4..8)).unwrap(),
                &out2.i((.., t, 4..8)).unwrap(),
            );
            // The forward state at t depends on steps <= t, the backward one on steps >= t.
            assert_eq!(
                fwd == 0.0,
                t < 2,
                "{kind:?} forward state at {t}: change {fwd}"
            );
            assert_eq!(
                bwd == 0.0,
                t > 2,
                "{kind:?} backward state at {t}: change {bwd}"
            );
        }
    }
}

#[test]
fn swapping_direction_weights_mirrors_the_sequence() {
    // Running with forward/backward weights exchanged on the time-reversed input must give the
    // time-reversed output with its two halves exchanged.
    for kind in KINDS {
        let varmap = VarMap::new();
        let rnn = build(kind, &varmap);
        let swapped = VarMap::new();
        {
            let src = varmap.data().lock().unwrap();
            let mut dst = swapped.data().lock().unwrap();
            for (name, var) in src.iter() {
                let other = match name.strip_suffix("_reverse") {
                    Some(base) => base.to_string(),
                    None => format!("{name}_reverse"),
                };
                let copy = candle_core::Var::from_tensor(&var.as_tensor().copy().unwrap()).unwrap();
                dst.insert(other, copy);
            }
        }
        let mirrored = build(kind, &swapped);
        let x = Tensor::randn(0f64, 1.0, (2, 4, 3), &Device::Cpu).unwrap();
        let out = rnn.forward(&x).unwrap();
        let out_m = mirrored
            .forward(&x.flip(&[1]).unwrap())
            .unwrap()
            .flip(&[1])
            .unwrap();
        let expect = Tensor::cat(
            &[
                out.i((.., .., 4..8)).unwrap(),
                out.i((.., .., 0..4)).unwrap(),
            ],
            2,
        )
        .unwrap();
        assert!(max_abs_diff(&out_m, &expect) < 1e-14, "{kind:?}");
    }
}

#[test]
fn batch_rows_are_independent() {
    for kind in KINDS {
        let varmap = VarMap::new();
        let rnn = build(kind, &varmap);
        let x = Tensor::randn(0f64, 1.0, (3, 4, 3), &Device::Cpu).unwrap();
        let all = rnn.forward(&x).unwrap();
        for b in 0..3 {
            let one = rnn.forward(&x.narrow(0, b, 1).unwrap()).unwrap();
            assert!(max_abs_diff(&one, &all.narrow(0, b, 1).unwrap()) < 1e-14);
        }
    }
}

#[test]
fn weights_have_pytorch_names_shapes_and_init() {
    for (kind, gates) in [(RnnKind::Lstm, 4), (RnnKind::Gru, 3)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        BiRnn::new(40, &BiRnnConfig { kind, hidden: 64 }, vb.pp("rnn")).unwrap();
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let want = [
            ("bias_hh_l0", vec![gates * 64]),
            ("bias_ih_l0", vec![gates * 64]),
            ("weight_hh_l0", vec![gates * 64, 64]),
            ("weight_ih_l0", vec![gates * 64, 40]),
        ];
        assert_eq!(names.len(), 8);
        let bound = 1.0 / 8.0; // 1/sqrt(h)
        for (base, shape) in want {
            for name in [format!("rnn.{base}"), format!("rnn.{base}_reverse")] {
                let t = data
                    .get(&name)
                    .unwrap_or_else(|| panic!("missing {name}"))
                    .as_tensor();
                assert_eq!(t.dims(), shape.as_slice(), "{name}");
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                assert!(
                    v.iter().all(|x| x.abs() <= bound),
                    "{name} exceeds 1/sqrt(h)"
                );
                let n = v.len() as f32;
                let mean = v.iter().sum::<f32>() / n;
                let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
                // uniform(-k, k) has std k/sqrt(3); biases have only 192-256 samples.
                let rel = (std / (bound / 3f32.sqrt()) - 1.0).abs();
                assert!(
                    rel < if t.rank() == 1 { 0.15 } else { 0.05 },
                    "{name}: std {std}"
                );
            }
        }
    }
}

#[test]
fn config_parses_lowercase_kinds_with_defaults() {
    let cfg: BiRnnConfig = serde_json::from_str(r#"{"kind": "gru"}"#).unwrap();
    assert_eq!(
        cfg,
        BiRnnConfig {
            kind: RnnKind::Gru,
            hidden: 128
        }
    );
    let cfg: BiRnnConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, BiRnnConfig::default());
    assert_eq!(cfg.kind, RnnKind::Lstm);
    assert!(serde_json::from_str::<BiRnnConfig>(r#"{"kind": "Lstm"}"#).is_err());
    assert!(serde_json::from_str::<BiRnnConfig>(r#"{"kind": "rnn"}"#).is_err());
    assert_eq!(serde_json::to_string(&RnnKind::Gru).unwrap(), r#""gru""#);
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let varmap = VarMap::new();
    let rnn = build(RnnKind::Lstm, &varmap);
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64, &Device::Cpu).unwrap();
    let msg = |s: &[usize]| {
        rnn.forward(&z(s))
            .expect_err("bad input accepted")
            .to_string()
    };
    let e = msg(&[2, 3]);
    assert!(e.contains("rank-3") && e.contains("[2, 3]"), "{e}");
    let e = msg(&[2, 3, 5]);
    assert!(e.contains("expected 3 input features, got 5"), "{e}");
    let e = msg(&[2, 0, 3]);
    assert!(e.contains("empty sequence"), "{e}");
}
