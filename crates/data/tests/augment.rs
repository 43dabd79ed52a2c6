//! Augmentation against hand-derived cases and against reference outputs of PyTorch, SciPy and
//! torchvision (`tests/reference/augment/make_fixtures.py` at the workspace root).

use fer_data::augment::{
    apply, apply_with_fill, color_jitter, hflip, warp, AugmentConfig, AugmentParams, ColorJitter,
    CropBox, CropConfig,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/augment/augment.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn fixture_src(fx: &Value) -> (usize, Vec<u8>) {
    let size = fx["size"].as_u64().unwrap() as usize;
    let src = fx["src"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    (size, src)
}

/// A noisy test image of side `s`.
fn image(s: usize, salt: usize) -> Vec<u8> {
    (0..3 * s * s)
        .map(|i| ((i * 37 + salt * 11 + (i * i) % 7) % 256) as u8)
        .collect()
}

fn to_f32(src: &[u8]) -> Vec<f32> {
    src.iter().map(|&b| b as f32).collect()
}

/// Everything off except the master switch: each component must then be exactly neutral.
fn neutral_enabled() -> AugmentConfig {
    AugmentConfig {
        enabled: true,
        hflip: 0.0,
        random_resized_crop: CropConfig::full(),
        pad_crop: 0,
        rotation_degrees: 0.0,
        color_jitter: ColorJitter::none(),
    }
}

#[test]
fn identity_configs_return_the_input_exactly() {
    let s = 13;
    let src = image(s, 1);
    for cfg in [AugmentConfig::none(), neutral_enabled()] {
        for seed in 0..5 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = AugmentParams::sample(&cfg, s, &mut rng);
            assert_eq!(p, AugmentParams::identity(s), "{cfg:?}");
            let mut out = vec![-1.0; src.len()];
            apply(&src, s, &p, &mut out);
            assert_eq!(out, to_f32(&src));
        }
    }
}

#[test]
fn warp_at_full_scale_and_zero_degrees_is_the_identity() {
    // Runs the interpolating path itself (not the shortcut), for even and odd sizes.
    for s in [8, 13] {
        let src = image(s, 2);
        let mut out = vec![0.0; src.len()];
        warp(&src, s, &CropBox::full(s), 0.0, [7.0; 3], &mut out);
        assert_eq!(out, to_f32(&src), "size {s}");
    }
}

#[test]
fn hflip_reverses_rows_and_twice_is_identity() {
    let s = 7;
    let src = to_f32(&image(s, 3));
    let mut once = src.clone();
    hflip(&mut once, s);
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let i = c * s * s + y * s + x;
                let j = c * s * s + y * s + (s - 1 - x);
                assert_eq!(once[i], src[j]);
            }
        }
    }
    assert_ne!(once, src);
    let mut twice = once.clone();
    hflip(&mut twice, s);
    assert_eq!(twice, src);

    // Through the pipeline, a flip-only parameter set gives the same.
    let u8src = image(s, 3);
    let p = AugmentParams {
        flip: true,
        ..AugmentParams::identity(s)
    };
    let mut out = vec![0.0; src.len()];
    apply(&u8src, s, &p, &mut out);
    assert_eq!(out, once);
}

/// `np.rot90(img, k)` for one CHW image, computed by transposing and flipping.
fn rot90_reference(src: &[f32], s: usize, quarter_turns: usize) -> Vec<f32> {
    let mut cur = src.to_vec();
    for _ in 0..quarter_turns {
        let mut next = vec![0.0; cur.len()];
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    // transpose then flip vertically: out[y][x] = in[x][s-1-y]
                    next[c * s * s + y * s + x] = cur[c * s * s + x * s + (s - 1 - y)];
                }
            }
        }
        cur = next;
    }
    cur
}

#[test]
fn quarter_turns_match_transpose_and_flip() {
    for s in [10, 11] {
        let src = image(s, 4);
        let srcf = to_f32(&src);
        for (angle, turns) in [(90.0, 1), (180.0, 2), (-90.0, 3), (270.0, 3)] {
            let mut out = vec![0.0; src.len()];
            warp(&src, s, &CropBox::full(s), angle, [0.0; 3], &mut out);
            let want = rot90_reference(&srcf, s, turns);
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                let (y, x) = ((i / s) % s, i % s);
                if y == 0 || x == 0 || y == s - 1 || x == s - 1 {
                    continue;
                }
                assert!(
                    (o - w).abs() < 1e-3,
                    "size {s} angle {angle} at {i}: {o} vs {w}"
                );
            }
        }
    }
}

/// Compares `got` with `want` on the pixels `keep(y, x)` selects; returns the largest error.
fn max_err(got: &[f32], want: &[f32], s: usize, keep: impl Fn(usize, usize) -> bool) -> f32 {
    let mut worst = 0.0f32;
    let mut n = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if keep((i / s) % s, i % s) {
            worst = worst.max((g - w).abs());
            n += 1;
        }
    }
    assert!(n > 0, "no pixel compared");
    worst
}

#[test]
fn resized_crop_matches_torch_bilinear_interpolation() {
    let fx = fixture();
    let (s, src) = fixture_src(&fx);
    let b = floats(&fx["crop"]["box"]);
    let crop = CropBox {
        x: b[0] as f64,
        y: b[1] as f64,
        w: b[2] as f64,
        h: b[3] as f64,
    };
    let mut out = vec![0.0; src.len()];
    warp(&src, s, &crop, 0.0, [0.0; 3], &mut out);
    let want = floats(&fx["crop"]["out"]);
    // torch clamps to the crop box on the outer ring only.
    let err = max_err(&out, &want, s, |y, x| {
        y > 0 && x > 0 && y < s - 1 && x < s - 1
    });
    assert!(err < 1e-3, "max error {err}");
}

#[test]
fn rotation_matches_scipy() {
    let fx = fixture();
    let (s, src) = fixture_src(&fx);
    let angle = fx["rotate"]["angle"].as_f64().unwrap();
    let mut out = vec![0.0; src.len()];
    warp(&src, s, &CropBox::full(s), angle, [0.0; 3], &mut out);
    let want = floats(&fx["rotate"]["out"]);
    // Inside this disc every source point and its neighbours lie in the image, where the
    // border conventions of the two libraries cannot matter.
    let c = (s as f32 - 1.0) / 2.0;
    let r = c - 1.0;
    let err = max_err(&out, &want, s, |y, x| {
        (y as f32 - c).hypot(x as f32 - c) <= r
    });
    assert!(err < 1e-3, "max error {err}");
}

#[test]
fn crop_and_rotation_compose_as_scipy_affine_transform() {
    let fx = fixture();
    let (s, src) = fixture_src(&fx);
    let b = floats(&fx["affine"]["box"]);
    let crop = CropBox {
        x: b[0] as f64,
        y: b[1] as f64,
        w: b[2] as f64,
        h: b[3] as f64,
    };
    let angle = fx["affine"]["angle"].as_f64().unwrap();
    let mut out = vec![0.0; src.len()];
    warp(&src, s, &crop, angle, [0.0; 3], &mut out);
    let want = floats(&fx["affine"]["out"]);
    // Keep pixels whose source point lies well inside the image: the box centre is at index
    // (8, 8) and a disc of radius 5 output pixels shrinks by at most 13.5 / 16, so its source
    // points stay within 3.3..12.7.
    let c = (s as f32 - 1.0) / 2.0;
    let err = max_err(&out, &want, s, |y, x| {
        (y as f32 - c).hypot(x as f32 - c) <= 5.0
    });
    assert!(err < 1e-3, "max error {err}");
    // The comparison above is not of an untouched image.
    assert_ne!(out, to_f32(&src));
}

#[test]
fn color_jitter_matches_torchvision() {
    let fx = fixture();
    let (s, src) = fixture_src(&fx);
    for case in fx["jitter"].as_array().unwrap() {
        let f = floats(&case["factors"]);
        let mut img = to_f32(&src);
        color_jitter(&mut img, s, f[0], f[1], f[2]);
        let want = floats(&case["out"]);
        let err = max_err(&img, &want, s, |_, _| true);
        // Both sides compute in f32 on a 0..1 vs 0..255 scale: a few ulps of 255.
        assert!(err < 1e-3, "factors {f:?}: max error {err}");
    }
}

#[test]
fn color_jitter_with_factor_one_is_identity() {
    let s = 9;
    let src = to_f32(&image(s, 5));
    let mut img = src.clone();
    color_jitter(&mut img, s, 1.0, 1.0, 1.0);
    assert_eq!(img, src);
    // Each component alone changes the image, so the identity above is not vacuous.
    for f in [[1.2, 1.0, 1.0], [1.0, 0.8, 1.0], [1.0, 1.0, 1.3]] {
        let mut img = src.clone();
        color_jitter(&mut img, s, f[0], f[1], f[2]);
        assert_ne!(img, src, "{f:?}");
    }
}

#[test]
fn fill_colour_covers_what_the_warp_leaves_uncovered() {
    let s = 12;
    let src = image(s, 6);
    let p = AugmentParams {
        angle_deg: 45.0,
        ..AugmentParams::identity(s)
    };
    let fill = [11.0, 22.0, 33.0];
    let mut out = vec![0.0; src.len()];
    apply_with_fill(&src, s, &p, fill, &mut out);
    // The corner pixel's centre maps ~7.1 px from the centre along an axis: outside.
    for (c, f) in fill.iter().enumerate() {
        assert_eq!(out[c * s * s], *f);
    }
}

#[test]
fn sampled_parameters_stay_in_their_ranges_and_are_seed_determined() {
    let s = 32;
    let cfg = AugmentConfig::default();
    let n = 2000;
    let mut flips = 0;
    for seed in 0..n {
        let p = AugmentParams::sample(&cfg, s, &mut ChaCha8Rng::seed_from_u64(seed));
        let q = AugmentParams::sample(&cfg, s, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(p, q);
        flips += p.flip as usize;
        let area = p.crop.w * p.crop.h / (s * s) as f64;
        let ratio = p.crop.w / p.crop.h;
        let [s0, s1] = cfg.random_resized_crop.scale;
        let [r0, r1] = cfg.random_resized_crop.ratio;
        assert!(area >= s0 - 1e-9 && area <= s1 + 1e-9, "{p:?}");
        assert!(ratio >= r0 - 1e-9 && ratio <= r1 + 1e-9, "{p:?}");
        assert!(p.crop.x >= 0.0 && p.crop.y >= 0.0, "{p:?}");
        assert!(p.crop.x + p.crop.w <= s as f64 + 1e-9, "{p:?}");
        assert!(p.crop.y + p.crop.h <= s as f64 + 1e-9, "{p:?}");
        assert!(p.angle_deg.abs() <= cfg.rotation_degrees);
        for f in [p.brightness, p.contrast, p.saturation] {
            assert!((0.8..=1.2).contains(&f), "{p:?}");
        }
    }
    // Binomial(2000, 0.5): sd 22.4, so 5 sd is 112.
    assert!((flips as i64 - 1000).abs() <= 112, "flips {flips}");
}

/// torchvision's `RandomCrop(s, padding = p, fill)` at window offset (i, j) of the padded image,
/// written the way it is defined: pad every plane, then cut the window.
fn padded_window(src: &[u8], s: usize, p: usize, fill: [f32; 3], i: usize, j: usize) -> Vec<f32> {
    let big = s + 2 * p;
    let mut out = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        let mut padded = vec![fill[c]; big * big];
        for y in 0..s {
            for x in 0..s {
                padded[(y + p) * big + x + p] = src[c * s * s + y * s + x] as f32;
            }
        }
        for y in 0..s {
            for x in 0..s {
                out.push(padded[(y + i) * big + x + j]);
            }
        }
    }
    out
}

#[test]
fn pad_crop_is_torchvisions_padded_random_crop() {
    let (s, p) = (11, 3);
    let src = image(s, 4);
    let cfg = AugmentConfig {
        pad_crop: p,
        ..neutral_enabled()
    };
    let fill = [10.0, 20.0, 30.0];
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..400 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let par = AugmentParams::sample(&cfg, s, &mut rng);
        let (dx, dy) = (par.crop.x, par.crop.y);
        assert!(dx.fract() == 0.0 && dy.fract() == 0.0 && dx.abs() <= 3.0 && dy.abs() <= 3.0);
        assert_eq!(
            (par.crop.w, par.crop.h, par.angle_deg),
            (s as f64, s as f64, 0.0)
        );
        let mut out = vec![f32::NAN; 3 * s * s];
        apply_with_fill(&src, s, &par, fill, &mut out);
        let (i, j) = (
            (dy as i64 + p as i64) as usize,
            (dx as i64 + p as i64) as usize,
        );
        assert_eq!(
            out,
            padded_window(&src, s, p, fill, i, j),
            "shift ({dx}, {dy})"
        );
        seen.insert((i, j));
    }
    // Every one of the 7 x 7 windows is drawn.
    assert_eq!(seen.len(), (2 * p + 1) * (2 * p + 1));
    // Without it, the draws of the other components are unchanged.
    let base = AugmentConfig::default();
    let shifted = AugmentConfig {
        pad_crop: 2,
        ..AugmentConfig::default()
    };
    let a = AugmentParams::sample(&base, s, &mut ChaCha8Rng::seed_from_u64(9));
    let b = AugmentParams::sample(&shifted, s, &mut ChaCha8Rng::seed_from_u64(9));
    assert_eq!(
        (a.flip, a.angle_deg, a.brightness),
        (b.flip, b.angle_deg, b.brightness)
    );
    assert!((a.crop.x - b.crop.x).abs() <= 2.0 && a.crop.w == b.crop.w);
}

#[test]
fn invalid_configs_are_rejected_by_name() {
    let mut cfg = AugmentConfig {
        hflip: 1.5,
        ..AugmentConfig::default()
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("hflip"));
    cfg.hflip = 0.5;
    cfg.random_resized_crop.scale = [0.9, 0.5];
    assert!(cfg.validate().unwrap_err().to_string().contains("scale"));
    cfg.random_resized_crop.scale = [0.5, 0.9];
    cfg.random_resized_crop.ratio = [0.0, 1.0];
    assert!(cfg.validate().unwrap_err().to_string().contains("ratio"));
    cfg.random_resized_crop.ratio = [0.75, 1.33];
    cfg.color_jitter.contrast = f64::NAN;
    assert!(cfg.validate().unwrap_err().to_string().contains("contrast"));
    cfg.color_jitter.contrast = 0.1;
    cfg.validate().unwrap();
}

#[test]
fn config_reads_partial_json_with_defaults() {
    let cfg: AugmentConfig =
        serde_json::from_str(r#"{"rotation_degrees": 5, "color_jitter": {"brightness": 0.4}}"#)
            .unwrap();
    assert_eq!(cfg.rotation_degrees, 5.0);
    assert_eq!(cfg.color_jitter.brightness, 0.4);
    assert_eq!(cfg.color_jitter.contrast, 0.2);
    assert_eq!(cfg.hflip, 0.5);
    assert!(cfg.enabled);
    let back: AugmentConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert!(serde_json::from_str::<AugmentConfig>(r#"{"hflipp": 0.5}"#).is_err());
}
