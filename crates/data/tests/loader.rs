//! The loader on small shards built here: coverage, determinism, masks, normalisation,
//! balanced sampling and shutdown.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use fer_data::augment::AugmentConfig;
use fer_data::loader::{normalize_images, Batch, Dataset, Loader, LoaderConfig};
use fer_data::shard::ShardData;

const S: usize = 6;

/// Sample `id`'s image: every byte depends on the id, so images identify their sample.
fn img(id: usize, s: usize) -> Vec<u8> {
    (0..3 * s * s)
        .map(|j| ((id * 7 + j * 3) % 256) as u8)
        .collect()
}

/// 13 samples in two shards (7 + 6), so batches of 5 straddle the shard boundary.
/// Labels: expression cycles through -1, 0, 1, 2; valence is missing for ids divisible by 3,
/// arousal for ids divisible by 5; the source row is 1000 + id.
fn write_split(dir: &Path) {
    let mut id = 0;
    for (k, n) in [7, 6].into_iter().enumerate() {
        let mut d = ShardData::new(S);
        for _ in 0..n {
            let e = (id % 4) as i64 - 1;
            let v = if id % 3 == 0 {
                f32::NAN
            } else {
                0.05 * id as f32
            };
            let a = if id % 5 == 0 {
                f32::NAN
            } else {
                -0.03 * id as f32
            };
            d.push(&img(id, S), e, v, a, 1000 + id as i64);
            id += 1;
        }
        d.write(&dir.join(format!("shard-{k:05}.safetensors")))
            .unwrap();
    }
}

fn dataset() -> (tempfile::TempDir, Arc<Dataset>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    write_split(&dir);
    let ds = Arc::new(Dataset::open(&dir).unwrap());
    (tmp, ds)
}

fn cfg(batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed: 42,
        ..LoaderConfig::default()
    }
}

fn collect(loader: &Loader, epoch: usize) -> Vec<Batch> {
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn same_batches(a: &[Batch], b: &[Batch]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.indices == y.indices
                && f32s(&x.images) == f32s(&y.images)
                && f32s(&x.valence) == f32s(&y.valence)
        })
}

#[test]
fn dataset_spans_both_shards() {
    let (_tmp, ds) = dataset();
    assert_eq!(ds.len(), 13);
    assert_eq!(ds.image_size(), S);
    for id in [0, 6, 7, 12] {
        assert_eq!(ds.image(id), &img(id, S)[..], "sample {id}");
        assert_eq!(ds.label(id).source_row, 1000 + id as i64);
    }
    // ids 0..13 with expression id % 4 - 1: four -1s, then classes 0, 1, 2 with 3 each.
    assert_eq!(ds.class_histogram(3).unwrap(), vec![3, 3, 3]);
    let err = ds.class_histogram(2).unwrap_err().to_string();
    assert!(
        err.contains("class 2") && err.contains("source row"),
        "{err}"
    );
    assert!(ds.has_va() && ds.has_classes());
}

#[test]
fn every_sample_appears_once_per_epoch() {
    let (_tmp, ds) = dataset();
    let loader = Loader::new(ds.clone(), cfg(5), Device::Cpu).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let it = loader.epoch(0);
    assert_eq!(it.len(), 3);
    let batches: Vec<Batch> = it.map(|b| b.unwrap()).collect();
    let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(sizes, vec![5, 5, 3]);
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_ne!(
        seen,
        (0..13).collect::<Vec<_>>(),
        "shuffle left the order alone"
    );
    seen.sort();
    assert_eq!(seen, (0..13).collect::<Vec<_>>());
    for b in &batches {
        let rows: Vec<i64> = b.indices.iter().map(|&i| 1000 + i as i64).collect();
        assert_eq!(b.source_rows, rows);
        assert_eq!(b.images.dims(), &[b.len(), 3, S, S]);
    }

    let dropped = Loader::new(
        ds,
        LoaderConfig {
            drop_last: true,
            ..cfg(5)
        },
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(dropped.batches_per_epoch(), 2);
    let sizes: Vec<usize> = collect(&dropped, 0).iter().map(Batch::len).collect();
    assert_eq!(sizes, vec![5, 5]);
}

#[test]
fn unaugmented_batches_hold_the_normalised_dataset_images() {
    let (_tmp, ds) = dataset();
    let loader = Loader::new(ds.clone(), LoaderConfig::eval(4), Device::Cpu).unwrap();
    let batches = collect(&loader, 3);
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(
        indices,
        (0..13).collect::<Vec<_>>(),
        "eval order is dataset order"
    );
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    for b in &batches {
        let got = f32s(&b.images);
        for (k, &id) in b.indices.iter().enumerate() {
            let raw = img(id, S);
            for (j, &byte) in raw.iter().enumerate() {
                let c = j / (S * S);
                let want = (byte as f32 / 255.0 - mean[c]) / std[c];
                let g = got[k * raw.len() + j];
                assert!(
                    (g - want).abs() < 1e-5,
                    "sample {id} byte {j}: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn epochs_are_reproducible_and_distinct() {
    let (_tmp, ds) = dataset();
    let loader = Loader::new(ds.clone(), cfg(5), Device::Cpu).unwrap();
    let e1 = collect(&loader, 1);
    // Consuming other epochs in between changes nothing.
    let _ = collect(&loader, 0);
    let again = collect(&loader, 1);
    assert!(same_batches(&e1, &again));
    let e2 = collect(&loader, 2);
    assert!(!same_batches(&e1, &e2));
    assert_ne!(loader.epoch_order(1), loader.epoch_order(2));

    // A fresh loader (a resumed run) sees the same epoch.
    let fresh = Loader::new(ds.clone(), cfg(5), Device::Cpu).unwrap();
    assert!(same_batches(&e1, &collect(&fresh, 1)));

    // Another seed gives another order.
    let other = Loader::new(ds, LoaderConfig { seed: 43, ..cfg(5) }, Device::Cpu).unwrap();
    assert_ne!(other.epoch_order(1), loader.epoch_order(1));
}

#[test]
fn same_order_and_augmentation_also_differ_between_epochs_for_one_sample() {
    // Augmentation is seeded by position, not by sample: with shuffling off the same sample sits
    // at the same position each epoch, yet epochs must still augment differently.
    let (_tmp, ds) = dataset();
    let c = LoaderConfig {
        shuffle: false,
        ..cfg(13)
    };
    let loader = Loader::new(ds, c, Device::Cpu).unwrap();
    let (a, b) = (collect(&loader, 0), collect(&loader, 1));
    assert_eq!(a[0].indices, b[0].indices);
    assert_ne!(f32s(&a[0].images), f32s(&b[0].images));
}

#[test]
fn thread_count_does_not_change_the_batches() {
    let (_tmp, ds) = dataset();
    let one = Loader::new(
        ds.clone(),
        LoaderConfig {
            threads: 1,
            ..cfg(5)
        },
        Device::Cpu,
    )
    .unwrap();
    let three = Loader::new(
        ds,
        LoaderConfig {
            threads: 3,
            prefetch: 0,
            ..cfg(5)
        },
        Device::Cpu,
    )
    .unwrap();
    let (a, b) = (collect(&one, 4), collect(&three, 4));
    assert!(same_batches(&a, &b));
    // Augmentation is on: the images are not just the normalised originals.
    let plain = Loader::new(one.dataset().clone(), LoaderConfig::eval(13), Device::Cpu).unwrap();
    let p = collect(&plain, 0);
    let first = a[0].indices[0];
    let per = 3 * S * S;
    assert_ne!(
        f32s(&a[0].images)[..per],
        f32s(&p[0].images)[first * per..(first + 1) * per]
    );
}

#[test]
fn resuming_mid_epoch_gives_the_tail_of_the_epoch() {
    let (_tmp, ds) = dataset();
    let loader = Loader::new(ds, cfg(5), Device::Cpu).unwrap();
    let full = collect(&loader, 7);
    let tail: Vec<Batch> = loader.epoch_from(7, 1).map(|b| b.unwrap()).collect();
    assert!(same_batches(&full[1..], &tail));
    assert_eq!(loader.epoch_from(7, 3).count(), 0);
}

#[test]
fn masks_follow_missing_labels() {
    let (_tmp, ds) = dataset();
    let loader = Loader::new(ds, cfg(4), Device::Cpu).unwrap();
    let mut checked = 0;
    for b in collect(&loader, 0) {
        let expr = b.expression.to_vec1::<i64>().unwrap();
        let cm = b.class_mask.to_vec1::<f32>().unwrap();
        let (v, a) = (
            b.valence.to_vec1::<f32>().unwrap(),
            b.arousal.to_vec1::<f32>().unwrap(),
        );
        let vm = b.va_mask.to_vec1::<f32>().unwrap();
        for (k, &id) in b.indices.iter().enumerate() {
            let e = (id % 4) as i64 - 1;
            assert_eq!(expr[k], e);
            assert_eq!(cm[k], if e >= 0 { 1.0 } else { 0.0 });
            let has_va = id % 3 != 0 && id % 5 != 0;
            assert_eq!(vm[k], if has_va { 1.0 } else { 0.0 }, "sample {id}");
            if has_va {
                assert_eq!(v[k], 0.05 * id as f32);
                assert_eq!(a[k], -0.03 * id as f32);
            } else {
                assert_eq!((v[k], a[k]), (0.0, 0.0), "sample {id}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13);
}

#[test]
fn normalisation_of_black_and_white_pixels() {
    // Hand-computed (0 - m) / s and (1 - m) / s for the ImageNet mean and std.
    let black = [-2.117_904_f32, -2.035_714_3, -1.804_444_4];
    let white = [2.248_908_3_f32, 2.428_571_4, 2.64];
    let mut raw = vec![0u8; 2 * 3 * 4];
    raw[12..].fill(255);
    let t = normalize_images(&raw, 2, 2, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 3, 2, 2]);
    let v = f32s(&t);
    for c in 0..3 {
        for p in 0..4 {
            assert!((v[c * 4 + p] - black[c]).abs() < 1e-5, "black channel {c}");
            assert!(
                (v[12 + c * 4 + p] - white[c]).abs() < 1e-5,
                "white channel {c}"
            );
        }
    }
    let err = normalize_images(&raw, 3, 2, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("24 bytes") && err.contains("36"), "{err}");
}

#[test]
fn balanced_sampling_evens_out_a_90_10_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    let mut d = ShardData::new(1);
    for i in 0..1000 {
        let e = if i < 900 { 0 } else { 1 };
        d.push(&[i as u8; 3], e, f32::NAN, f32::NAN, i);
    }
    d.write(&dir.join("shard-00000.safetensors")).unwrap();
    let ds = Arc::new(Dataset::open(&dir).unwrap());
    let c = LoaderConfig {
        balanced: true,
        augment: AugmentConfig::none(),
        ..cfg(64)
    };
    let loader = Loader::new(ds, c, Device::Cpu).unwrap();
    assert_eq!(loader.batches_per_epoch(), 16);
    for epoch in 0..3 {
        let mut per_class = [0usize; 2];
        let mut draws: BTreeMap<usize, usize> = BTreeMap::new();
        for b in collect(&loader, epoch) {
            for (&i, e) in b.indices.iter().zip(b.expression.to_vec1::<i64>().unwrap()) {
                per_class[e as usize] += 1;
                *draws.entry(i).or_default() += 1;
            }
        }
        assert_eq!(per_class[0] + per_class[1], 1000);
        // Minority draws ~ Binomial(1000, 0.5): sd 15.8; 5 sd = 79. Without balancing the
        // expectation would be 100.
        let dev = (per_class[1] as i64 - 500).abs();
        assert!(dev <= 79, "epoch {epoch}: {per_class:?}");
        // With replacement: ~500 draws over 100 minority samples must repeat some.
        assert!(draws.range(900..).any(|(_, &n)| n > 1));
    }
}

#[test]
fn dropping_an_epoch_early_returns_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    let s = 64;
    let mut d = ShardData::new(s);
    for i in 0..256 {
        d.push(&img(i, s), (i % 8) as i64, 0.0, 0.0, i as i64);
    }
    d.write(&dir.join("shard-00000.safetensors")).unwrap();
    let ds = Arc::new(Dataset::open(&dir).unwrap());
    let loader = Loader::new(ds, cfg(16), Device::Cpu).unwrap();

    let start = Instant::now();
    let mut it = loader.epoch(0);
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.len(), 16);
    drop(it);
    // Never consumed at all.
    drop(loader.epoch(1));
    let took = start.elapsed();
    // A full epoch of 16 batches is far below this on any machine; a hung worker never ends.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn bad_folders_and_configs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = Dataset::open(&missing).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = Dataset::open(&empty).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no shards"), "{err}");

    let mixed = tmp.path().join("mixed");
    for (k, s) in [4, 5].into_iter().enumerate() {
        let mut d = ShardData::new(s);
        d.push(&img(0, s), 0, 0.0, 0.0, 0);
        d.write(&mixed.join(format!("shard-{k:05}.safetensors")))
            .unwrap();
    }
    let err = Dataset::open(&mixed).unwrap_err().to_string();
    assert!(
        err.contains("shard-00001") && err.contains("image size 5"),
        "{err}"
    );

    let bad = tmp.path().join("bad");
    let mut d = ShardData::new(2);
    d.push(&img(0, 2), 0, 0.0, 0.0, 0);
    d.push(&img(1, 2), -3, 0.0, 0.0, 1);
    d.write(&bad.join("shard-00000.safetensors")).unwrap();
    let err = Dataset::open(&bad).unwrap_err().to_string();
    assert!(
        err.contains("shard-00000") && err.contains("row 1"),
        "{err}"
    );

    let (_tmp, ds) = dataset();
    for (c, what) in [
        (
            LoaderConfig {
                batch_size: 0,
                ..cfg(1)
            },
            "batch_size",
        ),
        (
            LoaderConfig {
                threads: 0,
                ..cfg(1)
            },
            "threads",
        ),
    ] {
        let err = Loader::new(ds.clone(), c, Device::Cpu).err().unwrap();
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn the_parts_of_every_batch_put_together_are_the_whole_batch() {
    use fer_data::loader::Part;
    let (_tmp, ds) = dataset();
    let augmented = |part: Part| LoaderConfig {
        part,
        augment: fer_data::augment::AugmentConfig::default(),
        ..cfg(4)
    };
    let whole = collect(
        &Loader::new(ds.clone(), augmented(Part::WHOLE), Device::Cpu).unwrap(),
        1,
    );
    for count in [2, 3, 5] {
        let parts: Vec<Vec<Batch>> = (0..count)
            .map(|index| {
                let l = Loader::new(ds.clone(), augmented(Part { index, count }), Device::Cpu);
                collect(&l.unwrap(), 1)
            })
            .collect();
        for (k, batch) in whole.iter().enumerate() {
            // Every part yields every batch (some empty), so ranks stay in step.
            let pieces: Vec<&Batch> = parts.iter().map(|p| &p[k]).collect();
            let indices: Vec<usize> = pieces.iter().flat_map(|b| b.indices.clone()).collect();
            assert_eq!(indices, batch.indices, "batch {k} in {count} parts");
            let sizes: Vec<usize> = pieces.iter().map(|b| b.len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{sizes:?}");
            // Each sample keeps its augmentation: the images are the whole batch's, in pieces.
            let mut at = 0;
            for p in pieces {
                let mine = batch.narrow(at, p.len()).unwrap();
                assert_eq!(
                    f32s(&p.images),
                    f32s(&mine.images),
                    "batch {k} in {count} parts"
                );
                at += p.len();
            }
        }
    }
}

#[test]
fn a_part_that_does_not_exist_is_refused() {
    let (_tmp, ds) = dataset();
    let bad = LoaderConfig {
        part: fer_data::loader::Part { index: 2, count: 2 },
        ..cfg(4)
    };
    let err = Loader::new(ds, bad, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("part 2 of 2"), "{err}");
}
