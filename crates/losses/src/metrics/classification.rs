//! One-shot classification metrics.

use crate::error::{shape_err, LossError, Result};

/// Index of the largest value of each row of a row-major `[B, K]` slice (first one on ties,
/// like NumPy and PyTorch). NaN logits are an error.
pub fn argmax_rows(logits: &[f32], k: usize) -> Result<Vec<i64>> {
    if k == 0 || !logits.len().is_multiple_of(k) {
        return Err(shape_err(
            "logits",
            format!(
                "{} values is not a whole number of rows of {k} classes",
                logits.len()
            ),
        ));
    }
    logits
        .chunks(k)
        .enumerate()
        .map(|(row, r)| {
            let mut best = 0;
            for (j, &x) in r.iter().enumerate() {
                if x.is_nan() {
                    return Err(LossError::NotFinite {
                        what: "logit",
                        index: row,
                        value: x as f64,
                    });
                }
                if x > r[best] {
                    best = j;
                }
            }
            Ok(best as i64)
        })
        .collect()
}

/// Checks class ids: truth in `-1..K` (`-1` = no class), predictions in `0..K`.
pub(crate) fn check_classes(pred: &[i64], truth: &[i64], k: usize) -> Result<()> {
    if pred.len() != truth.len() {
        return Err(shape_err(
            "classification metrics",
            format!("{} predictions for {} targets", pred.len(), truth.len()),
        ));
    }
    let k = k as i64;
    for (index, (&p, &t)) in pred.iter().zip(truth).enumerate() {
        if t < -1 || t >= k {
            return Err(LossError::InvalidClass {
                what: "class target",
                index,
                value: t,
                expected: format!("-1 (none) or 0..{k}"),
            });
        }
        if p < 0 || p >= k {
            return Err(LossError::InvalidClass {
                what: "predicted class",
                index,
                value: p,
                expected: format!("0..{k}"),
            });
        }
    }
    Ok(())
}

/// `[K][K]` confusion counts (rows = truth, columns = prediction); samples with truth `-1` are
/// skipped.
pub fn confusion_matrix(pred: &[i64], truth: &[i64], k: usize) -> Result<Vec<Vec<u64>>> {
    check_classes(pred, truth, k)?;
    let mut cm = vec![vec![0u64; k]; k];
    for (&p, &t) in pred.iter().zip(truth) {
        if t >= 0 {
            cm[t as usize][p as usize] += 1;
        }
    }
    Ok(cm)
}

/// Fraction of correct predictions among samples with a class; `None` when there is none.
pub fn accuracy(pred: &[i64], truth: &[i64], k: usize) -> Result<Option<f64>> {
    let cm = confusion_matrix(pred, truth, k)?;
    Ok(accuracy_from_confusion(&cm))
}

pub(crate) fn accuracy_from_confusion(cm: &[Vec<u64>]) -> Option<f64> {
    let total: u64 = cm.iter().flatten().sum();
    let correct: u64 = (0..cm.len()).map(|i| cm[i][i]).sum();
    (total > 0).then(|| correct as f64 / total as f64)
}

/// Macro-F1 over the classes present in truth or prediction (see the module notes); `None`
/// when no sample has a class.
pub fn macro_f1(pred: &[i64], truth: &[i64], k: usize) -> Result<Option<f64>> {
    let cm = confusion_matrix(pred, truth, k)?;
    Ok(macro_f1_from_confusion(&cm))
}

/// Macro-F1 from a `[K][K]` confusion matrix (rows = truth).
pub fn macro_f1_from_confusion(cm: &[Vec<u64>]) -> Option<f64> {
    let k = cm.len();
    let mut sum = 0.0;
    let mut classes = 0;
    for c in 0..k {
        let tp = cm[c][c];
        let true_c: u64 = cm[c].iter().sum();
        let pred_c: u64 = cm.iter().map(|row| row[c]).sum();
        if true_c == 0 && pred_c == 0 {
            continue;
        }
        classes += 1;
        // 2tp / (2tp + fp + fn) equals 2PR/(P+R) and is 0 (not 0/0) when tp = 0.
        let (fp, fneg) = (pred_c - tp, true_c - tp);
        sum += 2.0 * tp as f64 / (2 * tp + fp + fneg) as f64;
    }
    (classes > 0).then(|| sum / classes as f64)
}
