//! Turning samples into normalised batches: host buffers first (built on the loader's pool),
//! tensors on the target device last (on the consuming thread).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dataset::Dataset;
use super::seed::sample_seed;
use crate::augment::{self, AugmentConfig, AugmentParams};
use crate::{Error, Result};

/// ImageNet channel means (RGB) on the 0..1 scale, as torchvision's pretrained models expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB) on the 0..1 scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One training batch, on the loader's device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32 `[B, 3, S, S]`: `/255`, then ImageNet mean/std per channel.
    pub images: Tensor,
    /// i64 `[B]`, `-1` where the sample has no class.
    pub expression: Tensor,
    /// f32 `[B]`: 1 where `expression` is a class, else 0.
    pub class_mask: Tensor,
    /// f32 `[B]`, 0 where the sample has no value.
    pub valence: Tensor,
    /// f32 `[B]`, 0 where the sample has no value.
    pub arousal: Tensor,
    /// f32 `[B]`: 1 where valence and arousal are both present, else 0.
    pub va_mask: Tensor,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
    /// Source-list row of each sample.
    pub source_rows: Vec<i64>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The `len` samples from `start` on, as a batch of their own (views, no copies).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        if start + len > self.len() {
            return Err(Error::Loader(format!(
                "samples {start}..{} of a batch of {}",
                start + len,
                self.len()
            )));
        }
        Ok(Batch {
            images: self.images.narrow(0, start, len)?,
            expression: self.expression.narrow(0, start, len)?,
            class_mask: self.class_mask.narrow(0, start, len)?,
            valence: self.valence.narrow(0, start, len)?,
            arousal: self.arousal.narrow(0, start, len)?,
            va_mask: self.va_mask.narrow(0, start, len)?,
            indices: self.indices[start..start + len].to_vec(),
            source_rows: self.source_rows[start..start + len].to_vec(),
        })
    }
}

/// A batch still in host memory, as the worker thread hands it over.
#[derive(Debug)]
pub(crate) struct HostBatch {
    images: Vec<f32>,
    size: usize,
    expression: Vec<i64>,
    class_mask: Vec<f32>,
    valence: Vec<f32>,
    arousal: Vec<f32>,
    va_mask: Vec<f32>,
    indices: Vec<usize>,
    source_rows: Vec<i64>,
}

/// What one batch needs to know beyond its samples.
pub(crate) struct BatchSpec<'a> {
    pub dataset: &'a Dataset,
    pub augment: &'a AugmentConfig,
    pub seed: u64,
    pub epoch: usize,
}

impl HostBatch {
    /// Builds the samples at epoch `positions` (whose dataset indices are `indices`) in parallel
    /// on the current rayon pool. Returns `None` when `stop` is raised mid-way.
    pub(crate) fn build(
        spec: &BatchSpec<'_>,
        first_position: usize,
        indices: &[usize],
        stop: &AtomicBool,
    ) -> Option<HostBatch> {
        let ds = spec.dataset;
        let s = ds.image_size();
        let n = 3 * s * s;
        let mut images = vec![0f32; indices.len() * n];
        images
            .par_chunks_mut(n)
            .zip(indices.par_iter())
            .enumerate()
            .for_each(|(k, (out, &idx))| {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let position = first_position + k;
                let mut rng =
                    ChaCha8Rng::seed_from_u64(sample_seed(spec.seed, spec.epoch, position));
                let params = AugmentParams::sample(spec.augment, s, &mut rng);
                augment::apply(ds.image(idx), s, &params, out);
                normalize_in_place(out, s);
            });
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let labels: Vec<_> = indices.iter().map(|&i| ds.label(i)).collect();
        let mask = |b: bool| if b { 1.0f32 } else { 0.0 };
        let value = |ok: bool, v: f32| if ok { v } else { 0.0 };
        Some(HostBatch {
            images,
            size: s,
            expression: labels.iter().map(|l| l.expression).collect(),
            class_mask: labels.iter().map(|l| mask(l.has_class())).collect(),
            valence: labels
                .iter()
                .map(|l| value(l.has_va(), l.valence))
                .collect(),
            arousal: labels
                .iter()
                .map(|l| value(l.has_va(), l.arousal))
                .collect(),
            va_mask: labels.iter().map(|l| mask(l.has_va())).collect(),
            indices: indices.to_vec(),
            source_rows: labels.iter().map(|l| l.source_row).collect(),
        })
    }

    pub(crate) fn into_batch(self, device: &Device) -> Result<Batch> {
        let b = self.indices.len();
        let s = self.size;
        let v = |data: Vec<f32>| Tensor::from_vec(data, b, device);
        Ok(Batch {
            images: Tensor::from_vec(self.images, (b, 3, s, s), device)?,
            expression: Tensor::from_vec(self.expression, b, device)?,
            class_mask: v(self.class_mask)?,
            valence: v(self.valence)?,
            arousal: v(self.arousal)?,
            va_mask: v(self.va_mask)?,
            indices: self.indices,
            source_rows: self.source_rows,
        })
    }
}

/// Maps one CHW image on the 0..=255 scale to `(x / 255 - mean) / std` per channel.
pub fn normalize_in_place(chw: &mut [f32], size: usize) {
    let plane = size * size;
    assert_eq!(chw.len(), 3 * plane, "image is not 3 x {size} x {size}");
    for (c, ch) in chw.chunks_exact_mut(plane).enumerate() {
        let (m, sd) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        for v in ch {
            *v = (*v / 255.0 - m) / sd;
        }
    }
}

/// One normalised f32 tensor `[n, 3, size, size]` from `n` raw u8 CHW images laid end to end
/// (the prediction path: no augmentation).
pub fn normalize_images(chw: &[u8], n: usize, size: usize, device: &Device) -> Result<Tensor> {
    let per = 3 * size * size;
    if size == 0 || chw.len() != n * per {
        return Err(Error::Loader(format!(
            "normalize_images: got {} bytes, expected {n} x 3 x {size} x {size} = {}",
            chw.len(),
            n * per
        )));
    }
    let mut out: Vec<f32> = chw.iter().map(|&b| b as f32).collect();
    for img in out.chunks_exact_mut(per) {
        normalize_in_place(img, size);
    }
    Ok(Tensor::from_vec(out, (n, 3, size, size), device)?)
}
