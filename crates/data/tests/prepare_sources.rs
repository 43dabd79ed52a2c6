//! Source readers against hand-written inputs, and every kind of bad input: each is a clear
//! error naming the path or a counted skip with its reason, never a panic.

use std::fs;
use std::path::Path;

use fer_data::affectnet;
use fer_data::manifest::SkipReason;
use fer_data::plain_csv;
use fer_data::prepare::{prepare, PrepareConfig, Source};

const HEADER: &str = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal";

fn write_image(path: &Path, w: u32, h: u32, seed: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, (255 - v) as u8, ((x * y + seed) % 256) as u8])
    })
    .save(path)
    .unwrap();
}

fn small_config() -> PrepareConfig {
    PrepareConfig {
        size: 8,
        shard_size: 4,
        threads: 2,
        ..PrepareConfig::default()
    }
}

/// An AffectNet tree whose lists are given verbatim (data rows only).
fn affectnet_tree(root: &Path, train: &[&str], val: &[&str]) {
    let lists = root.join("Manually_Annotated_file_lists");
    fs::create_dir_all(&lists).unwrap();
    for (file, rows) in [("training.csv", train), ("validation.csv", val)] {
        let mut text = format!("{HEADER}\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        fs::write(lists.join(file), text).unwrap();
    }
}

#[test]
fn affectnet_rows_parse_by_the_label_rules() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("training.csv");
    // Columns deliberately reordered: they are found by header name.
    let text = "\
expression,subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,valence,arousal
1,0/a.jpg,10,12,40,41,\"1.5;2.5;3.5;4.5\",0.5,-0.25
9,0/b.jpg,0,0,30,30,1;2;3,-2,-2
8,0/c.jpg,1.5,2.5,30,30,1;2,0.3,0.4
7,\"0/d, quoted.jpg\",0,0,30,30,,-2,-2
3,0/e.jpg,0,0,30
2,0/f.jpg,abc,0,30,30,1;2,0.1,0.1
4,0/g.jpg,0,0,30,30,1;2,1.5,0.1
5,0/h.jpg,0,0,30,30,1;2,NaN,0.1
12,0/i.jpg,0,0,30,30,1;2,0.1,0.1
10,0/j.jpg,0,0,30,30,1;2,-2,-2
6,0/k.jpg,0,0,30,30,1;2,-1,1
";
    fs::write(&csv, text).unwrap();
    let images = dir.path().join("imgs");
    let list = affectnet::read_list(&csv, &images, "train", 8).unwrap();
    assert_eq!(list.rows, 11);
    let kept: Vec<_> = list
        .candidates
        .iter()
        .map(|c| (c.row, c.name.as_str(), c.expression))
        .collect();
    assert_eq!(
        kept,
        vec![
            (0, "0/a.jpg", 1),
            (2, "0/c.jpg", -1),
            (3, "0/d, quoted.jpg", 7),
            (10, "0/k.jpg", 6)
        ]
    );
    let a = &list.candidates[0];
    assert_eq!((a.valence, a.arousal), (0.5, -0.25));
    let face = a.face.unwrap();
    assert_eq!((face.x, face.y, face.w, face.h), (10.0, 12.0, 40.0, 41.0));
    assert_eq!(a.file, images.join("0/a.jpg"));
    let c = &list.candidates[1];
    assert_eq!((c.valence, c.arousal), (0.3, 0.4));
    assert_eq!(c.face.unwrap().x, 1.5);
    let d = &list.candidates[2];
    assert!(d.valence.is_nan() && d.arousal.is_nan());
    assert_eq!(
        (list.candidates[3].valence, list.candidates[3].arousal),
        (-1.0, 1.0)
    );

    let skipped: Vec<_> = list
        .skipped
        .iter()
        .map(|(r, s)| (s.row, s.path.as_str(), *r))
        .collect();
    use SkipReason::*;
    assert_eq!(
        skipped,
        vec![
            (1, "0/b.jpg", NoUsableLabel),
            (4, "3", MalformedRow), // wrong field count: the first field is all we can name
            (5, "0/f.jpg", MalformedRow),
            (6, "0/g.jpg", LabelOutOfRange),
            (7, "0/h.jpg", MalformedRow),
            (8, "0/i.jpg", LabelOutOfRange),
            (9, "0/j.jpg", NoUsableLabel),
        ]
    );
    let detail = |row: usize| {
        &list
            .skipped
            .iter()
            .find(|s| s.1.row == row)
            .unwrap()
            .1
            .detail
    };
    assert!(
        detail(4).contains("expected 9 fields, found 5"),
        "{}",
        detail(4)
    );
    assert!(detail(5).contains("face_x `abc`"), "{}", detail(5));
    assert!(detail(6).contains("valence 1.5"), "{}", detail(6));

    // With 7 classes Contempt has no class, and without valence/arousal the row is unusable.
    let list7 = affectnet::read_list(&csv, &images, "train", 7).unwrap();
    assert_eq!(list7.candidates.len(), 3);
    assert!(list7
        .skipped
        .iter()
        .any(|(r, s)| s.row == 3 && *r == NoUsableLabel));
}

#[test]
fn plain_csv_rows_parse() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("imgs");
    fs::create_dir_all(&images).unwrap();
    let csv = dir.path().join("mine.csv");
    let text = "\
path,expression,valence,arousal,x,y,w,h,split
a.png,1,0.5,0.5,1,2,3,4,train
b.png,Angry,,,,,,,val
c.png,,0.1,-0.1,,,,,test
d.png,,,,,,,,train
e.png,grumpy,0.1,0.1,,,,,train
f.png,3,0.1,0.1,,,,,holdout
g.png,contempt,-2,-2,,,,,training
";
    fs::write(&csv, text).unwrap();
    let l = plain_csv::read(&csv, &images, 8).unwrap();
    let [train, val, test] = &l.splits;
    let names = |s: &fer_data::prepare::SplitListing| {
        s.candidates
            .iter()
            .map(|c| (c.row, c.expression))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(train), vec![(0, 1), (6, 7)]);
    assert_eq!(names(val), vec![(1, 6)]);
    assert_eq!(names(test), vec![(2, -1)]);
    let a = &train.candidates[0];
    let f = a.face.unwrap();
    assert_eq!((f.x, f.y, f.w, f.h), (1.0, 2.0, 3.0, 4.0));
    assert!(val.candidates[0].face.is_none() && val.candidates[0].valence.is_nan());
    assert_eq!(test.candidates[0].valence, 0.1);
    let skipped: Vec<_> = l
        .splits
        .iter()
        .flat_map(|s| s.skipped.iter().map(|(r, s)| (s.row, *r)))
        .collect();
    assert_eq!(skipped.len(), 3);
    for (row, reason) in [
        (3, SkipReason::NoUsableLabel),
        (4, SkipReason::MalformedRow),
        (5, SkipReason::MalformedRow),
    ] {
        assert!(skipped.contains(&(row, reason)), "row {row}: {skipped:?}");
    }
    assert_eq!(train.rows + val.rows + test.rows, 7);
    assert_eq!(l.origins[2], "rows with split = test");
    assert_eq!(l.class_map["Angry"], 6);
    assert_eq!(l.class_map["contempt"], 7);
}

#[test]
fn plain_csv_without_split_column_is_training_data_with_a_carved_val() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("mine.csv");
    let mut text = String::from("path,expression,valence,arousal\n");
    for i in 0..200 {
        text.push_str(&format!("img/{i}.jpg,{},,\n", i % 8));
    }
    fs::write(&csv, &text).unwrap();
    let mut l = plain_csv::read(&csv, dir.path(), 8).unwrap();
    assert_eq!(l.splits.each_ref().map(|s| s.rows), [200, 0, 0]);
    assert_eq!(l.origins[0], "every row (no split column)");
    let carve = l.carve_val(0.25, 3).unwrap().unwrap();
    assert_eq!((carve.fraction, carve.seed), (0.25, 3));
    // 25 rows per class: 6.25 each rounds down, and the 2 left of round(50) go to the first
    // classes on the tie of remainders.
    let mut per_class = [0usize; 8];
    for c in &l.splits[1].candidates {
        per_class[c.expression as usize] += 1;
    }
    assert_eq!(per_class, [7, 7, 6, 6, 6, 6, 6, 6]);
    assert_eq!((l.splits[0].rows, l.splits[1].rows), (150, 50));
    assert!(l.splits[2].candidates.is_empty());
}

#[test]
fn bad_rows_and_images_are_counted_skips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("affectnet");
    let img = |rel: &str| root.join("Manually_Annotated_Images").join(rel);
    write_image(&img("1/ok.jpg"), 40, 30, 1);
    write_image(&img("1/ok2.png"), 40, 30, 2);
    write_image(&img("1/cut.jpg"), 40, 30, 3);
    let bytes = fs::read(img("1/cut.jpg")).unwrap();
    fs::write(img("1/cut.jpg"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    write_image(&img("1/cut.png"), 40, 30, 4);
    let bytes = fs::read(img("1/cut.png")).unwrap();
    fs::write(img("1/cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    fs::write(img("1/text.jpg"), b"this is not an image").unwrap();
    write_image(&img("2/val.jpg"), 40, 30, 5);
    affectnet_tree(
        &root,
        &[
            "1/ok.jpg,5,5,20,20,1;2,1,0.5,0.5",
            "1/missing.jpg,5,5,20,20,1;2,1,0.5,0.5",
            "1/cut.jpg,5,5,20,20,1;2,2,0.5,0.5",
            "1/cut.png,5,5,20,20,1;2,2,0.5,0.5",
            "1/text.jpg,5,5,20,20,1;2,2,0.5,0.5",
            "1/ok2.png,45,5,20,20,1;2,3,0.5,0.5",
            "1/ok2.png,5,5,20",
            "1/ok2.png,five,5,20,20,1;2,3,0.5,0.5",
            "1/ok2.png,5,5,20,20,1;2,3,-1.5,0.5",
            "1/ok2.png,5,5,20,20,1;2,9,-2,-2",
            "1/ok2.png,5,5,0,20,1;2,3,0.5,0.5",
        ],
        &["2/val.jpg,0,0,40,30,,4,-2,-2"],
    );
    let out = dir.path().join("out");
    let m = prepare(&Source::AffectNet { root }, &out, &small_config()).unwrap();
    // The training list's 11 rows are shared by train and a carved val (6 candidates at 0.1:
    // one goes to val); validation.csv is the test split.
    let (train, val) = (&m.splits["train"], &m.splits["val"]);
    assert_eq!(train.rows + val.rows, 11);
    assert_eq!(val.rows, 1);
    assert_eq!(train.kept + val.kept, 1);
    assert_eq!(train.skipped + val.skipped, 10);
    assert_eq!(train.class_histogram[1] + val.class_histogram[1], 1);
    let test = &m.splits["test"];
    assert_eq!((test.rows, test.kept, test.with_va), (1, 1, 0));
    assert!(m.val_carve.is_some());
    assert!(m.split_origins["test"].contains("validation.csv"));
    m.check().unwrap();
    // Sorted: a row carved into val is listed after the train ones.
    let rows_of = |r: SkipReason| -> Vec<usize> {
        let mut rows: Vec<usize> = m
            .skipped
            .get(&r)
            .map_or_else(Vec::new, |v| v.iter().map(|s| s.row).collect());
        rows.sort();
        rows
    };
    use SkipReason::*;
    assert_eq!(rows_of(MissingFile), vec![1]);
    assert_eq!(rows_of(UndecodableImage), vec![2, 3, 4]);
    assert_eq!(rows_of(BoxOutsideImage), vec![5]);
    assert_eq!(rows_of(MalformedRow), vec![6, 7, 10]);
    assert_eq!(rows_of(LabelOutOfRange), vec![8]);
    assert_eq!(rows_of(NoUsableLabel), vec![9]);
    let cut = m.skipped[&UndecodableImage]
        .iter()
        .find(|r| r.row == 2)
        .unwrap();
    assert_eq!(cut.path, "1/cut.jpg");
    assert!(cut.detail.contains("truncated"), "{}", cut.detail);
    let missing = &m.skipped[&MissingFile][0];
    assert!(missing.detail.contains("missing.jpg"), "{}", missing.detail);
    // The manifest on disk is the one returned, and it is pretty JSON naming the reasons.
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(text.contains("\"box outside image\": ["), "{text}");
    assert_eq!(fer_data::prepare::load_manifest(&out).unwrap(), m);
}

#[test]
fn a_cut_jpeg_decodes_without_error_so_the_end_marker_check_is_needed() {
    // Documents why the end-of-image check exists: the JPEG decoder alone accepts this file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jpg");
    write_image(&p, 40, 30, 3);
    let bytes = fs::read(&p).unwrap();
    let cut = &bytes[..bytes.len() * 2 / 3];
    let lenient = image::load_from_memory(cut).is_ok();
    let checked = fer_data::prepare::decode_rgb(cut);
    assert!(checked.is_err());
    assert!(fer_data::prepare::decode_rgb(&bytes).is_ok());
    assert!(
        lenient,
        "the JPEG decoder now rejects cut files itself; the end-marker check may be redundant"
    );
}

#[test]
fn missing_sources_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = small_config();
    let nowhere = dir.path().join("no-such-affectnet");
    let err = prepare(&Source::AffectNet { root: nowhere }, &out, &cfg).unwrap_err();
    assert!(err.to_string().contains("no-such-affectnet"), "{err}");

    // The root exists but the validation list does not.
    let root = dir.path().join("half");
    affectnet_tree(&root, &["0/a.jpg,0,0,9,9,,1,0,0"], &[]);
    fs::remove_file(root.join(affectnet::VAL_LIST)).unwrap();
    let err = prepare(&Source::AffectNet { root }, &out, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("validation.csv"), "{err}");

    let err = prepare(
        &Source::Csv {
            file: dir.path().join("none.csv"),
            images: dir.path().to_path_buf(),
        },
        &out,
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("none.csv"), "{err}");

    // A list with a header and nothing else is an error, not an empty dataset.
    let header_only = dir.path().join("header-only.csv");
    fs::write(&header_only, "path,expression,valence,arousal\n").unwrap();
    let err = prepare(
        &Source::Csv {
            file: header_only,
            images: dir.path().to_path_buf(),
        },
        &out,
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("header-only.csv") && err.contains("no data rows"),
        "{err}"
    );
    let root = dir.path().join("empty-lists");
    affectnet_tree(&root, &[], &[]);
    let err = prepare(&Source::AffectNet { root }, &out, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training.csv") && err.contains("no data rows"),
        "{err}"
    );

    // A list without a required column.
    let root = dir.path().join("nocol");
    affectnet_tree(&root, &[], &[]);
    fs::write(
        root.join(affectnet::TRAIN_LIST),
        "subDirectory_filePath,face_x\n",
    )
    .unwrap();
    let err = prepare(&Source::AffectNet { root }, &out, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training.csv") && err.contains("face_y"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn folder_source_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fer");
    // A grey PNG becomes RGB with three equal planes.
    let grey = root.join("train/happy/g.png");
    fs::create_dir_all(grey.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(12, 12, |x, y| image::Luma([(x * 20 + y) as u8]))
        .save(&grey)
        .unwrap();
    write_image(&root.join("train/Angry/a.jpg"), 16, 16, 1);
    write_image(&root.join("train/Angry/b.JPEG"), 16, 16, 2);
    fs::write(root.join("train/Angry/notes.txt"), "not a sample").unwrap();
    write_image(&root.join("val/fear/v.png"), 16, 16, 7);
    write_image(&root.join("test/sad/c.png"), 16, 16, 3);
    let out = dir.path().join("out");
    let cfg = PrepareConfig {
        size: 12,
        ..small_config()
    };
    let m = prepare(&Source::Folder { root: root.clone() }, &out, &cfg).unwrap();
    let train = &m.splits["train"];
    assert_eq!((train.rows, train.kept), (3, 3));
    assert_eq!(train.class_histogram[6], 2);
    assert_eq!(train.class_histogram[1], 1);
    assert_eq!(m.splits["val"].class_histogram[4], 1);
    assert_eq!(m.splits["test"].class_histogram[2], 1);
    assert!(m.val_carve.is_none());
    assert_eq!(m.split_origins["val"], "the val/ folder");
    assert_eq!(m.class_map["Angry"], 6);
    assert_eq!(m.class_map["happy"], 1);
    // Rows are in (class folder, file) order: Angry/a, Angry/b, happy/g.
    let shard = fer_data::shard::Shard::open(&out.join("train/shard-00000.safetensors")).unwrap();
    assert_eq!(shard.expression, vec![6, 6, 1]);
    assert!(shard.valence.iter().all(|v| v.is_nan()));
    let g = shard.image(2);
    let plane = 12 * 12;
    assert_eq!(&g[..plane], &g[plane..2 * plane]);
    assert_eq!(&g[..plane], &g[2 * plane..]);
    // Same size as the output: the grey values come through unchanged.
    let want: Vec<u8> = (0..plane as u32)
        .map(|i| ((i % 12) * 20 + i / 12) as u8)
        .collect();
    assert_eq!(&g[..plane], &want[..]);

    // An unknown class folder is an error naming it, or counted skips on request.
    write_image(&root.join("train/sloth/s1.png"), 16, 16, 4);
    write_image(&root.join("train/sloth/s2.png"), 16, 16, 5);
    let err = prepare(&Source::Folder { root: root.clone() }, &out, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sloth") && err.contains("unknown class"),
        "{err}"
    );
    let cfg_skip = PrepareConfig {
        skip_unknown_classes: true,
        ..cfg.clone()
    };
    let m = prepare(&Source::Folder { root: root.clone() }, &out, &cfg_skip).unwrap();
    assert_eq!(m.splits["train"].rows, 5);
    assert_eq!(m.splits["train"].skipped, 2);
    let sk = &m.skipped[&SkipReason::UnknownClassFolder];
    assert_eq!(sk.len(), 2);
    assert!(sk[0].path.contains("sloth"));

    // Contempt with 7 classes: no class, no valence/arousal -> counted as unusable.
    write_image(&root.join("train/contempt/c.png"), 16, 16, 6);
    let cfg7 = PrepareConfig {
        num_classes: 7,
        ..cfg_skip.clone()
    };
    let m = prepare(&Source::Folder { root: root.clone() }, &out, &cfg7).unwrap();
    assert_eq!(m.skipped_count(SkipReason::NoUsableLabel), 1);
    assert_eq!(m.class_names.len(), 7);
    m.check().unwrap();

    // An empty split and a missing split are errors naming the folder.
    let empty = dir.path().join("empty");
    fs::create_dir_all(empty.join("train/happy")).unwrap();
    fs::create_dir_all(empty.join("val")).unwrap();
    let err = prepare(
        &Source::Folder {
            root: empty.clone(),
        },
        &out,
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no images") && err.contains("train"), "{err}");
    let nosplit = dir.path().join("nosplit");
    fs::create_dir_all(nosplit.join("happy")).unwrap();
    let err = prepare(&Source::Folder { root: nosplit }, &out, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nosplit") && err.contains("train/"), "{err}");
}

#[test]
fn bad_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    affectnet_tree(&root, &[], &[]);
    for cfg in [
        PrepareConfig {
            size: 0,
            ..PrepareConfig::default()
        },
        PrepareConfig {
            num_classes: 6,
            ..PrepareConfig::default()
        },
        PrepareConfig {
            margin: f64::NAN,
            ..PrepareConfig::default()
        },
        PrepareConfig {
            shard_size: 0,
            ..PrepareConfig::default()
        },
    ] {
        let err = prepare(
            &Source::AffectNet { root: root.clone() },
            &dir.path().join("o"),
            &cfg,
        )
        .unwrap_err();
        assert!(matches!(err, fer_data::Error::Options(_)), "{err}");
    }
}
