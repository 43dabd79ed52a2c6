//! Evaluation on a whole split: streaming metrics plus the per-sample predictions the report's
//! scatter plot and confusion matrix need, single crop or with flip test-time augmentation.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_losses::{Metrics, MetricsAccumulator};
use fer_model::TwoAttTwoMt;
use serde::{Deserialize, Serialize};

use crate::world::World;
use crate::{Error, Result};

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The face as it is (single crop).
    #[default]
    None,
    /// The mean of the face and its mirror image: class probabilities and valence/arousal are
    /// averaged, the class is the argmax of the mean probabilities.
    Flip,
}

/// A batch's predictions on the host.
pub(crate) struct BatchPrediction {
    /// Class scores, `[B * K]` row-major (none without a categorical head): single crop the
    /// logits, or their softmax when probabilities are asked for; with flip TTA the mean of the
    /// two softmax probabilities. The row argmax is the predicted class either way.
    pub scores: Option<Vec<f32>>,
    pub valence: Vec<f32>,
    pub arousal: Vec<f32>,
    /// Position attention of each tap for the images as given (not mirrored), `[B, H_l, W_l]`.
    pub alpha: Vec<Tensor>,
}

fn host_output(model: &TwoAttTwoMt, x: &Tensor) -> Result<BatchPrediction> {
    let out = model.forward(x, false)?;
    let scores = match &out.logits {
        Some(l) => Some(l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    Ok(BatchPrediction {
        scores,
        valence: vec_f32(&out.valence)?,
        arousal: vec_f32(&out.arousal)?,
        alpha: out.alpha,
    })
}

/// Softmax of each row of a row-major `[B * K]` slice, in place.
pub fn softmax_rows(x: &mut [f32], k: usize) {
    for row in x.chunks_mut(k) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        for v in row.iter_mut() {
            *v = (*v as f64 / sum) as f32;
        }
    }
}

/// The batch mirrored left to right (the last axis of `[B, C, H, W]`).
pub fn mirror(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    let idx = Tensor::from_vec(idx, w, x.device())?;
    Ok(x.index_select(&idx, 3)?)
}

/// The model's predictions for a batch of normalised images under `tta` (`k` classes), with
/// class probabilities rather than logits for a single crop when `probabilities`.
pub(crate) fn predict_batch(
    model: &TwoAttTwoMt,
    x: &Tensor,
    tta: Tta,
    k: usize,
    probabilities: bool,
) -> Result<BatchPrediction> {
    let mut out = host_output(model, x)?;
    if tta == Tta::Flip {
        let mut m = host_output(model, &mirror(x)?)?;
        let mean = |a: &mut Vec<f32>, b: &[f32]| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = 0.5 * (*x + y);
            }
        };
        if let (Some(p), Some(q)) = (&mut out.scores, &mut m.scores) {
            softmax_rows(p, k);
            softmax_rows(q, k);
            mean(p, q);
        }
        mean(&mut out.valence, &m.valence);
        mean(&mut out.arousal, &m.arousal);
    } else if probabilities {
        if let Some(p) = &mut out.scores {
            softmax_rows(p, k);
        }
    }
    Ok(out)
}

/// One evaluated sample (NaN / -1 where the label or output does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplePrediction {
    pub index: usize,
    pub valence: f32,
    pub arousal: f32,
    pub true_valence: f32,
    pub true_arousal: f32,
    pub class: i64,
    pub true_class: i64,
}

pub struct Evaluation {
    pub metrics: Metrics,
    pub samples: Vec<SamplePrediction>,
}

fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Runs the model in inference mode over every sample of `dataset`, in order.
pub fn evaluate(
    model: &TwoAttTwoMt,
    dataset: Arc<Dataset>,
    batch_size: usize,
    loader_threads: usize,
    tta: Tta,
    device: &Device,
) -> Result<Evaluation> {
    let one = World::single();
    evaluate_in(
        &one,
        model,
        dataset,
        batch_size,
        loader_threads,
        tta,
        device,
    )
}

/// [`evaluate`] split across the ranks of `world`: each predicts its part of every batch, then
/// all ranks put the predictions together and compute the same metrics from them.
pub fn evaluate_in(
    world: &World,
    model: &TwoAttTwoMt,
    dataset: Arc<Dataset>,
    batch_size: usize,
    loader_threads: usize,
    tta: Tta,
    device: &Device,
) -> Result<Evaluation> {
    let k = model.config().num_classes;
    let n = dataset.len();
    let cfg = LoaderConfig {
        threads: loader_threads,
        part: world.part(),
        ..LoaderConfig::eval(batch_size)
    };
    let loader = Loader::new(dataset, cfg, device.clone())?;
    let mut samples = Vec::with_capacity(loader.dataset().len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        // A rank's part of a short last batch can be empty; the model takes no empty batch.
        if batch.is_empty() {
            continue;
        }
        let out = predict_batch(model, &batch.images, tta, k, false)?;
        let (vp, ap) = (&out.valence, &out.arousal);
        let (vt, at) = (vec_f32(&batch.valence)?, vec_f32(&batch.arousal)?);
        let vm = vec_f32(&batch.va_mask)?;
        let targets = batch.expression.to_vec1::<i64>()?;
        let classes = match &out.scores {
            Some(p) => fer_losses::metrics::argmax_rows(p, k)?,
            None => vec![-1; batch.len()],
        };
        for i in 0..batch.len() {
            let has_va = vm[i] > 0.5;
            samples.push(SamplePrediction {
                index: batch.indices[i],
                valence: vp[i],
                arousal: ap[i],
                true_valence: if has_va { vt[i] } else { f32::NAN },
                true_arousal: if has_va { at[i] } else { f32::NAN },
                class: classes[i],
                true_class: targets[i],
            });
        }
    }
    let samples = match world.size() {
        1 => samples,
        _ => gather(world, &samples, n)?,
    };
    Ok(Evaluation {
        metrics: metrics(&samples, k, model.config().categorical)?,
        samples,
    })
}

/// The metrics of predictions in dataset order (valence/arousal where labelled, classes when
/// the model has a categorical head).
fn metrics(samples: &[SamplePrediction], k: usize, categorical: bool) -> Result<Metrics> {
    let mut acc = MetricsAccumulator::new(k);
    let column = |f: fn(&SamplePrediction) -> f32| samples.iter().map(f).collect::<Vec<_>>();
    let (vt, at) = (column(|s| s.true_valence), column(|s| s.true_arousal));
    let vm: Vec<f32> = vt
        .iter()
        .map(|v| f32::from(u8::from(!v.is_nan())))
        .collect();
    let zero_nan = |v: Vec<f32>| {
        v.into_iter()
            .map(|x| if x.is_nan() { 0.0 } else { x })
            .collect::<Vec<_>>()
    };
    acc.push_va(
        &column(|s| s.valence),
        &column(|s| s.arousal),
        &zero_nan(vt),
        &zero_nan(at),
        &vm,
    )?;
    if categorical {
        let classes: Vec<i64> = samples.iter().map(|s| s.class).collect();
        let targets: Vec<i64> = samples.iter().map(|s| s.true_class).collect();
        acc.push_classes(fer_losses::Predictions::Classes(&classes), &targets)?;
    }
    Ok(acc.finish())
}

/// Every rank's predictions, in dataset order: each rank writes its samples into the rows of a
/// zeroed table and the ranks sum the tables (a gather out of the one collective we have).
fn gather(world: &World, mine: &[SamplePrediction], n: usize) -> Result<Vec<SamplePrediction>> {
    const COLS: usize = 7;
    let mut table = vec![0f32; n * COLS];
    for s in mine {
        let row = &mut table[s.index * COLS..][..COLS];
        // Class ids are small integers, exact in f32; the 1 marks the row as filled.
        row.copy_from_slice(&[
            1.0,
            s.valence,
            s.arousal,
            s.true_valence,
            s.true_arousal,
            s.class as f32,
            s.true_class as f32,
        ]);
    }
    world.sum(&mut table)?;
    table
        .chunks_exact(COLS)
        .enumerate()
        .map(|(index, r)| {
            if r[0] != 1.0 {
                return Err(Error::Distributed(format!(
                    "sample {index} was evaluated by {} ranks, not one",
                    r[0]
                )));
            }
            Ok(SamplePrediction {
                index,
                valence: r[1],
                arousal: r[2],
                true_valence: r[3],
                true_arousal: r[4],
                class: r[5] as i64,
                true_class: r[6] as i64,
            })
        })
        .collect()
}
