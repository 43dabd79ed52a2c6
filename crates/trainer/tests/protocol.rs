//! The three data roles at training time: the test split's labels cannot influence training.
//! The same run on a copy of the data whose test labels are permuted picks the same epochs and
//! weights and reports the same val numbers; only its test numbers change.

mod common;

use std::path::Path;

use common::*;
use fer_data::checksum::Checksum;
use fer_data::manifest::{self, Manifest};
use fer_data::shard::{list_shards, Shard, ShardData};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Rewrites every shard of `split` with its labels rotated by one sample (a permutation: the
/// class histogram stays, the pairing of faces and labels does not), and records the rewritten
/// files' sizes and checksums in the manifest, as prepare-data would: the loader refuses a shard
/// that differs from what the manifest records.
fn permute_labels(data: &Path, split: &str) {
    let manifest_path = data.join(manifest::FILE_NAME);
    let mut m = Manifest::load(&manifest_path).unwrap();
    for path in list_shards(&data.join(split)).unwrap() {
        let s = Shard::open(&path).unwrap();
        let n = s.len();
        let mut out = ShardData::new(s.size());
        for i in 0..n {
            let j = (i + 1) % n;
            out.push(
                s.image(i),
                s.expression[j],
                s.valence[j],
                s.arousal[j],
                s.source_row[i],
            );
        }
        drop(s);
        out.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let shards = &mut m.splits.get_mut(split).unwrap().shards;
        let entry = shards.iter_mut().find(|e| e.file == name).unwrap();
        entry.bytes = Some(bytes.len() as u64);
        entry.checksum = Some(Checksum::of(&bytes));
    }
    m.save(&manifest_path).unwrap();
}

fn train(data: &Path, out: &Path) -> String {
    ok(&train_tiny(data, out, &[]))
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn test_labels_cannot_influence_training() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, permuted) = (dir.path().join("plain"), dir.path().join("permuted"));
    copy_dir(tiny_affectnet(), &plain);
    copy_dir(tiny_affectnet(), &permuted);
    permute_labels(&permuted, "test");

    let (a, b) = (dir.path().join("run-a"), dir.path().join("run-b"));
    train(&plain, &a);
    train(&permuted, &b);

    assert_eq!(
        history_without_timings(&a),
        history_without_timings(&b),
        "every epoch's val numbers and choices"
    );
    for ck in [
        "best.safetensors",
        "best-stage1.safetensors",
        "last.safetensors",
    ] {
        assert!(tensors(&a.join(ck)) == tensors(&b.join(ck)), "{ck} differs");
    }
    let (ma, mb) = (
        read_json(&a.join("metrics.json")),
        read_json(&b.join("metrics.json")),
    );
    assert_eq!(ma["val"], mb["val"]);
    assert_eq!(ma["best_epoch"], mb["best_epoch"]);
    // The permutation did reach the test evaluation: the same predictions, other truths.
    assert_eq!(ma["test"]["predicted"], mb["test"]["predicted"]);
    assert_ne!(ma["test"]["valence"], mb["test"]["valence"]);
    assert_ne!(ma["test"]["arousal"], mb["test"]["arousal"]);
}
