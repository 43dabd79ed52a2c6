//! synth (tiny) -> prepare -> train -> eval -> predict through the real binary.

mod common;

use common::*;

#[test]
fn train_eval_predict() {
    let data = tiny_affectnet();
    let run = tempfile::tempdir().unwrap();
    let out = run.path().join("run");
    let o = train_tiny(data, &out, &[]);
    let table = ok(&o);
    assert!(table.contains("| valence CCC |"), "{table}");
    assert!(
        table.contains("| metric | val | val (flip TTA) | test | test (flip TTA) |"),
        "{table}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("evaluating the final model on the test split"),
        "{stderr}"
    );
    assert!(
        stderr.contains("auxiliary categorical head: on (set in the config"),
        "{stderr}"
    );
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
        "confusion-test.png",
        "attention.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let m = read_json(&out.join("metrics.json"));
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "best_epoch",
            "classes",
            "epochs",
            "stage",
            "test",
            "train_seconds",
            "val"
        ]
    );
    let manifest = read_json(&data.join("manifest.json"));
    // val and test blocks have one shape, each with its flip-TTA twin.
    for split in ["val", "test"] {
        let b = &m[split];
        let mut k: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        let want = [
            "accuracy",
            "arousal",
            "confusion",
            "macro_f1",
            "predicted",
            "samples",
            "tta_flip",
            "valence",
        ];
        assert_eq!(k, want, "{split}");
        let mut tk: Vec<&str> = b["tta_flip"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        tk.sort();
        assert_eq!(
            tk,
            want[..6]
                .iter()
                .chain(&want[7..])
                .copied()
                .collect::<Vec<_>>()
        );
        for t in ["valence", "arousal"] {
            let r = b[t].as_object().unwrap();
            let mut k: Vec<&str> = r.keys().map(String::as_str).collect();
            k.sort();
            assert_eq!(k, vec!["ccc", "pcc", "rmse", "sagr"]);
            assert!(r["rmse"].as_f64().unwrap() >= 0.0);
        }
        let cm = b["confusion"].as_array().unwrap();
        assert_eq!(cm.len(), 8);
        let total: u64 = cm
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        let classed: u64 = manifest["splits"][split]["class_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            total, classed,
            "{split}: the confusion counts every classed sample once"
        );
        let predicted: u64 = b["predicted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(predicted, total);
        assert_eq!(b["samples"], manifest["splits"][split]["kept"]);
    }
    assert_eq!(m["stage"], "stage2");
    assert_eq!(m["epochs"], 4);
    assert!((1..=2).contains(&m["best_epoch"].as_u64().unwrap()));
    assert_eq!(m["classes"].as_array().unwrap().len(), 8);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    for l in lines.lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["val_predicted"].as_array().unwrap().len(), 8);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("`test` was evaluated once"), "{report}");
    // PNGs decode.
    for f in ["curves-stage1.png", "attention.png", "confusion-test.png"] {
        image::open(out.join(f)).unwrap();
    }

    // eval prints the same numbers as metrics.json (same checkpoint, same split), val by
    // default and test on request, with the flip-TTA block under --tta flip.
    let ck = out.join("best.safetensors");
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&trainer(&args))).unwrap()
    };
    let same = |a: &serde_json::Value, b: &serde_json::Value| {
        assert_eq!(a["accuracy"], b["accuracy"]);
        assert_eq!(a["confusion"], b["confusion"]);
        let dv =
            (a["valence"]["ccc"].as_f64().unwrap() - b["valence"]["ccc"].as_f64().unwrap()).abs();
        assert!(dv < 1e-9, "{dv}");
    };
    let ev = eval(&[]);
    assert!(ev["test"].is_null() && ev["val"]["tta_flip"].is_null());
    same(&ev["val"], &m["val"]);
    assert_eq!(ev["best_epoch"], m["best_epoch"]);
    let et = eval(&["--split", "test", "--tta", "flip"]);
    assert!(et["val"].is_null());
    same(&et["test"], &m["test"]);
    same(&et["test"]["tta_flip"], &m["test"]["tta_flip"]);

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
        // The synthetic images are face crops already (40 px for a 32 px model).
        "--detect",
        "off",
        imgs.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    let n_images = walk_count(&imgs);
    assert_eq!(text.lines().count(), n_images + 1);
    assert!(text.starts_with("path,face,x,y,w,h,face_score,expression,valence,arousal,p_Neutral,"));
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

    // Flip TTA predicts the mean of the face and its mirror: check it against two single-crop
    // predictions, of the face and of a mirrored copy of the file (at the model's 32 px, so
    // that no resize stands between the two).
    let face = image::open(&one)
        .unwrap()
        .resize_exact(32, 32, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let (a, b) = (run.path().join("a.png"), run.path().join("b.png"));
    face.save(&a).unwrap();
    image::imageops::flip_horizontal(&face).save(&b).unwrap();
    let predict = |extra: &[&str], files: &[&std::path::Path]| -> Vec<serde_json::Value> {
        let mut args = vec!["predict", "--checkpoint", ck.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        ok(&trainer(&args))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let singles = predict(&[], &[&a, &b]);
    let tta = predict(&["--tta", "flip"], &[&a]).remove(0);
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    for (class, p) in tta["probabilities"].as_object().unwrap() {
        let mean = 0.5
            * (num(&singles[0]["probabilities"][class]) + num(&singles[1]["probabilities"][class]));
        assert!((num(p) - mean).abs() < 1e-6, "{class}: {p} vs {mean}");
    }
    for t in ["valence", "arousal"] {
        let mean = 0.5 * (num(&singles[0][t]) + num(&singles[1][t]));
        assert!((num(&tta[t]) - mean).abs() < 1e-6, "{t}");
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
