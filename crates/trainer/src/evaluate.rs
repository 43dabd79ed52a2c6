//! Evaluation on a whole split: streaming metrics plus the per-sample predictions the report's
//! scatter plot and confusion matrix need.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_losses::{Metrics, MetricsAccumulator};
use fer_model::TwoAttTwoMt;
use serde::{Deserialize, Serialize};

use crate::Result;

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
    device: &Device,
) -> Result<Evaluation> {
    let k = model.config().num_classes;
    let cfg = LoaderConfig {
        threads: loader_threads,
        ..LoaderConfig::eval(batch_size)
    };
    let loader = Loader::new(dataset, cfg, device.clone())?;
    let mut acc = MetricsAccumulator::new(k);
    let mut samples = Vec::with_capacity(loader.dataset().len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let out = model.forward(&batch.images, false)?;
        let (vp, ap) = (vec_f32(&out.valence)?, vec_f32(&out.arousal)?);
        let (vt, at) = (vec_f32(&batch.valence)?, vec_f32(&batch.arousal)?);
        let vm = vec_f32(&batch.va_mask)?;
        let targets = batch.expression.to_vec1::<i64>()?;
        let classes = match &out.logits {
            Some(l) => l.argmax(1)?.to_dtype(DType::I64)?.to_vec1::<i64>()?,
            None => vec![-1; batch.len()],
        };
        acc.push_va(&vp, &ap, &vt, &at, &vm)?;
        if out.logits.is_some() {
            acc.push_classes(fer_losses::Predictions::Classes(&classes), &targets)?;
        }
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
    Ok(Evaluation {
        metrics: acc.finish(),
        samples,
    })
}
