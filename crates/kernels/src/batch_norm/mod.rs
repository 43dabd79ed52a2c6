//! BatchNorm over `[B, C, H, W]`: training mode (the batch's statistics, gradients through
//! them) and eval mode (fixed running statistics), each optionally with a fused ReLU.
//!
//! candle's BatchNorm is a chain of generic ops (transpose, copy, mean, sub, sqr, mean, div,
//! mul, add, transpose), each a full pass over the activations, and autograd doubles them; in
//! eval mode a broadcast multiply, add and ReLU, three passes into fresh tensors. Here training
//! is two passes forward and two backward, eval one pass.

pub(crate) mod cpu;

use candle_core::{Result, Tensor, D};

use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;
use crate::support::storage::with_data;
use cpu::{BatchNormOp, Dims};

/// Batch statistics of a training-mode BatchNorm, per channel, detached from the graph (for the
/// running averages).
pub struct BatchStats {
    /// Mean over batch and positions, `[C]`.
    pub mean: Tensor,
    /// Biased variance over batch and positions, `[C]` (the one the normalisation divides by).
    pub var: Tensor,
    /// Values per channel the statistics cover (batch times positions), for the unbiased
    /// variance of running averages.
    pub count: usize,
}

/// Training-mode BatchNorm of `x [B, C, H, W]`: `(x - mean) / sqrt(var + eps) * gamma + beta`
/// with the batch's own per-channel statistics, differentiable in `x`, `gamma` and `beta`
/// (through the statistics too), followed by a ReLU when `relu` (fused: no extra passes).
/// Returns the output and the statistics.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    if backend(Op::BatchNormTrain, &[x, gamma, beta]) != Backend::Cpu {
        let (y, stats) = batch_norm_plain(x, gamma, beta, eps)?;
        return Ok((if relu { y.relu()? } else { y }, stats));
    }
    let (b, c, h, w) = x.dims4()?;
    check_affine(c, gamma, beta)?;
    let x = x.contiguous()?;
    let dims = Dims { b, c, s: h * w };
    let (mean, var) = with_data(&x, |x| Ok(cpu::stats(dims, x)))?;
    let invstd = cpu::invstd(&var, eps);
    let stats = BatchStats {
        mean: Tensor::from_slice(&mean, c, x.device())?,
        var: Tensor::from_vec(var, c, x.device())?,
        count: dims.m(),
    };
    let op = BatchNormOp {
        dims,
        mean,
        invstd,
        relu,
        batch_stats: true,
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, stats))
}

/// That `gamma` and `beta` hold one value per channel of `c`.
/// Eval mode's four per-channel tensors all `[c]`.
pub(crate) fn check_eval(
    c: usize,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
) -> Result<()> {
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
    Ok(())
}

pub(crate) fn check_affine(c: usize, gamma: &Tensor, beta: &Tensor) -> Result<()> {
    if gamma.dims() != [c] || beta.dims() != [c] {
        return Err(KernelError::Affine {
            channels: c,
            gamma: gamma.dims().to_vec(),
            beta: beta.dims().to_vec(),
        }
        .into());
    }
    Ok(())
}

/// `[1, C, 1, ..]` for `x` of any rank >= 2: per-channel values broadcast over the rest.
fn channel_shape(x: &Tensor) -> Result<Vec<usize>> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    Ok(shape)
}

/// The candle twin of [`batch_norm_train`] (without the ReLU).
fn batch_norm_plain(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let c = x.dim(1)?;
    let shape = channel_shape(x)?;
    // Channels first, everything else flattened: statistics are per row.
    let xt = x.transpose(0, 1)?.flatten_from(1)?;
    let mean = xt.mean_keepdim(D::Minus1)?;
    let var = xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let (mean, var) = (
        mean.reshape(shape.as_slice())?,
        var.reshape(shape.as_slice())?,
    );
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
        .broadcast_add(&beta.reshape(shape.as_slice())?)?;
    let stats = BatchStats {
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
        count: x.elem_count() / c.max(1),
    };
    Ok((y, stats))
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over `x [B, C, H, W]` with fixed per-channel
/// `mean` and `var` (the running averages), then a ReLU when `relu` (NaN passes through, as in
/// PyTorch). Differentiable in `x`, `gamma` and `beta`; the statistics are constants, as
/// PyTorch's buffers are.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[[1f32, -3.]], [[2., 4.]]]], &dev)?; // [1, 2, 1, 2]
/// let (g, b) = (Tensor::ones(2, DType::F32, &dev)?, Tensor::zeros(2, DType::F32, &dev)?);
/// let (mean, var) = (Tensor::new(&[1f32, 0.], &dev)?, Tensor::new(&[4f32, 1.], &dev)?);
/// let y = fer_kernels::batch_norm_eval(&x, &g, &b, &mean, &var, 0.0, true)?;
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
) -> Result<Tensor> {
    let c = x.dim(1)?;
    check_eval(c, gamma, beta, mean, var)?;
    if backend(Op::BatchNormEval, &[x, gamma, beta, mean, var]) != Backend::Cpu {
        let y = batch_norm_eval_plain(x, gamma, beta, mean, var, eps)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let (b, _, h, w) = x.dims4()?;
    let mean: Vec<f32> = mean.to_vec1()?;
    let invstd = cpu::invstd(&var.to_vec1::<f32>()?, eps);
    let op = BatchNormOp {
        dims: Dims { b, c, s: h * w },
        mean,
        invstd,
        relu,
        batch_stats: false,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// The candle twin of [`batch_norm_eval`] (without the ReLU): one scale and one shift per
/// channel.
fn batch_norm_eval_plain(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let shape = channel_shape(x)?;
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
        .broadcast_add(&shift.reshape(shape.as_slice())?)
}
