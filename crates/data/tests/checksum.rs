//! Shard checksums end to end: a flipped pixel byte (which nothing else can see) is refused by
//! the loader and by the folder check, naming the file; a rerun of preparation re-makes only the
//! damaged shard; manifests from before checksums still load; cut-off, missing and unlisted
//! shards are refused.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fer_data::checksum::Checksum;
use fer_data::integrity::{check_shard, unverified_note};
use fer_data::loader::Dataset;
use fer_data::manifest::{self, Manifest};
use fer_data::prepare::{prepare_with_report, PrepareConfig, Source, PREVIOUS_FILE};
use fer_data::shard::Shard;
use fer_data::Error;

/// train: 7 faces in two classes (shards of 3: three train shards), val: 2, as PNGs.
fn source(root: &Path) -> Source {
    for (split, class, n) in [
        ("train", "happy", 4),
        ("train", "sad", 3),
        ("val", "happy", 1),
        ("val", "sad", 1),
    ] {
        let dir = root.join(split).join(class);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            image::RgbImage::from_fn(20 + i, 18, |x, y| {
                image::Rgb([(x * 11 + i * 40) as u8, (y * 13) as u8, (x ^ y) as u8 * 7])
            })
            .save(dir.join(format!("{class}{i}.png")))
            .unwrap();
        }
    }
    Source::Folder {
        root: root.to_path_buf(),
    }
}

fn config() -> PrepareConfig {
    PrepareConfig {
        size: 8,
        shard_size: 3,
        threads: 1,
        ..PrepareConfig::default()
    }
}

fn prepared() -> (tempfile::TempDir, Source, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = source(&dir.path().join("faces"));
    let out = dir.path().join("out");
    prepare_with_report(&source, &out, &config()).unwrap();
    (dir, source, out)
}

/// Flips one byte in the middle of the `images` tensor's data, found through the safetensors
/// header rather than through the crate's reader.
fn flip_pixel_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let (header, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let (start, end) = meta.info("images").unwrap().data_offsets;
    let at = 8 + header + (start + end) / 2;
    bytes[at] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

fn stamp(path: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec(), fs::read(path).unwrap())
}

#[test]
fn the_manifest_records_each_shard_file() {
    let (_dir, _, out) = prepared();
    let m = Manifest::load(&out.join(manifest::FILE_NAME)).unwrap();
    assert_eq!(m.format, "fer-prepared-v3");
    assert!(m.has_checksums());
    let train = &m.splits["train"];
    assert_eq!(train.shards.len(), 3);
    for split in ["train", "val"] {
        for e in &m.splits[split].shards {
            let bytes = fs::read(out.join(split).join(&e.file)).unwrap();
            assert_eq!(e.bytes, Some(bytes.len() as u64));
            assert_eq!(e.checksum, Some(Checksum::of(&bytes)));
        }
    }
    assert!(!out.join(PREVIOUS_FILE).exists());
}

#[test]
fn a_flipped_pixel_byte_is_refused_by_the_loader_and_the_check() {
    let (_dir, _, out) = prepared();
    let bad = out.join("train/shard-00001.safetensors");
    let m = Manifest::load(&out.join(manifest::FILE_NAME)).unwrap();
    let entry = &m.splits["train"].shards[1];
    flip_pixel_byte(&bad);
    // Without the checksum the damage is invisible: the file parses and its labels are fine.
    Shard::open(&bad).unwrap();

    let err = Dataset::open(&out.join("train")).unwrap_err();
    let actual = Checksum::of(&fs::read(&bad).unwrap());
    match &err {
        Error::ChecksumMismatch {
            path,
            expected,
            actual: a,
        } => {
            assert_eq!(path, &bad);
            assert_eq!(Some(*expected), entry.checksum);
            assert_eq!(*a, actual);
        }
        e => panic!("expected a checksum mismatch, got {e}"),
    }
    let msg = err.to_string();
    for part in [
        bad.to_string_lossy().into_owned(),
        entry.checksum.unwrap().to_string(),
        actual.to_string(),
        "re-run prepare-data, which re-makes only the bad shards".into(),
    ] {
        assert!(msg.contains(&part), "{msg} lacks {part}");
    }
    // The other split is untouched and still opens.
    Dataset::open(&out.join("val")).unwrap();

    let err = check_shard(&out, "train", entry, m.num_classes).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("shard-00001.safetensors"), "{err}");
    let good = check_shard(&out, "train", &m.splits["train"].shards[0], m.num_classes).unwrap();
    assert_eq!(good.samples, 3);
    assert_eq!(good.checksum, m.splits["train"].shards[0].checksum);
}

#[test]
fn a_rerun_remakes_only_the_damaged_shard() {
    let (_dir, source, out) = prepared();
    let reference = Manifest::load(&out.join(manifest::FILE_NAME)).unwrap();
    let shard = |k: usize| out.join(format!("train/shard-{k:05}.safetensors"));
    let original = fs::read(shard(1)).unwrap();
    let untouched: Vec<_> = [shard(0), shard(2), out.join("val/shard-00000.safetensors")]
        .into_iter()
        .map(|p| (stamp(&p), p))
        .collect();
    flip_pixel_byte(&shard(1));

    let (m, r) = prepare_with_report(&source, &out, &config()).unwrap();
    assert_eq!(r.shards_damaged, vec![shard(1)]);
    assert_eq!((r.shards_written, r.shards_reused), (1, 3));
    assert_eq!(m, reference);
    // Re-made from the source, it is byte for byte the shard first written.
    assert_eq!(fs::read(shard(1)).unwrap(), original);
    for (before, p) in &untouched {
        assert_eq!(&stamp(p), before, "{} was rewritten", p.display());
    }
    Dataset::open(&out.join("train")).unwrap();

    // A rerun killed before its manifest landed leaves the old one aside: the next run still
    // knows the checksums.
    let bytes = fs::read(shard(2)).unwrap();
    flip_pixel_byte(&shard(2));
    fs::rename(out.join(manifest::FILE_NAME), out.join(PREVIOUS_FILE)).unwrap();
    let (m, r) = prepare_with_report(&source, &out, &config()).unwrap();
    assert_eq!(r.shards_damaged, vec![shard(2)]);
    assert_eq!((r.shards_written, r.shards_reused), (1, 3));
    assert_eq!(m, reference);
    assert_eq!(fs::read(shard(2)).unwrap(), bytes);
    assert!(!out.join(PREVIOUS_FILE).exists());
}

#[test]
fn a_manifest_without_checksums_still_loads() {
    let (_dir, _, out) = prepared();
    let path = out.join(manifest::FILE_NAME);
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    json["format"] = "fer-prepared-v2".into();
    for split in ["train", "val"] {
        for e in json["splits"][split]["shards"].as_array_mut().unwrap() {
            let e = e.as_object_mut().unwrap();
            e.remove("bytes").unwrap();
            e.remove("checksum").unwrap();
        }
    }
    fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();

    let m = Manifest::load(&path).unwrap();
    assert!(!m.has_checksums() && !m.is_legacy());
    assert!(m.splits["train"]
        .shards
        .iter()
        .all(|e| e.checksum.is_none()));
    let note = unverified_note(&out, &m).unwrap();
    assert!(
        note.contains(&*out.to_string_lossy()) && note.contains("re-run prepare-data"),
        "{note}"
    );
    let ds = Dataset::open(&out.join("train")).unwrap();
    assert_eq!(ds.len(), 7);

    // A v3 manifest must record every shard's checksum.
    json["format"] = "fer-prepared-v3".into();
    fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let err = Manifest::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("manifest.json") && err.contains("no size or checksum"),
        "{err}"
    );
}

#[test]
fn cut_off_missing_and_unlisted_shards_are_refused() {
    let (dir, _, out) = prepared();
    let bad = out.join("train/shard-00002.safetensors");
    let bytes = fs::read(&bad).unwrap();
    fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
    let err = Dataset::open(&out.join("train")).unwrap_err().to_string();
    assert!(
        err.contains("shard-00002.safetensors")
            && err.contains(&format!(
                "{} bytes, the manifest records {}",
                bytes.len() - 1,
                bytes.len()
            ))
            && err.contains("re-run prepare-data"),
        "{err}"
    );
    // Without a manifest, the cut-off file is still refused, by the format check.
    let bare = dir.path().join("bare");
    fs::create_dir_all(&bare).unwrap();
    fs::copy(&bad, bare.join("shard-00000.safetensors")).unwrap();
    let err = Dataset::open(&bare).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000.safetensors") && err.contains("not a valid shard"),
        "{err}"
    );

    fs::remove_file(&bad).unwrap();
    let err = Dataset::open(&out.join("train")).unwrap_err().to_string();
    assert!(
        err.contains("shard-00002.safetensors") && err.contains("missing shard"),
        "{err}"
    );

    fs::write(&bad, &bytes).unwrap();
    let extra = out.join("train/shard-00007.safetensors");
    fs::copy(&bad, &extra).unwrap();
    let err = Dataset::open(&out.join("train")).unwrap_err().to_string();
    assert!(
        err.contains("shard-00007.safetensors") && err.contains("does not list"),
        "{err}"
    );
    fs::remove_file(&extra).unwrap();
    assert_eq!(Dataset::open(&out.join("train")).unwrap().len(), 7);
}
