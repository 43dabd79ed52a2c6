//! The shared decoder against Pillow's decoding of the same files (fixtures/formats, made by
//! tests/reference/formats/make_fixtures.py at the workspace root): every format, EXIF
//! orientation, content over extension, and the preparation of a folder dataset holding all of
//! them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use fast_image_resize::Resizer;
use fer_data::crop::{crop_resize_chw, whole};
use fer_data::decode::read_rgb;
use fer_data::manifest::SkipReason;
use fer_data::prepare::{prepare, PrepareConfig, Source};
use fer_data::shard::Shard;
use image::RgbImage;

/// Largest per-channel difference accepted between our JPEG decode (zune-jpeg) and Pillow's
/// (libjpeg-turbo): the two round their integer IDCTs and colour conversions differently;
/// with 4:4:4 sampling no chroma upsampling adds to it. Measured: 2 on these files
/// (`every_format_decodes_as_pillow_does` prints it); one level more leaves room for a
/// decoder update's rounding. A wrong orientation or colour conversion is off by tens to
/// hundreds on these flat, saturated blocks.
const JPEG_TOL: u8 = 3;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats")
}

struct Expected {
    file: String,
    rgb: RgbImage,
    lossy: bool,
}

fn expected() -> Vec<Expected> {
    let text = fs::read_to_string(dir().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_string();
            let raw = fs::read(dir().join(format!("{file}.rgb"))).unwrap();
            let (w, h) = (e["width"].as_u64().unwrap(), e["height"].as_u64().unwrap());
            Expected {
                rgb: RgbImage::from_raw(w as u32, h as u32, raw).unwrap(),
                lossy: e["lossy"].as_bool().unwrap(),
                file,
            }
        })
        .collect()
}

fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn every_format_decodes_as_pillow_does() {
    let all = expected();
    let formats: Vec<&str> = all.iter().map(|e| e.file.as_str()).collect();
    let lossless = [
        "face.png",
        "face.bmp",
        "face.tiff",
        "face.webp",
        "face.gif",
        "face-grey.png",
        // The orientation tag outside JPEG: PNG's and WebP's EXIF, TIFF's own tag.
        "orient-6.png",
        "orient-6.webp",
        "orient-6.tiff",
    ];
    for f in lossless {
        assert!(formats.contains(&f), "fixture {f} missing");
    }
    assert_eq!(all.iter().filter(|e| e.lossy).count(), 8);
    let mut worst_jpeg = 0;
    for e in &all {
        let got = read_rgb(&dir().join(&e.file)).unwrap_or_else(|r| panic!("{}: {r:?}", e.file));
        assert_eq!(got.dimensions(), e.rgb.dimensions(), "{}", e.file);
        if e.lossy {
            let d = max_abs_diff(got.as_raw(), e.rgb.as_raw());
            assert!(d <= JPEG_TOL, "{}: max difference {d} > {JPEG_TOL}", e.file);
            worst_jpeg = worst_jpeg.max(d);
        } else {
            assert!(got == e.rgb, "{}: pixels differ from Pillow's", e.file);
        }
    }
    println!("largest JPEG difference from Pillow: {worst_jpeg}");
}

/// Where display pixel (x, y) of an image shown with EXIF orientation `o` comes from in the
/// stored `w` x `h` pixels (TIFF 6.0 / EXIF 2.3, tag 0x0112).
fn source_of(o: u8, x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
    match o {
        1 => (x, y),
        2 => (w - 1 - x, y),         // mirrored left-right
        3 => (w - 1 - x, h - 1 - y), // turned 180 degrees
        4 => (x, h - 1 - y),         // mirrored top-bottom
        5 => (y, x),                 // transposed
        6 => (y, h - 1 - x),         // stored turned 90 degrees counter-clockwise
        7 => (w - 1 - y, h - 1 - x), // transversed
        8 => (w - 1 - y, x),         // stored turned 90 degrees clockwise
        _ => unreachable!(),
    }
}

#[test]
fn exif_orientation_turns_the_same_scan_upright() {
    // The eight files hold the same scan (make_fixtures.py checks it), so after orientation
    // they must equal the hand-transformed orientation-1 picture exactly.
    let stored = read_rgb(&dir().join("orient-1.jpg")).unwrap();
    let (w, h) = stored.dimensions();
    assert_eq!((w, h), (24, 16));
    for o in 1..=8u8 {
        let got = read_rgb(&dir().join(format!("orient-{o}.jpg"))).unwrap();
        let (dw, dh) = if o >= 5 { (h, w) } else { (w, h) };
        assert_eq!(got.dimensions(), (dw, dh), "orientation {o}");
        let want = RgbImage::from_fn(dw, dh, |x, y| {
            let (sx, sy) = source_of(o, x, y, w, h);
            *stored.get_pixel(sx, sy)
        });
        assert!(got == want, "orientation {o} not applied as the tag says");
        if o > 1 {
            assert!(got != stored, "orientation {o} left the picture as stored");
        }
    }
}

#[test]
fn content_decides_the_format_not_the_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let want = fs::read(dir().join("face.png.rgb")).unwrap();
    for (src, name) in [
        ("face.png", "FACE.JPG"),
        ("face.bmp", "face.png"),
        ("face.gif", "x"),
    ] {
        let p = tmp.path().join(name);
        fs::copy(dir().join(src), &p).unwrap();
        let got = read_rgb(&p).unwrap_or_else(|r| panic!("{src} as {name}: {r:?}"));
        assert_eq!(got.into_raw(), want, "{src} as {name}");
    }
    let text = tmp.path().join("notes.png");
    fs::write(&text, "not an image").unwrap();
    let (reason, detail) = read_rgb(&text).unwrap_err();
    assert_eq!(reason, SkipReason::UndecodableImage);
    assert!(detail.contains("unrecognised content"), "{detail}");
    let (reason, detail) = read_rgb(&tmp.path().join("gone.jpg")).unwrap_err();
    assert_eq!(reason, SkipReason::MissingFile);
    assert!(detail.contains("gone.jpg"), "{detail}");
}

#[test]
fn bombs_are_refused_as_too_large() {
    let text = fs::read_to_string(dir().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bombs = v["bombs"].as_array().unwrap();
    assert_eq!(bombs.len(), 3);
    for b in bombs {
        let file = b["file"].as_str().unwrap();
        let (reason, detail) = read_rgb(&dir().join(file)).unwrap_err();
        assert_eq!(reason, SkipReason::ImageTooLarge, "{file}: {detail}");
        assert!(detail.contains("limit"), "{file}: {detail}");
        println!("{file}: {detail}");
    }
}

/// One fixture placed in a folder dataset.
struct Placed {
    class: &'static str,
    name: &'static str,
    fixture: &'static str,
}

#[test]
fn a_folder_of_every_format_prepares_them_all() {
    let placed = [
        ("happy", "FACE.BMP", "face.bmp"),
        ("happy", "face.tiff", "face.tiff"),
        ("happy", "Face.Tif", "face.tiff"),
        ("sad", "FACE.PNG", "face.png"),
        ("sad", "face.JPG", "orient-6.jpg"),
        ("surprise", "face.webp", "face.webp"),
        ("surprise", "FACE.GIF", "face.gif"),
        ("fear", "bomb.png", "bomb-side.png"),
    ]
    .map(|(class, name, fixture)| Placed {
        class,
        name,
        fixture,
    });
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("faces");
    for p in &placed {
        let d = root.join("train").join(p.class);
        fs::create_dir_all(&d).unwrap();
        fs::copy(dir().join(p.fixture), d.join(p.name)).unwrap();
    }
    // Not images: not listed, not counted.
    fs::write(root.join("train/happy/notes.txt"), "x").unwrap();
    fs::write(root.join("train/happy/face.png.bak"), "x").unwrap();
    let val = root.join("val/neutral");
    fs::create_dir_all(&val).unwrap();
    fs::copy(dir().join("face.png"), val.join("a.png")).unwrap();

    let size = 8;
    let config = PrepareConfig {
        size,
        shard_size: 64,
        threads: 2,
        ..PrepareConfig::default()
    };
    let out = tmp.path().join("out");
    let m = prepare(&Source::Folder { root }, &out, &config).unwrap();
    let train = &m.splits["train"];
    assert_eq!((train.rows, train.kept, train.skipped), (8, 7, 1));
    let bomb = &m.skipped[&SkipReason::ImageTooLarge];
    assert_eq!(bomb.len(), 1);
    assert_eq!(bomb[0].path, "train/fear/bomb.png");
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);

    // Rows are numbered in (class folder, file name) order; each kept face must be the
    // crop-and-resize of Pillow's decoding of its fixture.
    let mut order: Vec<&Placed> = placed.iter().collect();
    order.sort_by_key(|p| (p.class, p.name));
    let want: BTreeMap<String, Expected> = expected()
        .into_iter()
        .map(|e| (e.file.clone(), e))
        .collect();
    let shard = Shard::open(&m.shard_paths(&out, "train")[0]).unwrap();
    assert_eq!(shard.len(), 7);
    let mut resizer = Resizer::new();
    for j in 0..shard.len() {
        let p = order[shard.source_row[j] as usize];
        let e = &want[p.fixture];
        let (w, h) = e.rgb.dimensions();
        let chw = crop_resize_chw(&mut resizer, e.rgb.as_raw(), w, h, whole(w, h), size as u32);
        let d = max_abs_diff(shard.image(j), &chw);
        // The resize averages: a JPEG's per-pixel bound holds for the mean, plus one rounding.
        let tol = if e.lossy { JPEG_TOL + 1 } else { 0 };
        assert!(
            d <= tol,
            "{}/{}: max difference {d} > {tol}",
            p.class,
            p.name
        );
    }
}
