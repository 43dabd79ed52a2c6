//! Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

use crate::{optim_cpu, Result};

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
    crate::grads::scale(grads, vars, coef)?;
    Ok(norm)
}

/// The joint L2 norm of the gradients of `vars` (those with none count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            if let Some(s) = optim_cpu::sum_sq(g) {
                total += s;
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The norm of a gradient spread over several parallel chunks, a strided one (tensor route)
    /// and a missing one, against the closed form sum_{i<n} i^2 = (n-1) n (2n-1) / 6.
    #[test]
    fn norm_and_clipping_match_the_closed_form() {
        let dev = Device::Cpu;
        let n = 100_000usize;
        let ramp = Tensor::arange(0f32, n as f32, &dev).unwrap();
        let a = Var::from_tensor(&ramp.zeros_like().unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::zeros((3, 2), DType::F32, &dev).unwrap()).unwrap();
        let missing = Var::new(&[1f32], &dev).unwrap();
        let loss = ((a.as_tensor() * &ramp).unwrap().sum_all().unwrap()
            + (b.as_tensor() * Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        // Store b's gradient transposed-back (strided) so the tensor route is used for it.
        let gb = grads.remove(b.as_tensor()).unwrap();
        let gb = gb.t().unwrap().contiguous().unwrap().t().unwrap();
        grads.insert(b.as_tensor(), gb);
        let m = (n - 1) as f64;
        let want = (m * (m + 1.0) * (2.0 * m + 1.0) / 6.0 + 91.0).sqrt();
        let vars = [a.clone(), b.clone(), missing];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((norm - want).abs() / want < 1e-12, "{norm} vs {want}");
        let after = grad_norm(&grads, &vars).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
    }
}
