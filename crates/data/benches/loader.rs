//! Loader throughput: images per second for one epoch, with and without augmentation, by
//! thread count. `cargo bench -p fer-data --bench loader` (add `-- 224` for another size).

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use fer_data::augment::AugmentConfig;
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_data::shard::ShardData;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![48, 112]
    } else {
        sizes
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    for s in sizes {
        // Keep roughly 40 MB of pixels per size so every size takes a similar time.
        let n = (40_000_000 / (3 * s * s)).clamp(64, 4096);
        let dir = tmp.path().join(format!("s{s}"));
        let mut d = ShardData::new(s);
        for i in 0..n {
            let img: Vec<u8> = (0..3 * s * s)
                .map(|j| ((i * 7 + j * 13) % 256) as u8)
                .collect();
            d.push(&img, (i % 8) as i64, 0.1, -0.1, i as i64);
        }
        d.write(&dir.join("shard-00000.safetensors"))
            .expect("write shard");
        let ds = Arc::new(Dataset::open(&dir).expect("open"));
        for (label, augment) in [
            ("none", AugmentConfig::none()),
            ("default", AugmentConfig::default()),
        ] {
            for threads in [1, 2] {
                let cfg = LoaderConfig {
                    batch_size: 64,
                    threads,
                    augment: augment.clone(),
                    ..LoaderConfig::default()
                };
                let loader = Loader::new(ds.clone(), cfg, Device::Cpu).expect("loader");
                let t = Instant::now();
                let mut seen = 0;
                for b in loader.epoch(0) {
                    seen += b.expect("batch").len();
                }
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "size {s:>3}  augment {label:<7}  threads {threads}  {seen} images  {:>8.0} images/s",
                    seen as f64 / secs
                );
            }
        }
    }
}
