//! A manifest's counts come from the file: counts near `usize::MAX` must be refused as
//! inconsistent, never overflow the checks' sums (found with the `manifest` fuzz target's
//! harness, `fuzz/`).

use fer_data::manifest::Manifest;

const MAX: usize = usize::MAX;

/// A v2 manifest (no checksums) with one split whose counts are `split`.
fn manifest(split: &str) -> String {
    format!(
        r#"{{"format": "fer-prepared-v2", "source": {{"kind": "csv", "path": "list.csv"}},
        "image_size": 4, "margin": 0.2, "num_classes": 7,
        "class_names": ["a", "b", "c", "d", "e", "f", "g"],
        "splits": {{"train": {split}}}, "skipped": {{}}}}"#
    )
}

fn load(split: &str) -> Result<Manifest, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, manifest(split)).unwrap();
    Manifest::load(&path).map_err(|e| e.to_string())
}

#[test]
fn consistent_counts_load() {
    let m = load(
        r#"{"rows": 3, "kept": 3, "skipped": 0, "class_histogram": [1, 1, 0, 0, 0, 0, 0],
            "no_class": 1, "with_va": 0, "shards": [{"file": "a.safetensors", "count": 2},
            {"file": "b.safetensors", "count": 1}]}"#,
    )
    .unwrap();
    assert_eq!(m.splits["train"].kept, 3);
}

#[test]
fn kept_plus_skipped_past_usize_max_is_a_mismatch() {
    // kept + skipped wraps to 1 = rows in unchecked arithmetic.
    let split = format!(
        r#"{{"rows": 1, "kept": {MAX}, "skipped": 2, "class_histogram": [], "no_class": 0,
            "with_va": 0, "shards": []}}"#
    );
    let err = load(&split).unwrap_err();
    assert!(
        err.contains("manifest.json") && err.contains(&format!("kept {MAX} + skipped 2 != rows 1")),
        "{err}"
    );
}

#[test]
fn shard_counts_past_usize_max_are_a_mismatch() {
    // MAX + 4 wraps to 3 = kept.
    let split = format!(
        r#"{{"rows": 3, "kept": 3, "skipped": 0, "class_histogram": [3], "no_class": 0,
            "with_va": 0, "shards": [{{"file": "a.safetensors", "count": {MAX}}},
            {{"file": "b.safetensors", "count": 4}}]}}"#
    );
    let err = load(&split).unwrap_err();
    assert!(
        err.contains(&format!("shards hold more than {MAX}, kept 3")),
        "{err}"
    );
}

#[test]
fn histogram_past_usize_max_is_a_mismatch() {
    // MAX + 3 wraps to 2, and 2 + no_class 1 = kept.
    let split = format!(
        r#"{{"rows": 3, "kept": 3, "skipped": 0, "class_histogram": [{MAX}, 3], "no_class": 1,
            "with_va": 0, "shards": [{{"file": "a.safetensors", "count": 3}}]}}"#
    );
    let err = load(&split).unwrap_err();
    assert!(
        err.contains(&format!("histogram more than {MAX} + no class 1 != kept 3")),
        "{err}"
    );
    // The histogram fits, its sum with no_class does not.
    let split = format!(
        r#"{{"rows": 3, "kept": 3, "skipped": 0, "class_histogram": [4], "no_class": {MAX},
            "with_va": 0, "shards": [{{"file": "a.safetensors", "count": 3}}]}}"#
    );
    let err = load(&split).unwrap_err();
    assert!(
        err.contains(&format!("histogram 4 + no class {MAX} != kept 3")),
        "{err}"
    );
}
