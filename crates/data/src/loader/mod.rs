//! The training loader: memory-mapped shards in, normalised candle batches out.
//!
//! Each epoch has a fixed sample order (a seeded shuffle, or class-balanced draws) and each
//! sample a fixed augmentation, both derived from `(seed, epoch, position)`; batches are therefore
//! identical whatever the thread count and whether a run was resumed. A background thread
//! prepares the next `prefetch` batches on the loader's own rayon pool, so decoding and
//! augmenting overlap the training step without competing with candle's global pool.
//!
//! ```
//! use std::sync::Arc;
//! use fer_data::loader::{Dataset, Loader, LoaderConfig};
//! use fer_data::shard::ShardData;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut shard = ShardData::new(4);
//! for i in 0..5u8 {
//!     shard.push(&[i * 40; 48], i as i64 % 2, 0.1 * i as f32, f32::NAN, i as i64);
//! }
//! shard.write(&dir.path().join("train/shard-00000.safetensors")).unwrap();
//!
//! let ds = Arc::new(Dataset::open(&dir.path().join("train")).unwrap());
//! let cfg = LoaderConfig { batch_size: 2, ..LoaderConfig::default() };
//! let loader = Loader::new(ds, cfg, candle_core::Device::Cpu).unwrap();
//! assert_eq!(loader.batches_per_epoch(), 3);
//! let mut seen = 0;
//! for batch in loader.epoch(0) {
//!     let batch = batch.unwrap();
//!     assert_eq!(batch.images.dims()[1..], [3, 4, 4]);
//!     // Arousal is missing everywhere, so no sample is a valence/arousal target.
//!     assert_eq!(batch.va_mask.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
//!     seen += batch.len();
//! }
//! assert_eq!(seen, 5);
//! ```

mod batch;
mod dataset;
mod seed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use batch::{normalize_images, normalize_in_place, Batch, IMAGENET_MEAN, IMAGENET_STD};
pub(crate) use dataset::check_label;
pub use dataset::{Dataset, Label};

use crate::augment::AugmentConfig;
use crate::{Error, Result};
use batch::{BatchSpec, HostBatch};

/// How batches are drawn and prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order every epoch (ignored when `balanced`, whose draws are random anyway).
    pub shuffle: bool,
    pub seed: u64,
    /// Class-balanced sampling: draws with replacement, each sample weighted by the inverse
    /// frequency of its label (samples without a class form one more group), as many draws as
    /// the dataset has samples.
    pub balanced: bool,
    /// Drop the last batch of an epoch when it is short.
    pub drop_last: bool,
    /// Size of the loader's own rayon pool.
    pub threads: usize,
    /// Batches prepared ahead of the one being consumed.
    pub prefetch: usize,
    pub augment: AugmentConfig,
    /// The part of every batch this loader yields: all of it, or one rank's share in
    /// data-parallel training. Set by the program, never read from a config file.
    #[serde(skip)]
    pub part: Part,
}

/// Part `index` of `count` equal shares of every batch (sizes differ by at most one sample):
/// rank `index` of a data-parallel run of `count` ranks, or one micro-batch of a step. Each
/// sample keeps the order, augmentation and position it has in the whole batch, so the parts of
/// all ranks together are exactly the batch a single process would load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part::WHOLE
    }
}

impl Part {
    /// The whole batch.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// The positions of this part within a batch of `len` samples (empty when `len < count`
    /// leaves this part nothing).
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        (len * self.index / self.count)..(len * (self.index + 1) / self.count)
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            shuffle: true,
            seed: 0,
            balanced: false,
            drop_last: false,
            threads: 2,
            prefetch: 2,
            augment: AugmentConfig::default(),
            part: Part::WHOLE,
        }
    }
}

impl LoaderConfig {
    /// In order, unaugmented, every sample once: the evaluation setting.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            balanced: false,
            augment: AugmentConfig::none(),
            ..LoaderConfig::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        if self.threads == 0 {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        if self.part.count == 0 || self.part.index >= self.part.count {
            return Err(Error::Config(format!(
                "part {} of {} does not exist",
                self.part.index, self.part.count
            )));
        }
        self.augment.validate()
    }
}

/// Yields the batches of a [`Dataset`] epoch after epoch.
pub struct Loader {
    dataset: Arc<Dataset>,
    cfg: LoaderConfig,
    device: Device,
    pool: Arc<rayon::ThreadPool>,
    /// Cumulative sampling weights for balanced mode.
    cumulative: Option<Arc<Vec<f64>>>,
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig, device: Device) -> Result<Loader> {
        cfg.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("fer-loader-{i}"))
            .build()
            .map_err(|e| Error::Loader(format!("cannot start the loader thread pool: {e}")))?;
        let cumulative = cfg.balanced.then(|| {
            let counts = dataset.label_counts();
            let mut acc = 0.0;
            let cum = dataset
                .labels()
                .iter()
                .map(|l| {
                    acc += 1.0 / counts[&l.expression] as f64;
                    acc
                })
                .collect();
            Arc::new(cum)
        });
        Ok(Loader {
            dataset,
            cfg,
            device,
            pool: Arc::new(pool),
            cumulative,
        })
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Samples in batch `k` of an epoch, all parts together (the last batch may be short).
    pub fn whole_batch_len(&self, k: usize) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        n.saturating_sub(k * b).min(b)
    }

    /// The dataset index at each position of `epoch` (before `drop_last`).
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let n = self.dataset.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed::order_seed(self.cfg.seed, epoch));
        if let Some(cum) = &self.cumulative {
            let total = *cum.last().expect("datasets are never empty");
            return (0..n)
                .map(|_| {
                    let u = rng.random::<f64>() * total;
                    cum.partition_point(|&c| c <= u).min(n - 1)
                })
                .collect();
        }
        let mut order: Vec<usize> = (0..n).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut rng);
        }
        order
    }

    /// The batches of `epoch`, prepared ahead in the background.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first_batch` on: exactly the tail of
    /// [`epoch`](Self::epoch), for resuming mid-epoch.
    pub fn epoch_from(&self, epoch: usize, first_batch: usize) -> EpochIter {
        let total = self.batches_per_epoch();
        let first = first_batch.min(total);
        let order: Arc<[usize]> = self.epoch_order(epoch).into();
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (ds, pool, stop) = (self.dataset.clone(), self.pool.clone(), stop.clone());
            let (augment, seed, b) = (self.cfg.augment.clone(), self.cfg.seed, self.cfg.batch_size);
            let part = self.cfg.part;
            std::thread::Builder::new()
                .name("fer-loader".into())
                .spawn(move || {
                    let spec = BatchSpec {
                        dataset: &ds,
                        augment: &augment,
                        seed,
                        epoch,
                    };
                    for k in first..total {
                        let batch = k * b;
                        let mine = part.range((batch + b).min(order.len()) - batch);
                        let (start, end) = (batch + mine.start, batch + mine.end);
                        let built = pool
                            .install(|| HostBatch::build(&spec, start, &order[start..end], &stop));
                        // A closed channel or a raised flag means the consumer has gone.
                        let Some(batch) = built else { return };
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                })
        };
        match worker {
            Ok(handle) => EpochIter {
                rx: Some(rx),
                worker: Some(handle),
                stop,
                device: self.device.clone(),
                remaining: total - first,
                spawn_error: None,
            },
            Err(e) => EpochIter {
                rx: None,
                worker: None,
                stop,
                device: self.device.clone(),
                remaining: 1,
                spawn_error: Some(format!("cannot start the loader thread: {e}")),
            },
        }
    }
}

/// The batches of one epoch. Dropping it early stops the background work.
pub struct EpochIter {
    rx: Option<Receiver<HostBatch>>,
    worker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    device: Device,
    remaining: usize,
    spawn_error: Option<String>,
}

impl EpochIter {
    /// Joins the worker after the channel closed early and says why it stopped.
    fn worker_failure(&mut self) -> Error {
        let why = match self.worker.take().map(JoinHandle::join) {
            Some(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("the loader thread panicked: {msg}")
            }
            _ => "the loader thread stopped before the end of the epoch".into(),
        };
        Error::Loader(why)
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        if let Some(msg) = self.spawn_error.take() {
            self.remaining = 0;
            return Some(Err(Error::Loader(msg)));
        }
        let received = self.rx.as_ref().map(|rx| rx.recv());
        match received {
            Some(Ok(host)) => {
                self.remaining -= 1;
                Some(host.into_batch(&self.device))
            }
            _ => {
                self.remaining = 0;
                Some(Err(self.worker_failure()))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for EpochIter {}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel first unblocks a worker waiting to send.
        drop(self.rx.take());
        if let Some(handle) = self.worker.take() {
            let _ = handle.join();
        }
    }
}
