//! Whole preparation runs: output independent of the thread count, shards that hold the right
//! rows, resuming after a lost shard, a leftover temp file, a corrupt shard or changed options.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fer_data::manifest::SkipReason;
use fer_data::prepare::{prepare_with_report, PrepareConfig, Source};
use fer_data::shard::{list_shards, Shard};

const HEADER: &str = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal";

/// 23 train rows (row 5 missing its image, row 11 unusable) and 6 val rows, JPEG and PNG.
fn tree(root: &Path) {
    let lists = root.join("Manually_Annotated_file_lists");
    fs::create_dir_all(&lists).unwrap();
    for (file, n, tag) in [("training.csv", 23, "t"), ("validation.csv", 6, "v")] {
        let mut text = format!("{HEADER}\n");
        for i in 0..n {
            let ext = if i % 3 == 0 { "png" } else { "jpg" };
            let rel = format!("{}/{tag}{i}.{ext}", i % 4);
            if !(tag == "t" && i == 5) {
                let p = root.join("Manually_Annotated_Images").join(&rel);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                image::RgbImage::from_fn(48 + i, 36, |x, y| {
                    image::Rgb([
                        (x * 5 + i * 9) as u8,
                        (y * 7) as u8,
                        ((x ^ y) * 3 + i) as u8,
                    ])
                })
                .save(&p)
                .unwrap();
            }
            let code = if tag == "t" && i == 11 { 9 } else { i % 9 };
            let (v, a) = if code >= 9 {
                (-2.0, -2.0)
            } else {
                (i as f32 / 25.0 - 0.4, 0.5 - i as f32 / 30.0)
            };
            text.push_str(&format!(
                "{rel},{},{},{},{},1;2;3,{code},{v},{a}\n",
                2 + i % 5,
                3,
                20 + i % 7,
                22
            ));
        }
        fs::write(lists.join(file), text).unwrap();
    }
}

fn config(threads: usize) -> PrepareConfig {
    PrepareConfig {
        size: 16,
        shard_size: 4,
        threads,
        ..PrepareConfig::default()
    }
}

fn files(out: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    for split in ["train", "val", "test"] {
        for p in list_shards(&out.join(split)).unwrap() {
            all.push((
                p.strip_prefix(out).unwrap().to_path_buf(),
                fs::read(&p).unwrap(),
            ));
        }
    }
    all.push((
        "manifest.json".into(),
        fs::read(out.join("manifest.json")).unwrap(),
    ));
    all
}

fn fixture() -> (tempfile::TempDir, Source) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("affectnet");
    tree(&root);
    (dir, Source::AffectNet { root })
}

#[test]
fn output_is_the_same_for_one_and_two_threads() {
    let (dir, source) = fixture();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (m1, r1) = prepare_with_report(&source, &a, &config(1)).unwrap();
    let (m2, r2) = prepare_with_report(&source, &b, &config(2)).unwrap();
    assert_eq!((r1.threads, r2.threads), (1, 2));
    assert_eq!(m1, m2);
    assert_eq!(files(&a), files(&b));

    // Val is carved from the 22 training candidates: round(2.2) = 2 of them (rows 10 and 18
    // with seed 0); validation.csv is the test split.
    let val = &m1.splits["val"];
    assert_eq!((val.rows, val.kept), (2, 2));
    let v0 = Shard::open(&a.join("val/shard-00000.safetensors")).unwrap();
    assert_eq!(v0.source_row, vec![10, 18]);
    assert_eq!(m1.splits["test"].kept, 6);
    // Block k of 4 candidates -> shard k; row 5's image is missing, row 11 is no candidate.
    let train = &m1.splits["train"];
    assert_eq!((train.rows, train.kept, train.skipped), (21, 19, 2));
    let counts: Vec<usize> = train.shards.iter().map(|s| s.count).collect();
    assert_eq!(counts, vec![4, 3, 4, 4, 4]);
    assert_eq!(m1.skipped[&SkipReason::MissingFile][0].row, 5);
    assert_eq!(m1.skipped[&SkipReason::NoUsableLabel][0].row, 11);
    let s1 = Shard::open(&a.join("train/shard-00001.safetensors")).unwrap();
    assert_eq!(s1.source_row, vec![4, 6, 7]);
    // Row 6: code 6 (Anger), valence 6/25 - 0.4, arousal 0.5 - 6/30.
    assert_eq!(s1.expression[1], 6);
    assert!((s1.valence[1] - (6.0 / 25.0 - 0.4)).abs() < 1e-6);
    assert!((s1.arousal[1] - (0.5 - 6.0 / 30.0)).abs() < 1e-6);
    // Row 8 (code 8, "None") keeps valence/arousal without a class; row 11 is not a candidate.
    let s2 = Shard::open(&a.join("train/shard-00002.safetensors")).unwrap();
    assert_eq!(s2.source_row, vec![8, 9, 12, 13]);
    assert_eq!(s2.expression, vec![-1, 0, 3, 4]);
    assert!(!s2.valence[0].is_nan());
    // Every sample with a class and the histogram agree.
    let classed: usize = train.class_histogram.iter().sum();
    assert_eq!(classed + train.no_class, train.kept);
    m1.check().unwrap();
}

#[test]
fn a_rerun_resumes_from_valid_shards() {
    let (dir, source) = fixture();
    let out = dir.path().join("out");
    let cfg = config(2);
    let (m, r) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r.shards_written, r.shards_reused), (8, 0));
    let reference = files(&out);
    let inode = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
    let kept_inode = inode("train/shard-00000.safetensors");

    // A lost shard, a temp file from a killed run and no manifest (the run was interrupted).
    fs::remove_file(out.join("train/shard-00003.safetensors")).unwrap();
    let temp = out.join("train/.shard-00004.safetensors.tmp12345");
    fs::write(&temp, b"half a shard").unwrap();
    fs::remove_file(out.join("manifest.json")).unwrap();
    let (m2, r2) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r2.shards_written, r2.shards_reused), (1, 7));
    assert_eq!(m2, m);
    assert_eq!(files(&out), reference);
    assert!(!temp.exists());
    assert_eq!(inode("train/shard-00000.safetensors"), kept_inode);

    // A shard with a wrong dtype is rebuilt, not trusted and not fatal.
    let bad = out.join("val/shard-00000.safetensors");
    let data = [0u8; 8];
    let views = vec![(
        "images",
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data[..]).unwrap(),
    )];
    fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();
    assert!(Shard::open(&bad).is_err());
    let (_, r3) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r3.shards_written, r3.shards_reused), (1, 7));
    assert_eq!(files(&out), reference);

    // So is one with a wrong image shape, and a valid shard of another image size.
    let data = [0u8; 24];
    let views = vec![(
        "images",
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![2, 2, 3, 2], &data[..])
            .unwrap(),
    )];
    fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut other = fer_data::shard::ShardData::new(8);
    other.push(&[0u8; 3 * 8 * 8], 1, 0.0, 0.0, 0);
    other
        .write(&out.join("train/shard-00004.safetensors"))
        .unwrap();
    let (_, r) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r.shards_written, r.shards_reused), (2, 6));
    assert_eq!(files(&out), reference);

    // A shard holding other rows than its block (a different source) is rebuilt too.
    fs::copy(
        out.join("train/shard-00002.safetensors"),
        out.join("train/shard-00001.safetensors"),
    )
    .unwrap();
    let (_, r4) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!(r4.shards_written, 1);
    assert_eq!(files(&out), reference);
}

#[test]
fn a_row_that_now_loads_invalidates_its_shard() {
    let (dir, source) = fixture();
    let out = dir.path().join("out");
    let cfg = config(1);
    prepare_with_report(&source, &out, &cfg).unwrap();
    // Row 5's image appears: shard 1 (rows 4..=7) must now hold it.
    let Source::AffectNet { root } = &source else {
        unreachable!()
    };
    let p = root.join("Manually_Annotated_Images/1/t5.jpg");
    // PNG bytes under the .jpg name (decoding goes by content): lossless, so exactly 9.
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(40, 40, image::Rgb([9, 9, 9]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    fs::write(&p, png.into_inner()).unwrap();
    let (m, r) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r.shards_written, r.shards_reused), (1, 7));
    assert_eq!(m.skipped_count(SkipReason::MissingFile), 0);
    let s1 = Shard::open(&out.join("train/shard-00001.safetensors")).unwrap();
    assert_eq!(s1.source_row, vec![4, 5, 6, 7]);
    assert!(s1.image(1).iter().all(|&b| b == 9));
}

#[test]
fn changed_options_rebuild_everything_and_drop_stale_shards() {
    let (dir, source) = fixture();
    let out = dir.path().join("out");
    prepare_with_report(&source, &out, &config(2)).unwrap();
    assert_eq!(list_shards(&out.join("train")).unwrap().len(), 5);
    let cfg = PrepareConfig {
        size: 12,
        shard_size: 10,
        ..config(2)
    };
    let (m, r) = prepare_with_report(&source, &out, &cfg).unwrap();
    assert_eq!((r.shards_written, r.shards_reused), (4, 0));
    let shards = list_shards(&out.join("train")).unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(Shard::open(&shards[0]).unwrap().size(), 12);
    assert_eq!(m.image_size, 12);
    // A margin change alone cannot be seen in the shards: the options file catches it.
    let cfg2 = PrepareConfig {
        margin: 0.3,
        ..cfg.clone()
    };
    let (_, r) = prepare_with_report(&source, &out, &cfg2).unwrap();
    assert_eq!(r.shards_reused, 0);
    let (_, r) = prepare_with_report(&source, &out, &cfg2).unwrap();
    assert_eq!((r.shards_written, r.shards_reused), (0, 4));
}
