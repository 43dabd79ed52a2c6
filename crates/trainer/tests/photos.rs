//! `trainer predict` on whole photos: the face detector finds the faces, each is classified,
//! photos without a face get a record saying so, unreadable files are reported and skipped,
//! and `--annotate` draws the boxes.
//!
//! Needs the detector weights and the photos (`cargo xtask fetch-detector`, `cargo xtask
//! fetch-photos`); without them the test says so and passes, unless `FER_REQUIRE_ASSETS=1`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{ok, tiny_affectnet, train_tiny, trainer};
use fer_detect::{DetectOptions, Detector};
use fer_test_support::fetched as asset;

/// One tiny trained model for both tests.
fn checkpoint() -> &'static Path {
    static CK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &CK.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        ok(&train_tiny(tiny_affectnet(), &d.path().join("run"), &[]));
        let ck = d.path().join("run/best.safetensors");
        (d, ck)
    })
    .1
}

#[test]
fn predict_finds_boxes_and_labels_every_face() {
    let (Some(model), Some(group), Some(cup)) = (
        asset("blazeface/face_detection_back_256x256_barracuda.onnx"),
        asset("photos/multi_face.jpg"),
        asset("photos/coffee.png"),
    ) else {
        return;
    };
    let run = tempfile::tempdir().unwrap();
    let ck = checkpoint();
    let photos = run.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::copy(&group, photos.join("group.jpg")).unwrap();
    std::fs::copy(&cup, photos.join("cup.png")).unwrap();
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8\xff not really a JPEG").unwrap();
    let (annotated, heat) = (run.path().join("annotated"), run.path().join("heat"));
    let out = trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--detector",
        model.to_str().unwrap(),
        "--annotate",
        annotated.to_str().unwrap(),
        "--heatmaps",
        heat.to_str().unwrap(),
        photos.to_str().unwrap(),
    ]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped") && stderr.contains("broken.jpg"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 images: 5 faces, 1 without a face, 1 unreadable"),
        "{stderr}"
    );
    let recs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Sorted file order: broken.jpg (skipped), cup.png, group.jpg.
    assert_eq!(recs.len(), 6, "{stdout}");
    assert!(recs[0]["path"].as_str().unwrap().ends_with("cup.png"));
    assert_eq!(recs[0]["note"], "no face found");
    assert!(recs[0]["expression"].is_null() && recs[0]["box"].is_null());

    // The five faces are the detector's, in its order, with its boxes.
    let photo = image::open(&group).unwrap().to_rgb8();
    let det = Detector::from_file(&model).unwrap();
    let want = det.detect(&photo, &DetectOptions::default()).unwrap();
    assert_eq!(want.len(), 5);
    for (k, (r, d)) in recs[1..].iter().zip(&want).enumerate() {
        assert!(r["path"].as_str().unwrap().ends_with("group.jpg"));
        assert_eq!(r["face"], k);
        let b: Vec<f64> = r["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (got, want) in b.iter().zip([d.x, d.y, d.w, d.h]) {
            assert!((got - want as f64).abs() < 1e-3, "face {k}: {b:?} vs {d:?}");
        }
        assert!((r["face_score"].as_f64().unwrap() - d.score as f64).abs() < 1e-6);
        let probs = r["probabilities"].as_object().unwrap();
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!(r["valence"].as_f64().is_some() && r["note"].is_null());
    }

    // One annotated picture (the photo with faces), one heat map per face.
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&annotated), ["0002-group.png"]);
    assert_eq!(
        names(&heat),
        (0..5)
            .map(|k| format!("0002-group-face{k}.png"))
            .collect::<Vec<_>>()
    );
    // The annotation changes the pixels on each box's edge and leaves the sky alone.
    let drawn = image::open(annotated.join("0002-group.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(drawn.dimensions(), photo.dimensions());
    for d in &want {
        let (x, y) = ((d.x + d.w / 2.0) as u32, (d.y + d.h) as u32);
        assert_ne!(
            drawn.get_pixel(x, y),
            photo.get_pixel(x, y),
            "box edge at {x},{y}"
        );
    }
    assert_eq!(drawn.get_pixel(700, 30), photo.get_pixel(700, 30));
}

#[test]
fn auto_detection_without_weights_says_how_to_get_them() {
    let run = tempfile::tempdir().unwrap();
    let ck = checkpoint();
    let photo = run.path().join("photo.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([90, 120, 150]))
        .save(&photo)
        .unwrap();
    let out = trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--detector",
        "/nonexistent/blazeface.onnx",
        photo.to_str().unwrap(),
    ]);
    let e = common::err(&out);
    assert!(
        e.contains("/nonexistent/blazeface.onnx") && e.contains("cargo xtask fetch-detector"),
        "{e}"
    );
    // --detect off takes the whole image, no weights needed.
    let j = ok(&trainer(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--detector",
        "/nonexistent/blazeface.onnx",
        "--detect",
        "off",
        photo.to_str().unwrap(),
    ]));
    let r: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
    assert!(r["face"].is_null() && r["box"].is_null() && r["expression"].is_string());
}
