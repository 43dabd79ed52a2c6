//! Eval-mode BatchNorm (running statistics) with an optional ReLU, as one pass.
//!
//! With candle's ops this is a broadcast multiply, a broadcast add and a ReLU, three passes over
//! every activation of an inference step, each into a fresh tensor.

use candle_core::{Result, Tensor};

use crate::batch_norm::{self, Dims};
use crate::error::KernelError;
use crate::op::BatchNormOp;
use crate::runs_here;

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over `x [B, C, H, W]` with fixed per-channel
/// `mean` and `var` (the running averages), then a ReLU when `relu` (NaN passes through, as in
/// PyTorch). Differentiable in `x`, `gamma` and `beta`; the statistics are constants, as
/// PyTorch's buffers are. Only the CPU kernel is here: elsewhere, and with the kernels off, it
/// returns `None` and the caller uses its own ops.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[[1f32, -3.]], [[2., 4.]]]], &dev)?; // [1, 2, 1, 2]
/// let (g, b) = (Tensor::ones(2, DType::F32, &dev)?, Tensor::zeros(2, DType::F32, &dev)?);
/// let (mean, var) = (Tensor::new(&[1f32, 0.], &dev)?, Tensor::new(&[4f32, 1.], &dev)?);
/// let y = fer_kernels::batch_norm_eval(&x, &g, &b, &mean, &var, 0.0, true)?.unwrap();
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![0., 0., 2., 4.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Option<Tensor>> {
    if !runs_here(x, &[gamma, beta, mean, var]) {
        return Ok(None);
    }
    let (b, c, h, w) = x.dims4()?;
    if [gamma, beta, mean, var].iter().any(|t| t.dims() != [c]) {
        return Err(KernelError::EvalShapes {
            channels: c,
            gamma: gamma.dims().to_vec(),
            beta: beta.dims().to_vec(),
            mean: mean.dims().to_vec(),
            var: var.dims().to_vec(),
        }
        .into());
    }
    let mean: Vec<f32> = mean.to_vec1()?;
    let invstd = batch_norm::invstd(&var.to_vec1::<f32>()?, eps);
    let op = BatchNormOp {
        dims: Dims { b, c, s: h * w },
        mean,
        invstd,
        relu,
        batch_stats: false,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
        .map(Some)
}
