//! Class weights for imbalanced sets (AffectNet has ~25x more Happy than Contempt faces).

use crate::error::{LossError, Result};

/// Inverse-frequency weights `w_k ∝ 1 / n_k` from a class histogram, scaled so that their mean
/// over the classes present (`n_k > 0`) is 1. Absent classes get weight 0: they have no samples
/// to weigh, and a finite weight keeps the cross-entropy well defined.
pub fn inverse_frequency_weights(histogram: &[u64]) -> Result<Vec<f32>> {
    let present: Vec<f64> = histogram
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| 1.0 / n as f64)
        .collect();
    if present.is_empty() {
        return Err(LossError::Config(format!(
            "class histogram {histogram:?} has no sample: cannot derive class weights"
        )));
    }
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    Ok(histogram
        .iter()
        .map(|&n| {
            if n > 0 {
                (1.0 / n as f64 / mean) as f32
            } else {
                0.0
            }
        })
        .collect())
}
