//! The three data roles: a validation split carved from training (stratified, seeded, disjoint,
//! stable under re-runs and listing order), and every source producing train/val/test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use fer_data::prepare::{
    carve_key, prepare, stratum_quotas, Candidate, Listing, PrepareConfig, Source, SplitListing,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A training listing of `counts[c]` candidates of class `c` (plus `none` without a class).
fn listing(counts: &[usize], none: usize) -> Listing {
    let mut train = SplitListing::default();
    let classes = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as i64, n))
        .chain(std::iter::repeat_n(-1, none));
    for (row, class) in classes.enumerate() {
        train.candidates.push(Candidate {
            row,
            name: format!("faces/{class}/{row:05}.jpg"),
            file: format!("/nowhere/{row}.jpg").into(),
            face: None,
            expression: class,
            valence: if class < 0 { 0.1 } else { f32::NAN },
            arousal: if class < 0 { 0.2 } else { f32::NAN },
        });
    }
    train.rows = train.candidates.len();
    Listing {
        splits: [train, SplitListing::default(), SplitListing::default()],
        ..Listing::default()
    }
}

fn names(s: &SplitListing) -> BTreeSet<String> {
    s.candidates.iter().map(|c| c.name.clone()).collect()
}

fn per_class(s: &SplitListing) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for c in &s.candidates {
        *m.entry(c.expression).or_default() += 1;
    }
    m
}

#[test]
fn the_carve_key_is_pinned() {
    // From an independent Python implementation of FNV-1a (seed as 8 little-endian bytes, then
    // the name) + SplitMix64: a change here would silently move rows between train and val.
    for (seed, name, want) in [
        (0, "train/happy/a.png", 0.20641804321633705),
        (0, "", 0.5048676404714686),
        (7, "img/0.jpg", 0.3660831120198975),
        (123456789, "Training_10118481.jpg", 0.2927050042694438),
    ] {
        assert_eq!(carve_key(seed, name), want, "{seed} {name}");
    }
}

#[test]
fn quotas_share_the_rounded_total_by_largest_remainder() {
    // FER-2013's training classes at 10 %: 2870.9 -> 2871, each class 10 % rounded down or up.
    let fer = [3995, 436, 4097, 7215, 4965, 4830, 3171];
    let q = stratum_quotas(&fer, 0.1);
    assert_eq!(q.iter().sum::<usize>(), 2871);
    for (n, k) in fer.iter().zip(&q) {
        let exact: f64 = 0.1 * *n as f64;
        assert!(
            exact.floor() as usize <= *k && *k <= exact.ceil() as usize,
            "{n} -> {k}"
        );
    }
    // 10 % of 15/13/17 is 1.5/1.3/1.7, 4.5 in all, rounded (half away from zero) to 5: the
    // floors give 3, then the largest remainders (.7, then .5) get one more each.
    assert_eq!(stratum_quotas(&[15, 13, 17], 0.1), vec![2, 1, 2]);
    // A class can never give more than it has.
    assert_eq!(stratum_quotas(&[1, 1, 1], 0.9), vec![1, 1, 1]);
    assert_eq!(stratum_quotas(&[], 0.5), Vec::<usize>::new());
}

#[test]
fn the_carve_is_stratified_disjoint_and_complete() {
    let counts = [400, 40, 410, 720, 500, 480, 317];
    let mut l = listing(&counts, 25);
    let before = names(&l.splits[0]);
    let carve = l.carve_val(0.1, 0).unwrap().unwrap();
    assert_eq!((carve.fraction, carve.seed), (0.1, 0));
    let (train, val) = (names(&l.splits[0]), names(&l.splits[1]));
    assert!(train.is_disjoint(&val));
    assert_eq!(&train | &val, before);
    assert_eq!(l.splits[0].rows + l.splits[1].rows, before.len());
    assert_eq!(l.splits[1].rows, val.len());
    // Every class (and the unclassed group) gives 10 % rounded down or up.
    let (pt, pv) = (per_class(&l.splits[0]), per_class(&l.splits[1]));
    for (class, &n) in counts.iter().enumerate() {
        let v = pv[&(class as i64)];
        assert_eq!(pt[&(class as i64)] + v, n);
        assert!(v == n / 10 || v == n / 10 + 1, "class {class}: {v} of {n}");
    }
    assert!((2..=3).contains(&pv[&-1]));
    assert_eq!(val.len(), (0.1f64 * before.len() as f64).round() as usize);
    // Candidates keep their source rows, in order.
    let rows: Vec<usize> = l.splits[1].candidates.iter().map(|c| c.row).collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]));
    assert!(
        l.origins[1].contains("10.0 % of each class, seed 0"),
        "{}",
        l.origins[1]
    );
}

#[test]
fn the_carve_depends_on_the_seed_only_not_on_the_listing_order() {
    let counts = [200, 30, 150, 90];
    let carve_names = |seed: u64, shuffle: Option<u64>| {
        let mut l = listing(&counts, 0);
        if let Some(s) = shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
            l.splits[0].candidates.shuffle(&mut rng);
        }
        l.carve_val(0.2, seed).unwrap();
        names(&l.splits[1])
    };
    let a = carve_names(5, None);
    assert_eq!(a, carve_names(5, None), "same seed, same carve");
    assert_eq!(a, carve_names(5, Some(1)), "listing order must not matter");
    assert_eq!(a, carve_names(5, Some(2)));
    let b = carve_names(6, None);
    assert_ne!(a, b, "another seed carves other faces");
    assert_eq!(a.len(), b.len());
}

#[test]
fn a_source_val_split_is_kept_and_a_missing_one_needs_a_fraction() {
    let mut l = listing(&[10, 10], 0);
    l.splits[1] = listing(&[3], 0).splits[0].clone();
    let before = l.splits.each_ref().map(names);
    assert_eq!(l.carve_val(0.1, 0).unwrap(), None);
    assert_eq!(l.splits.each_ref().map(names), before);

    let mut l = listing(&[10, 10], 0);
    for f in [0.0, 1.0, f64::NAN] {
        let err = l.carve_val(f, 0).unwrap_err().to_string();
        assert!(err.contains("--val-fraction"), "{err}");
    }
    // Two candidates at 10 %: round(0.2) = 0 carved, which is an error, not an empty val.
    let mut l = listing(&[1, 1], 0);
    let err = l.carve_val(0.1, 0).unwrap_err().to_string();
    assert!(err.contains("carves no validation sample"), "{err}");
    assert_eq!(
        l.splits[0].candidates.len(),
        2,
        "a failed carve leaves train as it was"
    );
}

fn png(path: &Path, shade: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(12, 12, image::Rgb([shade, shade / 2, 255 - shade]))
        .save(path)
        .unwrap();
}

fn config() -> PrepareConfig {
    PrepareConfig {
        size: 8,
        shard_size: 16,
        threads: 1,
        val_fraction: 0.25,
        ..PrepareConfig::default()
    }
}

/// Every kept sample of a prepared split, as (source row, class).
fn samples(out: &Path, split: &str) -> Vec<(i64, i64)> {
    let mut v = vec![];
    for p in fer_data::shard::list_shards(&out.join(split)).unwrap() {
        let s = fer_data::shard::Shard::open(&p).unwrap();
        v.extend(
            s.source_row
                .iter()
                .copied()
                .zip(s.expression.iter().copied()),
        );
    }
    v
}

#[test]
fn every_source_prepares_train_val_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Folders: train/ and test/, no val/: val is carved from train/.
    for (i, class) in ["happy", "sad"].iter().enumerate() {
        for k in 0..8 {
            png(
                &d.join(format!("fer/train/{class}/{k}.png")),
                (i * 100 + k) as u8,
            );
        }
        png(&d.join(format!("fer/test/{class}/t.png")), 7);
    }
    let out = d.join("out-folder");
    let m = prepare(
        &Source::Folder {
            root: d.join("fer"),
        },
        &out,
        &config(),
    )
    .unwrap();
    assert_eq!(
        m.splits.keys().collect::<Vec<_>>(),
        vec!["test", "train", "val"]
    );
    assert_eq!((m.splits["train"].kept, m.splits["val"].kept), (12, 4));
    assert_eq!(m.splits["val"].class_histogram[1], 2); // 2 of 8 happy
    assert_eq!(m.splits["test"].kept, 2);
    assert_eq!(m.val_carve.unwrap().fraction, 0.25);
    assert_eq!(m.split_origins["test"], "the test/ folder");
    let (train, val) = (samples(&out, "train"), samples(&out, "val"));
    let rows = |v: &[(i64, i64)]| v.iter().map(|s| s.0).collect::<BTreeSet<_>>();
    assert!(rows(&train).is_disjoint(&rows(&val)));
    // A re-run keeps every shard and the same carve.
    let again = prepare(
        &Source::Folder {
            root: d.join("fer"),
        },
        &out,
        &config(),
    )
    .unwrap();
    assert_eq!(again, m);
    assert_eq!(samples(&out, "val"), val);
    // Another seed carves other faces.
    let out2 = d.join("out-folder-seed");
    let cfg = PrepareConfig {
        val_seed: 1,
        ..config()
    };
    prepare(
        &Source::Folder {
            root: d.join("fer"),
        },
        &out2,
        &cfg,
    )
    .unwrap();
    assert_ne!(samples(&out2, "val"), val);

    // AffectNet: training.csv -> train + carved val, validation.csv -> test.
    let root = d.join("affectnet");
    let header = "subDirectory_filePath,face_x,face_y,face_width,face_height,\
                  facial_landmarks,expression,valence,arousal";
    let lists = root.join("Manually_Annotated_file_lists");
    fs::create_dir_all(&lists).unwrap();
    for (file, n) in [("training.csv", 12), ("validation.csv", 3)] {
        let mut text = format!("{header}\n");
        for k in 0..n {
            let rel = format!("{file}/{k}.png");
            png(
                &root.join("Manually_Annotated_Images").join(&rel),
                k as u8 * 9,
            );
            text.push_str(&format!("{rel},0,0,12,12,,{},0.1,0.2\n", k % 3));
        }
        fs::write(lists.join(file), text).unwrap();
    }
    let out = d.join("out-affectnet");
    let m = prepare(&Source::AffectNet { root }, &out, &config()).unwrap();
    assert_eq!((m.splits["train"].kept, m.splits["val"].kept), (9, 3));
    assert_eq!(m.splits["val"].class_histogram[..3], [1, 1, 1]);
    assert_eq!(m.splits["test"].kept, 3);
    assert!(m.split_origins["test"].contains("validation.csv"));
    assert!(m.split_origins["val"].contains("carved"));

    // CSV: by its split column; no `val` rows -> carved from the training rows.
    let images = d.join("csv-images");
    let mut text = String::from("path,expression,valence,arousal,split\n");
    for k in 0..10 {
        png(&images.join(format!("{k}.png")), k as u8 * 20);
        let split = if k < 8 { "train" } else { "test" };
        text.push_str(&format!("{k}.png,{},,,{split}\n", k % 2));
    }
    fs::write(d.join("faces.csv"), &text).unwrap();
    let out = d.join("out-csv");
    let source = Source::Csv {
        file: d.join("faces.csv"),
        images: images.clone(),
    };
    let m = prepare(&source, &out, &config()).unwrap();
    assert_eq!(
        [
            m.splits["train"].kept,
            m.splits["val"].kept,
            m.splits["test"].kept
        ],
        [6, 2, 2]
    );
    // With `val` rows of its own, nothing is carved.
    let text = text.replace("0.png,0,,,train", "0.png,0,,,val");
    fs::write(d.join("faces.csv"), &text).unwrap();
    let m = prepare(&source, &d.join("out-csv2"), &config()).unwrap();
    assert_eq!((m.splits["val"].kept, m.val_carve), (1, None));
    assert_eq!(m.split_origins["val"], "rows with split = val");
}
