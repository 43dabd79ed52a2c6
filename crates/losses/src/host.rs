//! Small reads of per-sample labels to the host: they are `[B]` vectors, cheap to copy, and reading
//! them lets bad labels fail with an error naming the sample instead of producing NaN.

use candle_core::{DType, Tensor};

use crate::error::{shape_err, LossError, Result};

pub(crate) fn vec1_f64(t: &Tensor, what: &'static str) -> Result<Vec<f64>> {
    if t.rank() != 1 {
        return Err(shape_err(
            what,
            format!("expected a [B] tensor, got {:?}", t.dims()),
        ));
    }
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Reads a 0/1 mask and returns it with the number of ones.
pub(crate) fn mask(t: &Tensor, batch: usize, what: &'static str) -> Result<(Vec<f64>, usize)> {
    let m = vec1_f64(t, what)?;
    if m.len() != batch {
        return Err(shape_err(
            what,
            format!("mask has {} entries, batch has {batch}", m.len()),
        ));
    }
    let mut n = 0;
    for (index, &value) in m.iter().enumerate() {
        if value == 1.0 {
            n += 1;
        } else if value != 0.0 {
            return Err(LossError::InvalidMask { what, index, value });
        }
    }
    Ok((m, n))
}

/// Reads class targets (`i64`, `-1` = no class) and checks them against `k` classes.
pub(crate) fn targets(t: &Tensor, batch: usize, k: usize, what: &'static str) -> Result<Vec<i64>> {
    if t.dtype() != DType::I64 {
        return Err(shape_err(
            what,
            format!("targets must be i64, got {:?}", t.dtype()),
        ));
    }
    if t.dims() != [batch] {
        return Err(shape_err(
            what,
            format!("targets have shape {:?}, expected [{batch}]", t.dims()),
        ));
    }
    let v = t.to_vec1::<i64>()?;
    for (index, &value) in v.iter().enumerate() {
        if value < -1 || value >= k as i64 {
            return Err(LossError::InvalidClass {
                what,
                index,
                value,
                expected: format!("-1 (none) or 0..{k}"),
            });
        }
    }
    Ok(v)
}
