//! Losses (cross-entropy, MSE, CCC, the multi-task combination) and evaluation metrics for the
//! 2Att-2Mt facial emotion model.
//!
//! Losses are candle ops (differentiable, f32 or f64) that honour per-sample label masks: a sample
//! without valence/arousal adds no VA loss, a sample without a class (`-1`) no cross-entropy, and a
//! term with no valid sample in the batch is an exact 0 that still backpropagates. Metrics are
//! plain Rust over the whole evaluation set (see [`metrics`] for the conventions on degenerate
//! inputs).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use fer_losses::{stage_loss, ClassInputs, LossConfig, MetricsAccumulator, Predictions, Stage, VaInputs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let logits = candle_core::Var::new(&[[2.0f32, 0.0, -1.0], [0.0, 1.0, 0.0]], &dev)?;
//! let targets = Tensor::new(&[0i64, -1], &dev)?; // second face: no class label
//! let vp = candle_core::Var::new(&[0.5f32, -0.2], &dev)?;
//! let ap = Tensor::new(&[0.1f32, 0.3], &dev)?;
//! let v = Tensor::new(&[0.6f32, -0.4], &dev)?;
//! let a = Tensor::new(&[0.0f32, 0.5], &dev)?;
//! let mask = Tensor::new(&[1f32, 1.0], &dev)?;
//!
//! let parts = stage_loss(
//!     Stage::Dimensional,
//!     &LossConfig::default(),
//!     Some(ClassInputs { logits: &logits, aux_logits: None, targets: &targets }),
//!     Some(VaInputs { valence_pred: &vp, arousal_pred: &ap, valence: &v, arousal: &a, mask: &mask }),
//! )?;
//! // total = L_va + 0.5 * CE
//! let total = parts.total.to_scalar::<f32>()? as f64;
//! assert!((total - (parts.va.unwrap() + 0.5 * parts.ce.unwrap())).abs() < 1e-6);
//! let grads = parts.total.backward()?;
//! assert!(grads.get(&logits).is_some() && grads.get(&vp).is_some());
//!
//! let mut acc = MetricsAccumulator::new(3);
//! acc.push_batch(&[0.5f32, -0.2], &[0.1, 0.3], &[0.6, -0.4], &[0.0, 0.5], &[1.0, 1.0],
//!                Predictions::Classes(&[0, 1]), &[0, -1])?;
//! let m = acc.finish();
//! assert_eq!(m.accuracy, Some(1.0));
//! assert_eq!(m.valence.unwrap().sagr, 1.0);
//! # Ok(())
//! # }
//! ```

mod ce;
mod combine;
mod error;
mod host;
pub mod metrics;
mod regression;
mod weights;

pub use ce::cross_entropy;
pub use combine::{stage_loss, ClassInputs, LossConfig, LossParts, Stage, VaInputs};
pub use error::{LossError, Result};
pub use metrics::{Metrics, MetricsAccumulator, Predictions, RegressionMetrics};
pub use regression::{ccc, ccc_loss, mse, va_loss, CCC_EPS};
pub use weights::inverse_frequency_weights;

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
