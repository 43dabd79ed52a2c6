//! Cross-entropy with class weights, label smoothing and ignored targets, as PyTorch defines it.

use candle_core::{DType, Tensor};

use crate::error::{shape_err, LossError, Result};
use crate::host;

/// Mean cross-entropy of `logits` `[B, K]` against `targets` `[B]` (i64, `-1` = no class).
///
/// Same value as PyTorch's
/// `F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=eps, ignore_index=-1)`:
///
/// `loss = (1-eps) * sum_i w[y_i] * nll_i / W + (eps/K) * sum_i sum_k w[k] * (-log p_ik) / W`,
/// with `W = sum_i w[y_i]` over the samples with a class (all `w = 1` without weights).
///
/// When no sample has a class the result is an exact 0 that still backpropagates (zero
/// gradients), where PyTorch returns NaN.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: Option<&Tensor>,
    label_smoothing: f64,
) -> Result<Tensor> {
    let (batch, k) = match logits.dims() {
        &[b, k] if k > 0 => (b, k),
        d => {
            return Err(shape_err(
                "cross_entropy logits",
                format!("expected [B, K], got {d:?}"),
            ))
        }
    };
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(LossError::Config(format!(
            "label_smoothing must be in [0, 1], got {label_smoothing}"
        )));
    }
    let y = host::targets(targets, batch, k, "cross_entropy targets")?;
    let w = match class_weights {
        Some(w) => {
            let w = host::vec1_f64(w, "cross_entropy class weights")?;
            if w.len() != k {
                return Err(shape_err(
                    "cross_entropy class weights",
                    format!("{} weights for {k} classes", w.len()),
                ));
            }
            if let Some((index, &value)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(LossError::NotFinite {
                    what: "cross_entropy class weight (must be finite and >= 0)",
                    index,
                    value,
                });
            }
            w
        }
        None => vec![1.0; k],
    };

    // Target weights placed at the target column of each row: the NLL term is then a plain
    // elementwise product with log-probabilities, which keeps the whole loss differentiable.
    let mut picked = vec![0.0f64; batch * k];
    let mut row_valid = vec![0.0f64; batch];
    let mut denom = 0.0;
    for (i, &yi) in y.iter().enumerate() {
        if yi >= 0 {
            let c = yi as usize;
            picked[i * k + c] = w[c];
            row_valid[i] = 1.0;
            denom += w[c];
        }
    }
    // No valid sample (or all target weights 0): every numerator term below is a product with
    // zeros, so dividing by 1 gives an exact 0 with zero gradients instead of 0/0.
    let denom = if denom > 0.0 { denom } else { 1.0 };

    let dtype = logits.dtype();
    let dev = logits.device();
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = Tensor::from_vec(picked, (batch, k), dev)?.to_dtype(dtype)?;
    let nll = (logp.mul(&picked)?.sum_all()?.neg()? / denom)?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let w_row = Tensor::from_vec(w, (1, k), dev)?.to_dtype(dtype)?;
    let row_valid = Tensor::from_vec(row_valid, batch, dev)?.to_dtype(dtype)?;
    let smooth = logp
        .broadcast_mul(&w_row)?
        .sum(1)?
        .mul(&row_valid)?
        .sum_all()?
        .neg()?;
    let smooth = (smooth / denom)?;
    Ok(((nll * (1.0 - label_smoothing))? + (smooth * (label_smoothing / k as f64))?)?)
}

/// Checks that a tensor is floating point, for the regression losses.
pub(crate) fn check_float(t: &Tensor, what: &'static str) -> Result<()> {
    match t.dtype() {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        d => Err(shape_err(
            what,
            format!("expected a floating-point tensor, got {d:?}"),
        )),
    }
}
