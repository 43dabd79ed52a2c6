//! The crop rule and the resize against Pillow (fixtures made by
//! `tests/reference/prepare/make_crop_fixtures.py`).
//!
//! Pillow's `Image.BILINEAR` resize is a separable triangle-filter convolution whose support
//! grows with the reduction factor, computed in fixed point with 22 fractional bits and rounded
//! once per pass. fast_image_resize implements the same filter with its own fixed-point
//! normaliser, so the two may differ by one level where a pass lands on a rounding boundary; a
//! real difference in the box or the filter would differ by tens of levels.

use std::path::PathBuf;

use fast_image_resize::Resizer;
use fer_data::crop::{crop_resize_chw, square_crop, whole, FaceBox, Rect};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prepare")
}

#[test]
fn crops_match_pillow() {
    let dir = fixtures();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("crop_cases.json")).unwrap()).unwrap();
    let input = image::open(dir.join(cases["input"].as_str().unwrap()))
        .unwrap()
        .into_rgb8();
    let (w, h) = input.dimensions();
    let mut resizer = Resizer::new();
    let mut worst_overall = 0;
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let want_rect: Vec<u32> = case["rect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let rect = match case["box"].as_array() {
            None => whole(w, h),
            Some(b) => {
                let b: Vec<f64> = b.iter().map(|v| v.as_f64().unwrap()).collect();
                let face = FaceBox {
                    x: b[0],
                    y: b[1],
                    w: b[2],
                    h: b[3],
                };
                square_crop(face, case["margin"].as_f64().unwrap(), w, h).unwrap()
            }
        };
        assert_eq!(
            rect,
            Rect {
                left: want_rect[0],
                top: want_rect[1],
                width: want_rect[2],
                height: want_rect[3]
            },
            "{name}: crop rectangle"
        );
        let s = case["size"].as_u64().unwrap() as u32;
        let got = crop_resize_chw(&mut resizer, input.as_raw(), w, h, rect, s);
        let want = image::open(dir.join(case["file"].as_str().unwrap()))
            .unwrap()
            .into_rgb8();
        assert_eq!(want.dimensions(), (s, s));
        let plane = (s * s) as usize;
        let mut worst = 0;
        for (i, px) in want.pixels().enumerate() {
            for c in 0..3 {
                let d = (got[c * plane + i] as i32 - px[c] as i32).abs();
                worst = worst.max(d);
            }
        }
        assert!(worst <= 1, "{name}: max abs difference {worst} levels");
        worst_overall = worst_overall.max(worst);
    }
    eprintln!("max abs difference to Pillow over all cases: {worst_overall}");
}
