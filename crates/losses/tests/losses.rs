//! Losses and gradients against PyTorch (fixtures from tests/reference/losses/make_fixtures.py),
//! finite differences, and hand-derived cases.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use fer_losses::{
    ccc, ccc_loss, cross_entropy, inverse_frequency_weights, mse, stage_loss, va_loss, ClassInputs,
    LossConfig, LossError, Stage, VaInputs, CCC_EPS,
};
use fer_test_support::{assert_all_near, assert_near};
use serde_json::Value;

const REL: f64 = 1e-6;
const ABS: f64 = 1e-12;

fn dev() -> Device {
    Device::Cpu
}

fn var1(v: &[f64]) -> Var {
    Var::new(v, &dev()).unwrap()
}

fn t1(v: &[f64]) -> Tensor {
    Tensor::new(v, &dev()).unwrap()
}

fn var2(m: &[Vec<f64>]) -> Var {
    let k = m[0].len();
    let flat: Vec<f64> = m.iter().flatten().copied().collect();
    Var::from_tensor(&Tensor::from_vec(flat, (m.len(), k), &dev()).unwrap()).unwrap()
}

fn targets(v: &[i64]) -> Tensor {
    Tensor::new(v, &dev()).unwrap()
}

fn grad1(g: &candle_core::backprop::GradStore, v: &Var) -> Vec<f64> {
    g.get(v)
        .expect("gradient reaches the input")
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn ccc_eps_matches_the_fixture_generator() {
    assert_eq!(fixture("losses.json")["ccc_eps"].as_f64().unwrap(), CCC_EPS);
}

#[test]
fn cross_entropy_matches_pytorch_in_f64() {
    let fx = fixture("losses.json");
    for case in fx["cross_entropy"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let logits = var2(&matrix(&case["logits"]));
        let w = (!case["weights"].is_null()).then(|| t1(&f64s(&case["weights"])));
        let loss = cross_entropy(
            &logits,
            &targets(&i64s(&case["targets"])),
            w.as_ref(),
            case["label_smoothing"].as_f64().unwrap(),
        )
        .unwrap();
        assert_near(
            scalar(&loss),
            case["loss"].as_f64().unwrap(),
            REL,
            ABS,
            name,
        );
        let g = loss.backward().unwrap();
        let want: Vec<f64> = matrix(&case["grad"]).into_iter().flatten().collect();
        assert_all_near(
            &grad1(&g, &logits),
            &want,
            REL,
            ABS,
            &format!("{name} grad"),
        );
    }
}

#[test]
fn cross_entropy_in_f32_agrees_with_pytorch_to_f32_precision() {
    let fx = fixture("losses.json");
    let case = &fx["cross_entropy"][3]; // weights + smoothing + ignored targets
    let logits = var2(&matrix(&case["logits"]));
    let logits32 = Var::from_tensor(&logits.to_dtype(DType::F32).unwrap()).unwrap();
    let w = Tensor::new(
        f64s(&case["weights"])
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>(),
        &dev(),
    )
    .unwrap();
    let loss = cross_entropy(&logits32, &targets(&i64s(&case["targets"])), Some(&w), 0.2).unwrap();
    assert_eq!(loss.dtype(), DType::F32);
    assert_near(
        scalar(&loss),
        case["loss"].as_f64().unwrap(),
        1e-5,
        0.0,
        "f32 loss",
    );
}

#[test]
fn cross_entropy_with_no_valid_target_is_an_exact_zero_with_zero_gradients() {
    let logits = var2(&[vec![1.0, -2.0, 0.5], vec![0.0, 3.0, 1.0]]);
    let w = t1(&[1.0, 2.0, 3.0]);
    for (weights, eps) in [(None, 0.0), (Some(&w), 0.3)] {
        let loss = cross_entropy(&logits, &targets(&[-1, -1]), weights, eps).unwrap();
        assert_eq!(scalar(&loss), 0.0);
        let g = loss.backward().unwrap();
        assert!(grad1(&g, &logits).iter().all(|&x| x == 0.0));
    }
}

#[test]
fn cross_entropy_hand_derived_uniform_logits() {
    // Equal logits: every log-probability is -ln K, whatever the weights and smoothing.
    let logits = var2(&[vec![0.7; 4], vec![0.7; 4], vec![0.7; 4]]);
    let w = t1(&[1.0, 5.0, 0.5, 2.0]);
    let loss = cross_entropy(&logits, &targets(&[1, -1, 3]), Some(&w), 0.25).unwrap();
    // nll = ln 4; smooth = sum_k w_k ln4 * 2 rows / (w1 + w3) = 8.5*2/7 ln 4
    let ln4 = 4f64.ln();
    let want = 0.75 * ln4 + 0.25 / 4.0 * (8.5 * 2.0 / 7.0) * ln4;
    assert_near(scalar(&loss), want, 1e-12, 0.0, "uniform logits");
}

#[test]
fn cross_entropy_rejects_bad_input_with_the_sample_named() {
    let logits = var2(&[vec![0.0; 3], vec![0.0; 3]]);
    match cross_entropy(&logits, &targets(&[0, 3]), None, 0.0) {
        Err(LossError::InvalidClass {
            index: 1, value: 3, ..
        }) => {}
        other => panic!("expected InvalidClass for sample 1, got {other:?}"),
    }
    assert!(matches!(
        cross_entropy(&logits, &targets(&[0, -2]), None, 0.0),
        Err(LossError::InvalidClass { index: 1, .. })
    ));
    assert!(matches!(
        cross_entropy(&logits, &targets(&[0, 1]), Some(&t1(&[1.0, 1.0])), 0.0),
        Err(LossError::Shape { .. })
    ));
    let f = Tensor::new(&[0f32, 1.0], &dev()).unwrap();
    assert!(matches!(
        cross_entropy(&logits, &f, None, 0.0),
        Err(LossError::Shape { .. })
    ));
    assert!(matches!(
        cross_entropy(&logits, &targets(&[0, 1]), None, 1.5),
        Err(LossError::Config(_))
    ));
}

type RegFn = fn(&Tensor, &Tensor, &Tensor) -> fer_losses::Result<Tensor>;

#[test]
fn regression_losses_match_pytorch_in_f64() {
    let fx = fixture("losses.json");
    let fns: [(&str, RegFn); 3] = [("mse", mse), ("ccc", ccc), ("ccc_loss", ccc_loss)];
    for case in fx["regression"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        for (key, f) in fns {
            let pred = var1(&f64s(&case["pred"]));
            let out = f(
                &pred,
                &t1(&f64s(&case["target"])),
                &t1(&f64s(&case["mask"])),
            )
            .unwrap();
            let what = format!("{name} {key}");
            assert_near(scalar(&out), case[key].as_f64().unwrap(), REL, ABS, &what);
            let g = out.backward().unwrap();
            let want = f64s(&case[format!("{key}_grad")]);
            assert_all_near(&grad1(&g, &pred), &want, REL, ABS, &format!("{what} grad"));
        }
    }
}

#[test]
fn regression_losses_accept_f32_with_an_f32_mask() {
    let fx = fixture("losses.json");
    let case = &fx["regression"][0];
    let p = Tensor::new(
        f64s(&case["pred"])
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>(),
        &dev(),
    )
    .unwrap();
    let t = t1(&f64s(&case["target"])).to_dtype(DType::F32).unwrap();
    let m = t1(&f64s(&case["mask"])).to_dtype(DType::F32).unwrap();
    let l = ccc_loss(&p, &t, &m).unwrap();
    assert_eq!(l.dtype(), DType::F32);
    assert_near(
        scalar(&l),
        case["ccc_loss"].as_f64().unwrap(),
        1e-5,
        1e-6,
        "f32 ccc_loss",
    );
}

#[test]
fn ccc_loss_gradient_matches_central_differences() {
    let p0 = [0.31, -0.52, 0.08, 0.77, -0.13, 0.45, -0.9];
    let t = t1(&[0.5, -0.3, -2.0, 0.6, 0.1, 0.2, -0.7]);
    let m = t1(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    let f = |p: &[f64]| scalar(&ccc_loss(&t1(p), &t, &m).unwrap());
    let pred = var1(&p0);
    let g = grad1(&ccc_loss(&pred, &t, &m).unwrap().backward().unwrap(), &pred);
    let h = 1e-5;
    for i in 0..p0.len() {
        let (mut up, mut down) = (p0, p0);
        up[i] += h;
        down[i] -= h;
        let fd = (f(&up) - f(&down)) / (2.0 * h);
        // Central differences: truncation O(h^2) ~ 1e-10, round-off ~ 1e-16 / h ~ 1e-11.
        assert_near(g[i], fd, 1e-6, 1e-9, &format!("d ccc_loss / d p[{i}]"));
    }
    assert_eq!(g[2], 0.0, "a masked sample gets no gradient");
}

#[test]
fn all_masked_regression_terms_are_exact_zeros_with_zero_gradients() {
    let vp = var1(&[0.2, -0.4, 0.9]);
    let ap = var1(&[0.1, 0.3, -0.5]);
    let placeholder = t1(&[-2.0, f64::NAN, -2.0]);
    let mask = t1(&[0.0, 0.0, 0.0]);
    for (name, f) in [("mse", mse as RegFn), ("ccc", ccc), ("ccc_loss", ccc_loss)] {
        let l = f(&vp, &placeholder, &mask).unwrap();
        assert_eq!(scalar(&l), 0.0, "{name}");
        let g = l.backward().unwrap();
        assert!(grad1(&g, &vp).iter().all(|&x| x == 0.0), "{name}");
    }
    let l = va_loss(&vp, &ap, &placeholder, &placeholder, &mask).unwrap();
    assert_eq!(scalar(&l), 0.0);
    let g = l.backward().unwrap();
    assert!(grad1(&g, &vp)
        .iter()
        .chain(&grad1(&g, &ap))
        .all(|&x| x == 0.0));
}

#[test]
fn regression_losses_reject_bad_masks_and_missing_labels() {
    let p = t1(&[0.1, 0.2]);
    assert!(matches!(
        mse(&p, &t1(&[0.0, 0.0]), &t1(&[1.0, 0.5])),
        Err(LossError::InvalidMask { index: 1, .. })
    ));
    assert!(matches!(
        ccc(&p, &t1(&[f64::NAN, 0.0]), &t1(&[1.0, 1.0])),
        Err(LossError::NotFinite { index: 0, .. })
    ));
    assert!(matches!(
        mse(&p, &t1(&[0.0, 0.0, 0.0]), &t1(&[1.0, 1.0])),
        Err(LossError::Shape { .. })
    ));
    // A placeholder behind a 0 mask is fine.
    assert_eq!(
        scalar(&mse(&p, &t1(&[0.1, f64::NAN]), &t1(&[1.0, 0.0])).unwrap()),
        0.0
    );
}

fn stage_config(fx: &Value) -> LossConfig {
    serde_json::from_value(fx["config"].clone()).expect("the fixture config deserialises")
}

#[test]
fn stage_losses_match_pytorch_totals_and_gradients() {
    let fx = fixture("losses.json")["stages"].clone();
    let cfg = stage_config(&fx);
    for (stage, key) in [
        (Stage::Categorical, "categorical"),
        (Stage::Dimensional, "dimensional"),
        (Stage::Joint, "joint"),
        (Stage::VaOnly, "va-only"),
    ] {
        assert_eq!(serde_json::to_value(stage).unwrap(), key);
        let vp = var1(&f64s(&fx["valence_pred"]));
        let ap = var1(&f64s(&fx["arousal_pred"]));
        let lg = var2(&matrix(&fx["logits"]));
        let ax = var2(&matrix(&fx["aux_logits"]));
        let (v, a, m) = (
            t1(&f64s(&fx["valence"])),
            t1(&f64s(&fx["arousal"])),
            t1(&f64s(&fx["va_mask"])),
        );
        let y = targets(&i64s(&fx["targets"]));
        let parts = stage_loss(
            stage,
            &cfg,
            Some(ClassInputs {
                logits: &lg,
                aux_logits: Some(&ax),
                targets: &y,
            }),
            Some(VaInputs {
                valence_pred: &vp,
                arousal_pred: &ap,
                valence: &v,
                arousal: &a,
                mask: &m,
            }),
        )
        .unwrap();
        let want = &fx["stages"][key];
        assert_near(
            scalar(&parts.total),
            want["total"].as_f64().unwrap(),
            REL,
            ABS,
            key,
        );
        let g = parts.total.backward().unwrap();
        for (var, gk) in [
            (&vp, "grad_valence"),
            (&ap, "grad_arousal"),
            (&lg, "grad_logits"),
            (&ax, "grad_aux"),
        ] {
            let wg: Vec<f64> = match &want[gk][0] {
                Value::Array(_) => matrix(&want[gk]).into_iter().flatten().collect(),
                _ => f64s(&want[gk]),
            };
            // Inputs a stage does not use get no gradient at all.
            let got = g
                .get(var)
                .map(|_| grad1(&g, var))
                .unwrap_or(vec![0.0; wg.len()]);
            assert_all_near(&got, &wg, REL, ABS, &format!("{key} {gk}"));
        }
        // The logged parts recombine into the total.
        let (ce, va, aux) = (
            parts.ce.unwrap_or(0.0),
            parts.va.unwrap_or(0.0),
            parts.aux.unwrap_or(0.0),
        );
        let lambda = if stage == Stage::Categorical {
            1.0
        } else {
            cfg.lambda
        };
        let recombined = match stage {
            Stage::VaOnly => va,
            _ => va + lambda * ce + cfg.aux_weight * aux,
        };
        assert_near(
            recombined,
            scalar(&parts.total),
            1e-12,
            0.0,
            &format!("{key} parts"),
        );
        assert_eq!(parts.va.is_some(), stage.uses_va());
        assert_eq!(parts.ce.is_some(), stage.uses_classes());
        if stage.uses_va() {
            assert_near(
                parts.va.unwrap(),
                fx["va"].as_f64().unwrap(),
                REL,
                0.0,
                "L_va",
            );
        }
        assert_eq!(parts.ce_samples, if stage.uses_classes() { 8 } else { 0 });
        let n_va = f64s(&fx["va_mask"]).iter().sum::<f64>() as usize;
        assert_eq!(parts.va_samples, if stage.uses_va() { n_va } else { 0 });
    }
}

#[test]
fn stage_loss_requires_the_inputs_of_its_stage() {
    let p = t1(&[0.1]);
    let va = VaInputs {
        valence_pred: &p,
        arousal_pred: &p,
        valence: &p,
        arousal: &p,
        mask: &t1(&[1.0]),
    };
    let cfg = LossConfig::default();
    assert!(matches!(
        stage_loss(Stage::Joint, &cfg, None, Some(va)),
        Err(LossError::Config(_))
    ));
    assert!(matches!(
        stage_loss(Stage::Categorical, &cfg, None, Some(va)),
        Err(LossError::Config(_))
    ));
    assert!(stage_loss(Stage::VaOnly, &cfg, None, Some(va)).is_ok());
    let bad = LossConfig {
        lambda: -1.0,
        ..LossConfig::default()
    };
    assert!(matches!(
        stage_loss(Stage::VaOnly, &bad, None, Some(va)),
        Err(LossError::Config(_))
    ));
}

#[test]
fn loss_config_defaults_and_rejects_unknown_fields() {
    let cfg: LossConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, LossConfig::default());
    assert_eq!(cfg.lambda, 0.5);
    assert!(serde_json::from_str::<LossConfig>(r#"{"lamda": 0.3}"#).is_err());
}

#[test]
fn inverse_frequency_weights_hand_derived() {
    // 1/n = 0.1, -, 1/30, 1/60; mean over present = 0.05 -> 2, 0, 2/3, 1/3.
    let w = inverse_frequency_weights(&[10, 0, 30, 60]).unwrap();
    let want = [2.0, 0.0, 2.0 / 3.0, 1.0 / 3.0];
    for (g, e) in w.iter().zip(want) {
        assert_near(*g as f64, e, 1e-7, 0.0, "weight");
    }
    assert_eq!(inverse_frequency_weights(&[7, 7, 7]).unwrap(), vec![1.0; 3]);
    assert!(matches!(
        inverse_frequency_weights(&[0, 0]),
        Err(LossError::Config(_))
    ));
}
