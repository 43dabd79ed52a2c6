//! Cost of the loader's open-time shard check against an epoch:
//! `cargo bench -p fer-data --bench verify -- DIR`, DIR a prepared folder (e.g. from
//! `cargo xtask prepare-data --size 224`).
//!
//! Per split, page cache warm, best of 5: `Dataset::open` as the loader runs it (size and
//! XXH3-128 of every shard checked against the manifest), the same shards opened unchecked (hard
//! links in a folder without a manifest), and the checksum alone on one core; then one epoch of
//! the loader over `val` (default augmentation, 2 threads, batch 32) for scale.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use fer_data::checksum::Checksum;
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_data::manifest::{self, Manifest};

fn best_of(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let Some(dir) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        eprintln!("usage: cargo bench -p fer-data --bench verify -- PREPARED_DIR");
        return;
    };
    let dir = Path::new(&dir);
    let m = Manifest::load(&dir.join(manifest::FILE_NAME)).expect("a prepared folder");
    println!("{} ({} px)", dir.display(), m.image_size);
    for (name, split) in &m.splits {
        let split_dir = dir.join(name);
        let bytes: u64 = split.shards.iter().filter_map(|e| e.bytes).sum();
        let gb = bytes as f64 / 1e9;
        let bare_root = tempfile::tempdir_in(dir).expect("temp dir beside the shards");
        let bare = bare_root.path().join(name);
        std::fs::create_dir_all(&bare).expect("bare folder");
        for e in &split.shards {
            std::fs::hard_link(split_dir.join(&e.file), bare.join(&e.file)).expect("hard link");
        }
        let checked = best_of(5, || drop(Dataset::open(&split_dir).expect("checked open")));
        let unchecked = best_of(5, || drop(Dataset::open(&bare).expect("unchecked open")));
        let files: Vec<Vec<u8>> = split
            .shards
            .iter()
            .map(|e| std::fs::read(split_dir.join(&e.file)).expect("read"))
            .collect();
        let hash_only = best_of(5, || {
            for f in &files {
                std::hint::black_box(Checksum::of(f));
            }
        });
        println!(
            "{name:5}: {} samples, {} shards, {gb:.3} GB | open checked {:.3} s ({:.2} GB/s) | \
             unchecked {:.4} s | checksum alone, one core: {:.2} GB/s",
            split.kept,
            split.shards.len(),
            checked,
            gb / checked,
            unchecked,
            gb / hash_only
        );
    }
    if m.splits.contains_key("val") {
        let ds = Arc::new(Dataset::open(&dir.join("val")).expect("val"));
        let cfg = LoaderConfig {
            batch_size: 32,
            threads: 2,
            ..LoaderConfig::default()
        };
        let loader = Loader::new(ds.clone(), cfg, Device::Cpu).expect("loader");
        let t = Instant::now();
        let seen: usize = loader.epoch(0).map(|b| b.expect("batch").len()).sum();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "epoch of the loader alone over val: {seen} images in {secs:.2} s ({:.0} images/s)",
            seen as f64 / secs
        );
    }
}
