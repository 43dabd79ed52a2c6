//! Bad paths, foreign checkpoints and label-poor data give clear messages.

mod common;

use common::*;

#[test]
fn bad_paths_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = dir.path().join("r");
    let e = err(&trainer(&[
        "train",
        "--data",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        e.contains(missing.to_str().unwrap()) && e.contains("no such prepared dataset"),
        "{e}"
    );

    let data = tiny_affectnet();
    let cfg = dir.path().join("missing.toml");
    let e = err(&trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("missing.toml"), "{e}");

    let e = err(&trainer(&[
        "eval",
        "--checkpoint",
        missing.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]));
    assert!(e.contains("no such checkpoint"), "{e}");

    // Not a checkpoint at all.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let e = err(&trainer(&[
        "eval",
        "--checkpoint",
        junk.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]));
    assert!(e.contains("junk.safetensors"), "{e}");

    // A folder of other files is no run to resume (an empty or missing one starts a run).
    let e = err(&trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--resume",
    ]));
    assert!(
        e.contains("is not a run folder") && e.contains("junk.safetensors"),
        "{e}"
    );

    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "[stage1]\nepochs = 0\n").unwrap();
    let e = err(&trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        bad_cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("bad.toml") && e.contains("stage1.epochs"), "{e}");
}

#[test]
fn checkpoint_of_another_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_affectnet();
    let run = dir.path().join("r");
    ok(&train_tiny(
        data,
        &run,
        &["--epochs", "1", "--stop-after-epochs", "1"],
    ));
    // Resuming with a config of another width names the differing field.
    let other = dir.path().join("wide.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(TINY)
            .unwrap()
            .replace("width = 0.125", "width = 0.25"),
    )
    .unwrap();
    let e = err(&trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        other.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--resume",
    ]));
    assert!(
        e.contains("different model config") && e.contains("model.backbone.width"),
        "{e}"
    );

    // A checkpoint whose weights do not fit its stated config (tensors of a wider model under
    // the tiny config's metadata) is refused with the mismatching names.
    let tiny_run = dir.path().join("t");
    let wide_run = dir.path().join("w");
    for (cfg, out) in [(TINY, &tiny_run), (other.to_str().unwrap(), &wide_run)] {
        ok(&train_with(data, cfg, out, &["--epochs", "1"]));
    }
    let franken = dir.path().join("franken.safetensors");
    splice(
        &wide_run.join("best.safetensors"),
        &tiny_run.join("best.safetensors"),
        &franken,
    );
    let e = err(&trainer(&[
        "eval",
        "--checkpoint",
        franken.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]));
    assert!(
        e.contains("franken.safetensors") && e.contains("does not fit"),
        "{e}"
    );
}

/// Tensors of `weights` with the metadata of `meta_from`.
fn splice(weights: &std::path::Path, meta_from: &std::path::Path, out: &std::path::Path) {
    let wb = std::fs::read(weights).unwrap();
    let mb = std::fs::read(meta_from).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mb).unwrap();
    let st = safetensors::SafeTensors::deserialize(&wb).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let bytes = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn image_folder_set_trains_categorically() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_folder();
    let run = dir.path().join("r");
    let o = train_tiny(data, &run, &[]);
    let table = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no valence/arousal labels: training the categorical task only"),
        "{stderr}"
    );
    assert!(table.contains("accuracy"));
    let m = read_json(&run.join("metrics.json"));
    for split in ["val", "test"] {
        let b = &m[split];
        assert!(b["valence"].is_null() && b["arousal"].is_null(), "{split}");
        assert!(b["accuracy"].as_f64().is_some(), "{split}");
        assert!(b["macro_f1"].as_f64().is_some(), "{split}");
    }
    assert_eq!(m["stage"], "stage1");
    assert_eq!(m["epochs"], 2);
    assert!(!run.join("va-scatter.png").exists());
    assert!(run.join("confusion.png").is_file());

    // Its V/A head never learned: predict leaves valence/arousal empty and says why.
    let raw_val = data.parent().unwrap().join("raw").join("test");
    let ck = run.join("best.safetensors");
    let o = trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        // The synthetic images are face crops already (40 px for a 32 px model).
        "--detect",
        "off",
        raw_val.to_str().unwrap(),
    ]);
    let lines = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("trained without valence/arousal labels"),
        "{stderr}"
    );
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first["valence"].is_null() && first["arousal"].is_null(),
        "{first}"
    );
    assert!(first["expression"].is_string());
}
