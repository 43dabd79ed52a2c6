//! Masked regression losses for valence/arousal: MSE and the concordance correlation (CCC).

use candle_core::Tensor;

use crate::ce::check_float;
use crate::error::{shape_err, LossError, Result};
use crate::host;

/// Added to the CCC denominator so that a batch with no spread at all (one valid sample, or
/// constant predictions and targets) gives CCC = 0 instead of 0/0. Small enough to be invisible
/// against any real variance of values in [-1, 1], large enough to be representable in f32.
pub const CCC_EPS: f64 = 1e-8;

/// A masked batch of one regression target: the valid targets on the host (labels never need
/// gradients), and the mask on the prediction's device and dtype.
struct Masked {
    mask: Tensor,
    target: Tensor,
    target_host: Vec<f64>,
    mask_host: Vec<f64>,
    n: usize,
}

fn prepare(pred: &Tensor, target: &Tensor, mask: &Tensor, what: &'static str) -> Result<Masked> {
    check_float(pred, what)?;
    let batch = match pred.dims() {
        &[b] => b,
        d => {
            return Err(shape_err(
                what,
                format!("predictions must be [B], got {d:?}"),
            ))
        }
    };
    let t = host::vec1_f64(target, what)?;
    if t.len() != batch {
        return Err(shape_err(
            what,
            format!("{} targets for {batch} predictions", t.len()),
        ));
    }
    let (m, n) = host::mask(mask, batch, what)?;
    // Samples without a label may hold placeholders (AffectNet's -2, NaN): zero them so that
    // `0 * placeholder` cannot turn into NaN.
    let mut clean = vec![0.0; batch];
    for i in 0..batch {
        if m[i] == 1.0 {
            if !t[i].is_finite() {
                return Err(LossError::NotFinite {
                    what,
                    index: i,
                    value: t[i],
                });
            }
            clean[i] = t[i];
        }
    }
    let dev = pred.device();
    let dtype = pred.dtype();
    Ok(Masked {
        mask: Tensor::from_vec(m.clone(), batch, dev)?.to_dtype(dtype)?,
        target: Tensor::from_vec(clean.clone(), batch, dev)?.to_dtype(dtype)?,
        target_host: clean,
        mask_host: m,
        n,
    })
}

/// An exact scalar 0 that is still connected to `pred`, so `backward` gives zero gradients.
/// (A product with a zeros tensor, not `affine(0, 0)`: candle prunes `affine` with a 0 factor
/// from the graph, and `pred` would then get no gradient entry at all.)
fn zero(pred: &Tensor) -> Result<Tensor> {
    Ok(pred.mul(&pred.zeros_like()?)?.sum_all()?)
}

/// Mean squared error over the samples whose `mask` is 1 (`pred`, `target`, `mask` all `[B]`).
/// With no valid sample: an exact 0 with zero gradients.
pub fn mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = prepare(pred, target, mask, "mse")?;
    if m.n == 0 {
        return zero(pred);
    }
    mse_of(pred, &m)
}

fn mse_of(pred: &Tensor, m: &Masked) -> Result<Tensor> {
    let d = pred.sub(&m.target)?.mul(&m.mask)?;
    Ok((d.sqr()?.sum_all()? / m.n as f64)?)
}

/// Concordance correlation coefficient over the valid samples of the batch, population moments:
///
/// `ccc = 2 cov(p, t) / (var(t) + var(p) + (mean(t) - mean(p))^2 + CCC_EPS)`.
///
/// With no valid sample it is an exact 0 with zero gradients (see [`ccc_loss`]).
pub fn ccc(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = prepare(pred, target, mask, "ccc")?;
    if m.n == 0 {
        return zero(pred);
    }
    ccc_of(pred, &m)
}

fn ccc_of(pred: &Tensor, m: &Masked) -> Result<Tensor> {
    let n = m.n as f64;
    // Target moments are constants of the batch: computed once on the host in f64.
    let mean_t = m.target_host.iter().sum::<f64>() / n;
    let dt = m.target.affine(1.0, -mean_t)?.mul(&m.mask)?;
    let var_t = m
        .target_host
        .iter()
        .zip(&m.mask_host)
        .map(|(t, w)| w * (t - mean_t).powi(2))
        .sum::<f64>()
        / n;

    let mean_p = (pred.mul(&m.mask)?.sum_all()? / n)?;
    let dp = pred.broadcast_sub(&mean_p)?.mul(&m.mask)?;
    let var_p = (dp.sqr()?.sum_all()? / n)?;
    let cov = (dp.mul(&dt)?.sum_all()? / n)?;
    let shift = mean_p.affine(-1.0, mean_t)?.sqr()?;
    let denom = (var_p + shift)?.affine(1.0, var_t + CCC_EPS)?;
    Ok((cov * 2.0)?.div(&denom)?)
}

/// `1 - ccc(pred, target, mask)`; an exact 0 with zero gradients when no sample is valid (the
/// term is then absent from the batch, not maximal).
pub fn ccc_loss(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = prepare(pred, target, mask, "ccc_loss")?;
    if m.n == 0 {
        return zero(pred);
    }
    Ok(ccc_of(pred, &m)?.affine(-1.0, 1.0)?)
}

/// The dimensional loss `MSE(v) + MSE(a) + (1 - CCC(v)) + (1 - CCC(a))` over the samples whose
/// `va_mask` is 1. An exact 0 with zero gradients when none is.
pub fn va_loss(
    valence_pred: &Tensor,
    arousal_pred: &Tensor,
    valence: &Tensor,
    arousal: &Tensor,
    va_mask: &Tensor,
) -> Result<Tensor> {
    let v = va_term(valence_pred, valence, va_mask, "va_loss valence")?;
    let a = va_term(arousal_pred, arousal, va_mask, "va_loss arousal")?;
    Ok((v + a)?)
}

/// `MSE + (1 - CCC)` of one target, reading its labels once (each read is a device sync on a GPU).
fn va_term(pred: &Tensor, target: &Tensor, mask: &Tensor, what: &'static str) -> Result<Tensor> {
    let m = prepare(pred, target, mask, what)?;
    if m.n == 0 {
        return zero(pred);
    }
    Ok((mse_of(pred, &m)? + ccc_of(pred, &m)?.affine(-1.0, 1.0)?)?)
}
