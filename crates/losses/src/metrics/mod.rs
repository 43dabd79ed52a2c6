//! Evaluation metrics over a whole set (never averaged over batches).
//!
//! Conventions, where the textbook formulas are undefined:
//! - **PCC** is 0 when predictions or targets are constant (SciPy's `pearsonr` returns NaN there).
//!   A constant predictor carries no linear information, 0 says so, and a NaN would poison
//!   averages, JSON reports and "best checkpoint" comparisons.
//! - **CCC** uses population moments. It is 0 when predictions are constant and targets vary
//!   (its numerator, the covariance, is 0), and 1 in the single case where its denominator is 0:
//!   predictions and targets all equal to one same value (perfect agreement).
//! - **SAGR** (sign agreement rate) compares `sign(pred)` with `sign(target)` where `sign(0) = 0`,
//!   as in the AffectNet papers: a 0 agrees only with a 0.
//! - **macro-F1** averages the per-class F1 over the classes present in the truth or in the
//!   predictions; a class with no true positive has F1 0. This is scikit-learn's
//!   `f1_score(y_true, y_pred, average="macro", zero_division=0)` (labels left to their default,
//!   the union of both label sets). Classes absent from both do not count: otherwise the score of a
//!   small subset would depend on how many classes the model knows.
//! - Constancy is decided exactly (all values equal), so a constant column never yields a tiny
//!   rounding-noise variance.

mod accumulator;
mod classification;
mod regression;

pub use accumulator::{MetricsAccumulator, Predictions};
pub use classification::{
    accuracy, argmax_rows, confusion_matrix, macro_f1, macro_f1_from_confusion,
};
pub use regression::{ccc, pcc, regression_metrics, rmse, sagr};

use serde::{Deserialize, Serialize};

/// Metrics of one continuous target over a set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub ccc: f64,
    pub pcc: f64,
    pub rmse: f64,
    pub sagr: f64,
}

/// All evaluation metrics of a set; `None` for what the set has no labels for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub valence: Option<RegressionMetrics>,
    pub arousal: Option<RegressionMetrics>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    /// `[K][K]` counts, rows = truth, columns = prediction.
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Samples with valence/arousal labels.
    pub va_samples: u64,
    /// Samples with a class label.
    pub class_samples: u64,
}

/// `sign(x)` with `sign(0) = 0` (`f64::signum` gives ±1 for ±0).
pub(crate) fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}
