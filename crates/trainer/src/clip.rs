//! Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

use crate::Result;

/// Scales the gradients of `vars` in place so that their joint L2 norm is at most `max_norm`
/// (factor `max_norm / (norm + 1e-6)` capped at 1, PyTorch's rule) and returns the norm before
/// clipping. A non-finite norm is returned untouched and the gradients are left as they are, so
/// the caller can stop with a useful message instead of stepping on NaNs.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, vars)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), g.affine(coef, 0.0)?);
            }
        }
    }
    Ok(norm)
}

/// The joint L2 norm of the gradients of `vars` (those with none count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
            total += s;
        }
    }
    Ok(total.sqrt())
}
