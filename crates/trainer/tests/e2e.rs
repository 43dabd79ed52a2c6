//! synth (tiny) -> prepare -> train -> eval -> predict through the real binary.

mod common;

use common::*;

#[test]
fn train_eval_predict() {
    let data = tiny_affectnet();
    let run = tempfile::tempdir().unwrap();
    let out = run.path().join("run");
    let o = trainer(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        TINY,
        "--out",
        out.to_str().unwrap(),
    ]);
    let table = ok(&o);
    assert!(table.contains("| CCC |"), "{table}");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "metrics.json",
        "report.md",
        "last.safetensors",
        "best.safetensors",
        "best-stage1.safetensors",
        "best-stage2.safetensors",
        "curves-stage1.png",
        "curves-stage2.png",
        "va-scatter.png",
        "confusion.png",
        "attention.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let m = read_json(&out.join("metrics.json"));
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "accuracy",
            "arousal",
            "classes",
            "confusion",
            "epochs",
            "macro_f1",
            "stage",
            "train_seconds",
            "valence"
        ]
    );
    for t in ["valence", "arousal"] {
        let r = m[t].as_object().unwrap();
        let mut k: Vec<&str> = r.keys().map(String::as_str).collect();
        k.sort();
        assert_eq!(k, vec!["ccc", "pcc", "rmse", "sagr"]);
        assert!(r["rmse"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(m["stage"], "stage2");
    assert_eq!(m["epochs"], 4);
    assert_eq!(m["classes"].as_array().unwrap().len(), 8);
    let cm = m["confusion"].as_array().unwrap();
    assert_eq!(cm.len(), 8);
    let total: u64 = cm
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    let manifest = read_json(&data.join("manifest.json"));
    let val_classed: u64 = manifest["splits"]["val"]["class_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        total, val_classed,
        "confusion counts every classed val sample once"
    );
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    // PNGs decode.
    for f in ["curves-stage1.png", "attention.png"] {
        image::open(out.join(f)).unwrap();
    }

    // eval prints the same numbers as metrics.json (same checkpoint, same split).
    let ck = out.join("best.safetensors");
    let e = ok(&trainer(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]));
    let ev: serde_json::Value = serde_json::from_str(&e).unwrap();
    assert_eq!(ev["accuracy"], m["accuracy"]);
    assert_eq!(ev["confusion"], m["confusion"]);
    let dv = (ev["valence"]["ccc"].as_f64().unwrap() - m["valence"]["ccc"].as_f64().unwrap()).abs();
    assert!(dv < 1e-9, "{dv}");

    // predict on a folder of raw images, CSV and JSONL, with heat maps.
    let imgs = data.parent().unwrap().join("raw/Manually_Annotated_Images");
    let csv = run.path().join("p.csv");
    let heat = run.path().join("heat");
    ok(&trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        csv.to_str().unwrap(),
        "--heatmaps",
        heat.to_str().unwrap(),
        imgs.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    let n_images = walk_count(&imgs);
    assert_eq!(text.lines().count(), n_images + 1);
    assert!(text.starts_with("path,expression,valence,arousal,p_Neutral,"));
    assert_eq!(std::fs::read_dir(&heat).unwrap().count(), n_images);
    let one = first_image(&imgs);
    let j = ok(&trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--box",
        "2,2,30,30",
        one.to_str().unwrap(),
    ]));
    let rec: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
    assert_eq!(rec["path"], one.to_str().unwrap());
    let probs = rec["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 8);
    let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    let best = probs
        .iter()
        .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
        .unwrap()
        .0;
    assert_eq!(rec["expression"], best.as_str());
    for t in ["valence", "arousal"] {
        let v = rec[t].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&v));
    }
}

fn walk_count(d: &std::path::Path) -> usize {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                walk_count(&p)
            } else {
                usize::from(p.extension().is_some_and(|e| e == "jpg" || e == "png"))
            }
        })
        .sum()
}

fn first_image(d: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    let p = v.into_iter().next().expect("an image");
    if p.is_dir() {
        first_image(&p)
    } else {
        p
    }
}
