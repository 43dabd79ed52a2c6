//! One-shot regression metrics on whole slices (two-pass moments).

use super::{sign, RegressionMetrics};
use crate::error::{shape_err, LossError, Result};

fn to_f64<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

fn is_constant(v: &[f64]) -> bool {
    v.iter().all(|&x| x == v[0])
}

struct Moments {
    mean_p: f64,
    mean_t: f64,
    var_p: f64,
    var_t: f64,
    cov: f64,
}

fn moments(p: &[f64], t: &[f64]) -> Moments {
    let n = p.len() as f64;
    let mean_p = p.iter().sum::<f64>() / n;
    let mean_t = t.iter().sum::<f64>() / n;
    let (cp, ct) = (is_constant(p), is_constant(t));
    let var = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    Moments {
        mean_p,
        mean_t,
        var_p: if cp { 0.0 } else { var(p, mean_p) },
        var_t: if ct { 0.0 } else { var(t, mean_t) },
        cov: if cp || ct {
            0.0
        } else {
            p.iter()
                .zip(t)
                .map(|(a, b)| (a - mean_p) * (b - mean_t))
                .sum::<f64>()
                / n
        },
    }
}

pub(crate) fn ccc_from(mean_p: f64, mean_t: f64, var_p: f64, var_t: f64, cov: f64) -> f64 {
    let denom = var_t + var_p + (mean_t - mean_p).powi(2);
    if denom == 0.0 {
        1.0
    } else {
        2.0 * cov / denom
    }
}

pub(crate) fn pcc_from(var_p: f64, var_t: f64, cov: f64) -> f64 {
    if var_p == 0.0 || var_t == 0.0 {
        0.0
    } else {
        cov / (var_p * var_t).sqrt()
    }
}

fn check(p: &[f64], t: &[f64]) -> Result<()> {
    if p.len() != t.len() {
        return Err(shape_err(
            "regression metrics",
            format!("{} predictions for {} targets", p.len(), t.len()),
        ));
    }
    for (what, v) in [("prediction", p), ("target", t)] {
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(LossError::NotFinite {
                what: if what == "prediction" {
                    "regression prediction"
                } else {
                    "regression target"
                },
                index,
                value,
            });
        }
    }
    Ok(())
}

/// CCC, PCC, RMSE and SAGR of `pred` against `target`; `None` for empty slices.
pub fn regression_metrics<T: Copy + Into<f64>>(
    pred: &[T],
    target: &[T],
) -> Result<Option<RegressionMetrics>> {
    let (p, t) = (to_f64(pred), to_f64(target));
    check(&p, &t)?;
    if p.is_empty() {
        return Ok(None);
    }
    let m = moments(&p, &t);
    let n = p.len() as f64;
    let mse = p.iter().zip(&t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n;
    let agree = p
        .iter()
        .zip(&t)
        .filter(|(a, b)| sign(**a) == sign(**b))
        .count();
    Ok(Some(RegressionMetrics {
        ccc: ccc_from(m.mean_p, m.mean_t, m.var_p, m.var_t, m.cov),
        pcc: pcc_from(m.var_p, m.var_t, m.cov),
        rmse: mse.sqrt(),
        sagr: agree as f64 / n,
    }))
}

/// Concordance correlation coefficient (see the module notes); `None` for empty slices.
pub fn ccc<T: Copy + Into<f64>>(pred: &[T], target: &[T]) -> Result<Option<f64>> {
    Ok(regression_metrics(pred, target)?.map(|m| m.ccc))
}

/// Pearson correlation (0 for constant inputs); `None` for empty slices.
pub fn pcc<T: Copy + Into<f64>>(pred: &[T], target: &[T]) -> Result<Option<f64>> {
    Ok(regression_metrics(pred, target)?.map(|m| m.pcc))
}

/// Root mean squared error; `None` for empty slices.
pub fn rmse<T: Copy + Into<f64>>(pred: &[T], target: &[T]) -> Result<Option<f64>> {
    Ok(regression_metrics(pred, target)?.map(|m| m.rmse))
}

/// Sign agreement rate with `sign(0) = 0`; `None` for empty slices.
pub fn sagr<T: Copy + Into<f64>>(pred: &[T], target: &[T]) -> Result<Option<f64>> {
    Ok(regression_metrics(pred, target)?.map(|m| m.sagr))
}
