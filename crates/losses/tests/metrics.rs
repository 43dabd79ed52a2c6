//! Metrics against NumPy / SciPy / scikit-learn (fixtures from
//! tests/reference/losses/make_fixtures.py), the streaming accumulator against one-shot results,
//! and degenerate cases.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use fer_losses::metrics::{accuracy, argmax_rows, confusion_matrix, macro_f1, regression_metrics};
use fer_losses::{LossError, Metrics, MetricsAccumulator, Predictions, RegressionMetrics};
use fer_test_support::{assert_all_near, assert_near};
use serde_json::Value;

const REL: f64 = 1e-9;

type Push<'a> = Box<dyn Fn(&mut MetricsAccumulator) -> fer_losses::Result<()> + 'a>;

fn check_reg(got: &RegressionMetrics, want: &Value, what: &str) {
    for (key, g) in [
        ("ccc", got.ccc),
        ("pcc", got.pcc),
        ("rmse", got.rmse),
        ("sagr", got.sagr),
    ] {
        assert_near(
            g,
            want[key].as_f64().unwrap(),
            REL,
            0.0,
            &format!("{what} {key}"),
        );
    }
}

fn confusion(v: &Value) -> Vec<Vec<u64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn regression_metrics_match_numpy_and_scipy() {
    let fx = fixture("metrics.json");
    for case in fx["regression"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (p, t) = (f64s(&case["pred"]), f64s(&case["target"]));
        let one_shot = regression_metrics(&p, &t).unwrap().unwrap();
        check_reg(&one_shot, case, name);
        if let Some(scipy) = case["scipy_pcc"].as_f64() {
            assert_near(
                one_shot.pcc,
                scipy,
                REL,
                0.0,
                &format!("{name} vs pearsonr"),
            );
        }
        // The streaming sums give the same numbers.
        let mut acc = MetricsAccumulator::new(1);
        let ones = vec![1.0; p.len()];
        acc.push_va(&p, &p, &t, &t, &ones).unwrap();
        check_reg(
            &acc.finish().valence.unwrap(),
            case,
            &format!("{name} (streamed)"),
        );
    }
}

#[test]
fn degenerate_regression_conventions() {
    // Constant predictions: PCC 0 (SciPy: NaN), CCC 0 since the covariance is 0.
    let m = regression_metrics(&[0.1f64; 5], &[0.3, -0.2, 0.9, 0.0, -0.5])
        .unwrap()
        .unwrap();
    assert_eq!((m.pcc, m.ccc), (0.0, 0.0));
    // Constant 0.1 is not exactly representable: a one-pass variance would be rounding noise.
    let mut acc = MetricsAccumulator::new(1);
    acc.push_va(
        &[0.1f64; 7],
        &[0.1; 7],
        &[0.3, -0.2, 0.9, 0.0, -0.5, 0.4, 0.2],
        &[0.0; 7],
        &[1.0; 7],
    )
    .unwrap();
    let m = acc.finish();
    assert_eq!((m.valence.unwrap().pcc, m.valence.unwrap().ccc), (0.0, 0.0));
    // Predictions equal to a constant truth: the one 0/0 case, perfect agreement.
    let a = m.arousal.unwrap();
    assert_eq!((a.ccc, a.pcc, a.sagr), (0.0, 0.0, 0.0)); // pred 0.1 vs truth 0: no agreement
    let same = regression_metrics(&[0.4f32; 3], &[0.4f32; 3])
        .unwrap()
        .unwrap();
    assert_eq!(
        (same.ccc, same.pcc, same.rmse, same.sagr),
        (1.0, 0.0, 0.0, 1.0)
    );
    // A single sample.
    let one = regression_metrics(&[0.4f64], &[-0.3]).unwrap().unwrap();
    assert_eq!((one.ccc, one.pcc, one.sagr), (0.0, 0.0, 0.0));
    assert_near(one.rmse, 0.7, 1e-15, 0.0, "single rmse");
    // SAGR with sign(0) = 0: 0 agrees only with 0 (and -0.0 is 0 too).
    let s = regression_metrics(&[0.0f64, -0.0, 0.0, 0.5], &[0.0, 0.0, 0.1, -0.5])
        .unwrap()
        .unwrap();
    assert_eq!(s.sagr, 0.5);
    assert!(regression_metrics::<f64>(&[], &[]).unwrap().is_none());
}

#[test]
fn classification_metrics_match_scikit_learn() {
    let fx = fixture("metrics.json");
    for case in fx["classification"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let (p, t) = (i64s(&case["pred"]), i64s(&case["truth"]));
        let acc = accuracy(&p, &t, k).unwrap().unwrap();
        assert_near(acc, case["accuracy"].as_f64().unwrap(), REL, 0.0, name);
        let f1 = macro_f1(&p, &t, k).unwrap().unwrap();
        assert_near(
            f1,
            case["macro_f1"].as_f64().unwrap(),
            REL,
            0.0,
            &format!("{name} f1"),
        );
        assert_eq!(
            confusion_matrix(&p, &t, k).unwrap(),
            confusion(&case["confusion"]),
            "{name}"
        );
    }
}

#[test]
fn macro_f1_ignores_classes_absent_from_truth_and_prediction() {
    // The fixture shows the difference to averaging over all K labels (absent ones scoring 0).
    let fx = fixture("metrics.json");
    let case = &fx["classification"][1];
    assert_eq!(case["name"], "absent_classes");
    let f1 = macro_f1(&i64s(&case["pred"]), &i64s(&case["truth"]), 8)
        .unwrap()
        .unwrap();
    let all = case["macro_f1_all_labels"].as_f64().unwrap();
    assert!(
        (f1 - all).abs() > 0.1,
        "the two conventions differ here: {f1} vs {all}"
    );
    // Hand-derived: truth [0,1,2,2,3,0,3,2,1,1], pred [0,1,1,2,4,0,2,2,4,1]
    // F1: c0 = 1, c1 = 2*2/(4+1+1) = 2/3, c2 = 2*2/(4+1+1) = 2/3, c3 = 0, c4 = 0 -> 7/3 / 5.
    assert_near(f1, 7.0 / 15.0, 1e-15, 0.0, "hand-derived macro-F1");
}

struct Stream {
    vp: Vec<f32>,
    ap: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    mask: Vec<f32>,
    logits: Vec<f32>,
    targets: Vec<i64>,
}

fn stream(fx: &Value) -> Stream {
    let f32s = |v: &Value| f64s(v).into_iter().map(|x| x as f32).collect::<Vec<_>>();
    Stream {
        vp: f32s(&fx["valence_pred"]),
        ap: f32s(&fx["arousal_pred"]),
        v: f32s(&fx["valence"]),
        a: f32s(&fx["arousal"]),
        mask: f32s(&fx["va_mask"]),
        logits: matrix(&fx["logits"])
            .into_iter()
            .flatten()
            .map(|x| x as f32)
            .collect(),
        targets: i64s(&fx["targets"]),
    }
}

fn push_range(acc: &mut MetricsAccumulator, s: &Stream, r: std::ops::Range<usize>) {
    let k = acc.num_classes();
    acc.push_batch(
        &s.vp[r.clone()],
        &s.ap[r.clone()],
        &s.v[r.clone()],
        &s.a[r.clone()],
        &s.mask[r.clone()],
        Predictions::Logits(&s.logits[r.start * k..r.end * k]),
        &s.targets[r],
    )
    .unwrap();
}

fn check_stream_metrics(m: &Metrics, fx: &Value) {
    check_reg(
        m.valence.as_ref().unwrap(),
        &fx["valence_metrics"],
        "valence",
    );
    check_reg(
        m.arousal.as_ref().unwrap(),
        &fx["arousal_metrics"],
        "arousal",
    );
    let c = &fx["class_metrics"];
    assert_near(
        m.accuracy.unwrap(),
        c["accuracy"].as_f64().unwrap(),
        REL,
        0.0,
        "accuracy",
    );
    assert_near(
        m.macro_f1.unwrap(),
        c["macro_f1"].as_f64().unwrap(),
        REL,
        0.0,
        "macro-F1",
    );
    assert_eq!(m.confusion.as_ref().unwrap(), &confusion(&c["confusion"]));
}

#[test]
fn streaming_over_uneven_batches_equals_one_shot_and_the_references() {
    let fx = fixture("metrics.json")["stream"].clone();
    let s = stream(&fx);
    let n = s.targets.len();
    let mut acc = MetricsAccumulator::new(8);
    let mut start = 0;
    for size in [1, 7, 0, 30, 50, 13] {
        push_range(&mut acc, &s, start..start + size);
        start += size;
    }
    push_range(&mut acc, &s, start..n);
    let streamed = acc.finish();
    check_stream_metrics(&streamed, &fx);

    // One-shot on the concatenation (two-pass moments, independent of the streaming sums).
    let keep: Vec<usize> = (0..n).filter(|&i| s.mask[i] == 1.0).collect();
    let pick = |v: &[f32]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let vo = regression_metrics(&pick(&s.vp), &pick(&s.v))
        .unwrap()
        .unwrap();
    let ao = regression_metrics(&pick(&s.ap), &pick(&s.a))
        .unwrap()
        .unwrap();
    for (got, want, what) in [
        (streamed.valence.unwrap(), vo, "valence"),
        (streamed.arousal.unwrap(), ao, "arousal"),
    ] {
        assert_all_near(
            &[got.ccc, got.pcc, got.rmse, got.sagr],
            &[want.ccc, want.pcc, want.rmse, want.sagr],
            REL,
            0.0,
            what,
        );
    }
    let pred = argmax_rows(&s.logits, 8).unwrap();
    assert_eq!(
        streamed.confusion.unwrap(),
        confusion_matrix(&pred, &s.targets, 8).unwrap()
    );
    assert_eq!(streamed.va_samples, keep.len() as u64);
    assert_eq!(
        streamed.class_samples,
        s.targets.iter().filter(|&&t| t >= 0).count() as u64
    );

    // Two shards merged give the same result as one pass.
    let (mut a, mut b) = (MetricsAccumulator::new(8), MetricsAccumulator::new(8));
    push_range(&mut a, &s, 0..60);
    push_range(&mut b, &s, 60..n);
    a.merge(&b).unwrap();
    check_stream_metrics(&a.finish(), &fx);
}

#[test]
fn push_tensors_equals_push_batch() {
    let fx = fixture("metrics.json")["stream"].clone();
    let s = stream(&fx);
    let n = s.targets.len();
    let dev = Device::Cpu;
    let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
    let mut acc = MetricsAccumulator::new(8);
    for r in [0..64, 64..n] {
        acc.push_tensors(
            &t(&s.vp[r.clone()]),
            &t(&s.ap[r.clone()]),
            &t(&s.v[r.clone()]),
            &t(&s.a[r.clone()]),
            &t(&s.mask[r.clone()]),
            &Tensor::from_slice(&s.logits[r.start * 8..r.end * 8], (r.len(), 8), &dev).unwrap(),
            &Tensor::new(&s.targets[r], &dev).unwrap(),
        )
        .unwrap();
    }
    check_stream_metrics(&acc.finish(), &fx);
}

#[test]
fn missing_labels_give_none_and_serialise_as_null() {
    let mut acc = MetricsAccumulator::new(3);
    let m = acc.finish();
    assert!(
        m.valence.is_none()
            && m.accuracy.is_none()
            && m.macro_f1.is_none()
            && m.confusion.is_none()
    );
    // All masked, all without class: still nothing.
    acc.push_batch(
        &[0.1f32, 0.2],
        &[0.0, 0.0],
        &[-2.0, -2.0],
        &[-2.0, -2.0],
        &[0.0, 0.0],
        Predictions::Classes(&[0, 2]),
        &[-1, -1],
    )
    .unwrap();
    let m = acc.finish();
    assert!(m.valence.is_none() && m.arousal.is_none() && m.accuracy.is_none());
    let json = serde_json::to_value(&m).unwrap();
    assert!(json["valence"].is_null() && json["confusion"].is_null());
    assert_eq!(json["va_samples"], 0);
    // Classes only (a categorical data set: empty VA slices).
    acc.push_batch::<f32>(&[], &[], &[], &[], &[], Predictions::Classes(&[1]), &[1])
        .unwrap();
    let m = acc.finish();
    assert_eq!((m.accuracy, m.macro_f1), (Some(1.0), Some(1.0)));
    assert!(m.valence.is_none());
    let back: Metrics = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
    assert_eq!(back, m);
}

#[test]
fn bad_batches_are_rejected_and_leave_the_accumulator_unchanged() {
    let mut acc = MetricsAccumulator::new(3);
    acc.push_batch(
        &[0.5f64],
        &[0.5],
        &[0.4],
        &[0.6],
        &[1.0],
        Predictions::Classes(&[1]),
        &[1],
    )
    .unwrap();
    let before = acc.finish();
    let ok_va = |m: f64| [vec![0.1], vec![0.2], vec![0.3], vec![0.4], vec![m]];
    let cases: Vec<(Push, &str)> = vec![
        (
            Box::new(|a| {
                let v = ok_va(0.5);
                a.push_batch(
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    Predictions::Classes(&[0]),
                    &[0],
                )
            }),
            "mask 0.5",
        ),
        (
            Box::new(|a| {
                let v = ok_va(1.0);
                a.push_batch(
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    Predictions::Classes(&[0]),
                    &[3],
                )
            }),
            "target 3 of 3 classes",
        ),
        (
            Box::new(|a| {
                let v = ok_va(1.0);
                a.push_batch(
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    Predictions::Classes(&[-1]),
                    &[0],
                )
            }),
            "predicted -1",
        ),
        (
            Box::new(|a| {
                let v = ok_va(1.0);
                a.push_batch(
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    Predictions::Logits(&[0.0, f32::NAN, 1.0]),
                    &[0],
                )
            }),
            "NaN logit",
        ),
        (
            Box::new(|a| {
                let v = ok_va(1.0);
                a.push_batch(
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    Predictions::Logits(&[0.0, 1.0]),
                    &[0],
                )
            }),
            "short logits",
        ),
        (
            Box::new(|a| {
                a.push_batch(
                    &[0.1f64, 0.2],
                    &[0.1],
                    &[0.1],
                    &[0.1],
                    &[1.0],
                    Predictions::Classes(&[0]),
                    &[0],
                )
            }),
            "length mismatch",
        ),
        (
            Box::new(|a| {
                a.push_batch(
                    &[0.1f64],
                    &[0.1],
                    &[f64::NAN],
                    &[0.1],
                    &[1.0],
                    Predictions::Classes(&[0]),
                    &[0],
                )
            }),
            "NaN valence",
        ),
    ];
    for (push, what) in cases {
        assert!(push(&mut acc).is_err(), "{what} must be rejected");
        assert_eq!(acc.finish(), before, "{what} left a trace");
    }
    // The error names the sample.
    let e = acc
        .push_batch(
            &[0.1f64, 0.1],
            &[0.1, 0.1],
            &[0.1, 0.1],
            &[0.1, 0.1],
            &[1.0, 2.0],
            Predictions::Classes(&[0, 0]),
            &[0, 0],
        )
        .unwrap_err();
    assert!(matches!(e, LossError::InvalidMask { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("sample 1"), "{e}");
    // A masked-out NaN placeholder is fine.
    acc.push_batch(
        &[0.1f64],
        &[0.1],
        &[f64::NAN],
        &[f64::NAN],
        &[0.0],
        Predictions::Classes(&[0]),
        &[-1],
    )
    .unwrap();
    assert!(acc.merge(&MetricsAccumulator::new(4)).is_err());
}

#[test]
fn argmax_takes_the_first_of_equal_maxima() {
    assert_eq!(
        argmax_rows(&[1.0, 3.0, 3.0, -1.0, 2.0, 2.0], 3).unwrap(),
        vec![1, 1]
    );
    assert_eq!(argmax_rows(&[0.0, 0.0], 2).unwrap(), vec![0]);
}
