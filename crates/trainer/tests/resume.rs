//! A run stopped after an epoch and resumed ends with exactly the metrics of an uninterrupted
//! run with the same seed; NaN losses stop the run with a precise message.

mod common;

use common::*;

fn train(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    train_tiny(tiny_affectnet(), out, extra)
}

/// Every number of metrics.json but the wall time, and every metrics.jsonl value but timings.
fn numbers(run: &std::path::Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut m = read_json(&run.join("metrics.json"));
    m.as_object_mut().unwrap().remove("train_seconds");
    (m, history_without_timings(run))
}

#[test]
fn resumed_runs_match_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ok(&train(&full, &[]));
    let (m_full, h_full) = numbers(&full);
    assert!(m_full["val"]["accuracy"].is_number());
    assert!(m_full["test"]["accuracy"].is_number());

    // Stopped inside stage 1 (after epoch 1) and at the stage boundary (after epoch 2), then
    // once more inside stage 2: three resumes.
    let cut = dir.path().join("cut");
    let out = ok(&train(&cut, &["--stop-after-epochs", "1"]));
    assert!(out.is_empty(), "a stopped run prints no final table");
    assert!(!cut.join("metrics.json").exists());
    ok(&train(&cut, &["--resume", "--stop-after-epochs", "1"]));
    ok(&train(&cut, &["--resume", "--stop-after-epochs", "1"]));
    ok(&train(&cut, &["--resume"]));
    let (m_cut, h_cut) = numbers(&cut);
    assert_eq!(h_full.len(), 4);
    assert_eq!(h_cut, h_full, "per-epoch history differs after resume");
    assert_eq!(m_cut, m_full, "final metrics differ after resume");
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    ok(&train(&a, &["--epochs", "1"]));
    ok(&train(&b, &["--epochs", "1"]));
    ok(&train(&c, &["--epochs", "1", "--seed", "99"]));
    assert_eq!(numbers(&a), numbers(&b));
    assert_ne!(numbers(&a).1, numbers(&c).1);
}

#[test]
fn nan_loss_stops_with_stage_epoch_step_and_last_values() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(&train(&dir.path().join("r"), &["--fault-nan-step", "3"]));
    assert!(e.contains("non-finite loss"), "{e}");
    assert!(e.contains("stage1"), "{e}");
    assert!(e.contains("epoch 1, step 3"), "{e}");
    assert!(e.contains("last finite values: step 3, loss"), "{e}");
}

#[test]
fn huge_learning_rate_is_caught() {
    // Without clipping, lr 1e12 blows the weights up within a few steps.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("huge.toml");
    let text = std::fs::read_to_string(TINY)
        .unwrap()
        .replace("clip_grad_norm = 5.0\n", "");
    std::fs::write(&cfg, text).unwrap();
    let data = tiny_affectnet();
    let out = dir.path().join("r");
    let e = err(&trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "1e12",
    ]));
    assert!(e.contains("non-finite"), "{e}");
    assert!(e.contains("stage1"), "{e}");
}

/// With `ema_decay`, the moving average is checkpointed with the run (a resumed run ends
/// exactly as an uninterrupted one), every epoch scores both the average and the trained
/// weights, and the best checkpoint holds the average: evaluating it gives its epoch's val
/// numbers, not the trained weights'.
#[test]
fn moving_average_resumes_exactly_and_is_the_model_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ema.toml");
    let text = std::fs::read_to_string(TINY).unwrap();
    std::fs::write(&cfg, format!("ema_decay = 0.9\n{text}")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let data = tiny_affectnet();

    let full = dir.path().join("full");
    ok(&train_with(data, cfg, &full, &[]));
    let cut = dir.path().join("cut");
    ok(&train_with(data, cfg, &cut, &["--stop-after-epochs", "1"]));
    ok(&train_with(
        data,
        cfg,
        &cut,
        &["--resume", "--stop-after-epochs", "2"],
    ));
    ok(&train_with(data, cfg, &cut, &["--resume"]));
    let (m_full, h_full) = numbers(&full);
    assert_eq!(numbers(&cut), (m_full.clone(), h_full.clone()));

    assert_eq!(h_full.len(), 4);
    assert!(h_full.iter().all(|r| r["raw_score"].is_number()));
    assert!(
        h_full.iter().any(|r| r["raw_score"] != r["score"]),
        "the average scored like the trained weights at every epoch: {h_full:?}"
    );
    // The last stage's best epoch, as logged, against its checkpoint evaluated afresh.
    let last_stage = h_full.last().unwrap()["stage"].clone();
    let best = h_full
        .iter()
        .rfind(|r| r["stage"] == last_stage && r["best"] == true)
        .unwrap();
    let ck = full.join("best.safetensors");
    let ev: serde_json::Value = serde_json::from_str(&ok(&trainer(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ])))
    .unwrap();
    let logged = best["val_valence_ccc"].as_f64().unwrap();
    let now = ev["val"]["valence"]["ccc"].as_f64().unwrap();
    assert!((logged - now).abs() < 1e-9, "{logged} vs {now}");
    assert_eq!(ev["val"]["accuracy"], best["val_accuracy"]);
}
