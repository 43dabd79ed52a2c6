//! The synthetic face set: determinism, the AffectNet CSV contract, the folder layout and the
//! valence/arousal functions (checked against hand-derived values).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use fer_data::synth::{
    expression_va, face_box, generate, prototype, render, sample_params, valence_arousal,
    Expression, Layout, SynthConfig, INTENSITY, JITTER,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const HEADER: &str = "subDirectory_filePath,face_x,face_y,face_width,face_height,\
                      facial_landmarks,expression,valence,arousal";

fn cfg(train: usize, val: usize, size: u32, seed: u64, layout: Layout) -> SynthConfig {
    SynthConfig {
        train,
        val,
        image_size: size,
        seed,
        layout,
        ..SynthConfig::default()
    }
}

/// Every file under `root` by relative path, with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn generate_in_pool(
    threads: usize,
    c: &SynthConfig,
) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| generate(dir.path(), c)).unwrap();
    let t = tree(dir.path());
    (dir, t)
}

#[test]
fn same_seed_is_byte_identical_whatever_the_thread_count() {
    let c = cfg(48, 16, 48, 11, Layout::AffectNet);
    let (_a, one) = generate_in_pool(1, &c);
    let (_b, two) = generate_in_pool(2, &c);
    // 48 + 1 extra row, 16 + 0 extra rows, plus two CSVs.
    assert_eq!(one.len(), 48 + 1 + 16 + 2);
    assert_eq!(one, two);

    let (_c, other) = generate_in_pool(2, &cfg(48, 16, 48, 12, Layout::AffectNet));
    let csv = "Manually_Annotated_file_lists/training.csv";
    assert_ne!(one[csv], other[csv]);
    let differing = one
        .iter()
        .filter(|(k, v)| k.ends_with(".jpg") && other.get(*k) != Some(v))
        .count();
    assert_eq!(differing, 48 + 1 + 16, "every image changes with the seed");
}

struct Row {
    path: String,
    bbox: [u32; 4],
    landmarks: Vec<f32>,
    code: i64,
    va: (f32, f32),
}

fn read_rows(csv_path: &Path) -> Vec<Row> {
    let text = fs::read_to_string(csv_path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), HEADER.replace(' ', ""));
    let mut r = csv::Reader::from_path(csv_path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            assert_eq!(rec.len(), 9);
            Row {
                path: rec[0].to_string(),
                bbox: std::array::from_fn(|i| rec[1 + i].parse().unwrap()),
                landmarks: rec[5].split(';').map(|v| v.parse().unwrap()).collect(),
                code: rec[6].parse().unwrap(),
                va: (rec[7].parse().unwrap(), rec[8].parse().unwrap()),
            }
        })
        .collect()
}

#[test]
fn affectnet_csv_follows_the_contract() {
    let size = 64;
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &cfg(400, 80, size, 3, Layout::AffectNet)).unwrap();
    let lists = dir.path().join("Manually_Annotated_file_lists");
    let rows = read_rows(&lists.join("training.csv"));
    let val_rows = read_rows(&lists.join("validation.csv"));
    // 2 % extras: 8 on 400 training rows, 2 on 80 validation rows.
    assert_eq!(rows.len(), 408);
    assert_eq!(val_rows.len(), 82);
    assert_eq!(summary.train.rows, 408);

    let mut per_code = [0usize; 11];
    let mut va_sum = [(0.0f32, 0.0f32); 8];
    for row in &rows {
        assert!((0..=10).contains(&row.code), "code {}", row.code);
        per_code[row.code as usize] += 1;
        let img = image::open(dir.path().join("Manually_Annotated_Images").join(&row.path))
            .unwrap_or_else(|e| panic!("{}: {e}", row.path));
        assert_eq!((img.width(), img.height()), (size, size));
        assert_eq!(row.path.matches('/').count(), 1, "{}", row.path);
        let [x, y, w, h] = row.bbox;
        assert!(w >= size / 2 && h >= size / 2, "box {:?}", row.bbox);
        assert!(x + w <= size && y + h <= size, "box {:?}", row.bbox);
        assert_eq!(row.landmarks.len(), 10);
        let (v, a) = row.va;
        if row.code == 9 || row.code == 10 {
            assert_eq!((v, a), (-2.0, -2.0));
        } else {
            assert!((-1.0..=1.0).contains(&v) && (-1.0..=1.0).contains(&a));
        }
        if row.code < 8 {
            let s = &mut va_sum[row.code as usize];
            s.0 += v;
            s.1 += a;
        }
    }
    assert_eq!(&per_code[..8], &[50; 8]);
    assert_eq!(&per_code[8..], &[3, 3, 2]);
    assert_eq!(summary.train.per_code, per_code);
    // Mean labels per class sit near the prototype's labels (see the sampler test).
    for (code, (sv, sa)) in va_sum.iter().enumerate() {
        let (pv, pa) = expression_va(&prototype(code as i64).unwrap());
        let (mv, ma) = (sv / 50.0, sa / 50.0);
        assert!((mv - pv).abs() < 0.12, "class {code}: mean V {mv} vs {pv}");
        assert!((ma - pa).abs() < 0.12, "class {code}: mean A {ma} vs {pa}");
    }
    // Validation images live beside the training ones but never collide with them.
    for row in &val_rows {
        assert!(!rows.iter().any(|r| r.path == row.path));
    }
}

#[test]
fn landmarks_fall_on_the_face() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &cfg(32, 8, 96, 5, Layout::AffectNet)).unwrap();
    for row in read_rows(
        &dir.path()
            .join("Manually_Annotated_file_lists/training.csv"),
    ) {
        let [x, y, w, h] = row.bbox.map(|v| v as f32);
        for p in row.landmarks.chunks(2) {
            assert!(
                p[0] > x && p[0] < x + w && p[1] > y && p[1] < y + h,
                "{:?}",
                row.bbox
            );
        }
        // Eyes above the mouth corners in the face frame: the head rolls at most 15 degrees.
        let l = &row.landmarks;
        assert!(l[1] < l[7] && l[3] < l[9], "{l:?}");
    }
}

#[test]
fn folder_layout_writes_class_folders_of_face_crops() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), &cfg(24, 16, 64, 1, Layout::Folder)).unwrap();
    assert_eq!(
        summary.train.rows, 24,
        "no None/Uncertain/No-Face rows in folders"
    );
    let names = [
        "angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise",
    ];
    for (split, per_class) in [("train", 3), ("test", 2)] {
        let mut found: Vec<String> = fs::read_dir(dir.path().join(split))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, names);
        for name in names {
            let files: Vec<_> = fs::read_dir(dir.path().join(split).join(name))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(files.len(), per_class, "{split}/{name}");
            for f in files {
                assert_eq!(f.extension().unwrap(), "png");
                let img = image::open(&f).unwrap();
                assert_eq!((img.width(), img.height()), (32, 32));
            }
        }
    }
    let top: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(top.len(), 2, "only train/ and test/");
}

#[test]
fn tiny_images_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(dir.path(), &cfg(8, 8, 16, 0, Layout::AffectNet)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("16 px") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

fn neutral_with(f: impl FnOnce(&mut Expression)) -> Expression {
    let mut e = Expression::NEUTRAL;
    f(&mut e);
    e
}

fn close(got: (f32, f32), want: (f32, f32)) {
    assert!(
        (got.0 - want.0).abs() < 1e-6 && (got.1 - want.1).abs() < 1e-6,
        "got {got:?}, want {want:?}"
    );
}

#[test]
fn valence_arousal_match_hand_derived_values() {
    close(expression_va(&Expression::NEUTRAL), (0.0, 0.0));
    // 0.8 * 0.5 = 0.4; arousal untouched.
    close(
        expression_va(&neutral_with(|e| e.mouth_curve = 0.5)),
        (0.4, 0.0),
    );
    // A frown of 0.4: valence -0.3 * 0.4, arousal +0.5 * 0.4.
    close(
        expression_va(&neutral_with(|e| e.brow_angle = 0.4)),
        (-0.12, 0.2),
    );
    // Inner brows up (-0.4) costs the same valence but adds no arousal.
    close(
        expression_va(&neutral_with(|e| e.brow_angle = -0.4)),
        (-0.12, 0.0),
    );
    // Wide eyes (+0.4 over relaxed) and an open mouth: 0.6 * 0.4 + 0.4 * 0.5 = 0.44.
    close(
        expression_va(&neutral_with(|e| {
            e.eye_open = 0.9;
            e.mouth_open = 0.5
        })),
        (0.0, 0.44),
    );
    // A smirk either way: -0.5 * 0.6.
    close(
        expression_va(&neutral_with(|e| e.mouth_asym = -0.6)),
        (-0.3, 0.0),
    );
    // Full disgust wrinkle: -0.3 valence, +0.2 arousal; brows down 0.5: -0.1 arousal.
    close(
        expression_va(&neutral_with(|e| {
            e.nose_wrinkle = 1.0;
            e.brow_raise = -0.5
        })),
        (-0.3, 0.1),
    );
    // Saturation: 0.8 + 0.3 + 0.3 + 0.5 > 1 before the clip.
    close(
        expression_va(&neutral_with(|e| {
            e.mouth_curve = -1.0;
            e.brow_angle = 1.0;
            e.nose_wrinkle = 1.0;
            e.mouth_asym = 1.0;
            e.eye_open = 1.0;
            e.mouth_open = 1.0;
            e.brow_raise = 1.0
        })),
        (-1.0, 1.0),
    );
}

#[test]
fn prototypes_sit_in_their_circumplex_quadrants() {
    let va = |c| expression_va(&prototype(c).unwrap());
    let (v, a) = va(0);
    assert!(v.abs() < 0.05 && a.abs() < 0.05, "neutral {v} {a}");
    let (v, a) = va(1);
    assert!(v > 0.4 && a > 0.0, "happy {v} {a}");
    let (v, a) = va(2);
    assert!(v < 0.0 && a < 0.0, "sad {v} {a}");
    let (v, a) = va(3);
    assert!(v.abs() < 0.1 && a > 0.5, "surprise {v} {a}");
    for c in [4, 6] {
        let (v, a) = va(c);
        assert!(v < -0.3 && a > 0.3, "class {c}: {v} {a}");
    }
    for c in [5, 7] {
        let (v, _) = va(c);
        assert!(v < -0.3, "class {c}: {v}");
    }
    assert!(prototype(8).is_none() && prototype(-1).is_none());
}

#[test]
fn valence_rises_with_mouth_curvature_and_arousal_with_openness() {
    let mut last = f32::NEG_INFINITY;
    for k in -10..=10 {
        let (v, _) = expression_va(&neutral_with(|e| e.mouth_curve = k as f32 / 10.0));
        assert!(v > last, "valence not increasing at curve {k}/10");
        last = v;
    }
    let mut last = f32::NEG_INFINITY;
    for k in 0..=10 {
        let t = k as f32 / 10.0;
        let (_, a) = expression_va(&neutral_with(|e| {
            e.eye_open = t;
            e.mouth_open = t;
            e.brow_raise = t
        }));
        assert!(a > last, "arousal not increasing at openness {t}");
        last = a;
    }
}

#[test]
fn samples_vary_around_their_prototype_within_range() {
    let n = 400;
    let (lo, hi) = INTENSITY;
    let var_t = (hi - lo).powi(2) / 12.0;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for code in 0..8 {
        let proto = prototype(code).unwrap().as_array();
        let neutral = Expression::NEUTRAL.as_array();
        let samples: Vec<_> = (0..n).map(|_| sample_params(code, &mut rng)).collect();
        for p in &samples {
            assert!(p.look.has_face);
            assert_eq!(p.expr, p.expr.clipped(), "sampled fields stay in range");
        }
        // Each field is neutral + t (proto - neutral) + jitter with E[t] = 1: where clipping
        // cannot bite (4 sd inside the range), its mean must match within 4 standard errors.
        for i in 0..8 {
            let d = proto[i] - neutral[i];
            let sd = (var_t * d * d + JITTER[i] * JITTER[i]).sqrt();
            let reach = d.abs() * (hi - 1.0) + 4.0 * JITTER[i];
            let lower = if matches!(i, 0 | 3 | 5 | 6) {
                -1.0
            } else {
                0.0
            };
            if proto[i] - reach < lower || proto[i] + reach > 1.0 {
                continue;
            }
            let mean = samples.iter().map(|p| p.expr.as_array()[i]).sum::<f32>() / n as f32;
            let se = sd / (n as f32).sqrt();
            assert!(
                (mean - proto[i]).abs() < 4.0 * se,
                "class {code} field {i}: mean {mean} vs prototype {}",
                proto[i]
            );
        }
        // Labels: the class mean stays near the prototype's label (the |.| terms of the
        // valence turn zero-mean jitter into a small negative shift, about -0.05).
        let (pv, pa) = expression_va(&prototype(code).unwrap());
        let va: Vec<_> = samples.iter().map(valence_arousal).collect();
        let mv = va.iter().map(|x| x.0).sum::<f32>() / n as f32;
        let ma = va.iter().map(|x| x.1).sum::<f32>() / n as f32;
        assert!((mv - pv).abs() < 0.1, "class {code}: mean V {mv} vs {pv}");
        assert!((ma - pa).abs() < 0.1, "class {code}: mean A {ma} vs {pa}");
        // Within-class spread exists (what CCC measures inside a class) but stays moderate.
        let sd = (va.iter().map(|x| (x.0 - mv).powi(2)).sum::<f32>() / n as f32).sqrt();
        assert!(sd > 0.02 && sd < 0.2, "class {code}: valence sd {sd}");
    }
    assert!(!sample_params(10, &mut rng).look.has_face);
    assert!(sample_params(9, &mut rng).look.has_face);
}

#[test]
fn render_is_a_function_of_its_parameters() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let p = sample_params(1, &mut rng);
    let a = render(&p, 80);
    let b = render(&p, 80);
    assert_eq!(a.image, b.image);
    assert_eq!(a.face_box, face_box(&p.look, 80));
    let mut q = p;
    q.expr = prototype(2).unwrap();
    let c = render(&q, 80);
    let fb = c.face_box;
    // Only the face changes: pixels outside the face box (background, shoulders) are equal.
    let mut inside_diff = 0u64;
    for (x, y, px) in c.image.enumerate_pixels() {
        let inside = x >= fb.x && x < fb.x + fb.width && y >= fb.y && y < fb.y + fb.height;
        let d: u64 =
            px.0.iter()
                .zip(a.image.get_pixel(x, y).0)
                .map(|(u, v)| u.abs_diff(v) as u64)
                .sum();
        if inside {
            inside_diff += d;
        } else {
            assert_eq!(d, 0, "pixel ({x}, {y}) outside the face box changed");
        }
    }
    assert!(
        inside_diff > 10_000,
        "expression change barely visible: {inside_diff}"
    );
}

#[test]
fn the_readers_accept_every_generated_face() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &cfg(100, 20, 48, 4, Layout::AffectNet)).unwrap();
    let listing = fer_data::affectnet::read(dir.path(), 8).unwrap();
    // AffectNet's validation list is the test split; val is carved later, at preparation.
    for (split, rows) in listing.splits.iter().zip([102, 0, 20]) {
        assert_eq!(split.rows, rows);
        assert_eq!(split.candidates.len() + split.skipped.len(), rows);
        // Codes 0..=7 are all usable; only the None/Uncertain/No-Face extras may be dropped.
        let faces = split
            .candidates
            .iter()
            .filter(|c| (0..8).contains(&c.expression))
            .count();
        assert_eq!(faces, rows - rows / 50);
        for c in &split.candidates {
            assert!(c.file.is_file(), "{}", c.file.display());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &cfg(16, 8, 48, 4, Layout::Folder)).unwrap();
    let listing = fer_data::folder::read(dir.path(), 8, false).unwrap();
    let sizes = listing.splits.each_ref().map(|s| s.candidates.len());
    // The folder layout writes train/ and test/.
    assert_eq!(sizes, [16, 0, 8]);
    for s in [&listing.splits[0], &listing.splits[2]] {
        assert!(s.skipped.is_empty());
        let mut per_class = [0; 8];
        for c in &s.candidates {
            per_class[c.expression as usize] += 1;
        }
        assert!(per_class.iter().all(|&n| n == s.candidates.len() / 8));
    }
}
