//! Fast CPU kernels for the hot core of 2Att-2Mt, as candle ops that keep autograd.
//!
//! candle's CPU convolution backward runs direct loops at a fraction of the GEMM rate; a
//! training step of a ResNet spends most of its time there. [`conv2d`] computes the forward and
//! both gradients as im2col + GEMM instead, through a candle `CustomOp2`, so `backward()` works as
//! usual. On other devices, other dtypes, or when switched off, it is candle's own `conv2d`.
//!
//! [`batch_norm_train`] does the same for training-mode BatchNorm: two passes forward (statistics,
//! normalisation) and two backward, where candle's module chains a dozen generic ops.
//! [`conv_bn_train`] fuses the two (and the ReLU), so the conv output is no graph node of its own;
//! [`batch_norm_eval`] is the eval-mode BatchNorm (+ ReLU) in one pass.
//!
//! [`max_pool_3x3_s2`] is the ImageNet stem's max-pool with an argmax backward (candle's own
//! max-pool has no backward when kernel and stride differ).
//!
//! [`position_attention`] fuses the first-level attention pooling (scores, softmax over
//! positions, weighted sum and mean) into one op with a hand-written backward, and
//! [`position_projection`] the linear map before it (read from the feature map in place, no
//! transposed copy); [`lstm_cell`]
//! and [`gru_cell`] do the same for one step of a PyTorch LSTM / GRU; [`add_relu`] for the
//! residual block's output.
//!
//! The switch: the environment variable `FER_KERNELS=candle` (read once) or [`set_enabled`].
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let x = Var::new(&[[[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.]]]], &Device::Cpu)?;
//! let w = Var::new(&[[[[1f32, 0.], [0., -1.]]]], &Device::Cpu)?;
//! let y = fer_kernels::conv2d(x.as_tensor(), w.as_tensor(), 1, 0)?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-4.0, -4.0, -4.0, -4.0]);
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).unwrap().flatten_all()?.to_vec1::<f32>()?, vec![12., 16., 24., 28.]);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod batch_norm;
mod bn_eval;
pub mod check;
mod conv;
mod conv_bn;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod im2col;
mod matmul;
mod op;
mod out;
mod pool;

// The fused ops of the attention and recurrent blocks (inputs that are not 4-D maps).
mod add_relu;
mod attention;
mod fused;
mod project;
mod rnn_cell;
pub use add_relu::add_relu;
pub use attention::{position_attention, AttentionPool};
pub use project::position_projection;
pub use rnn_cell::{gru_cell, lstm_cell};

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Result, Tensor, D};

pub use bn_eval::batch_norm_eval;
pub use conv_bn::{conv_bn_relu_pool_train, conv_bn_train};
pub use error::KernelError;
pub use out::set_poison;

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the custom kernels are used (default yes; `FER_KERNELS=candle` turns them off).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = !matches!(
                std::env::var("FER_KERNELS").as_deref(),
                Ok("candle" | "off" | "0")
            );
            // A concurrent `set_enabled` wins over the environment.
            let _ = STATE.compare_exchange(
                UNSET,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Turns the custom kernels on or off for the whole process (overrides `FER_KERNELS`).
pub fn set_enabled(on: bool) {
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether the kernels take `x` (a 4-D map) with the tensors that go with it: switched on, on
/// the CPU, all f32. Otherwise the callers use candle's ops.
fn runs_here(x: &Tensor, with: &[&Tensor]) -> bool {
    enabled()
        && x.device().is_cpu()
        && x.rank() == 4
        && std::iter::once(x)
            .chain(with.iter().copied())
            .all(|t| t.dtype() == DType::F32)
}

/// `conv2d(x [B, C, H, W], w [O, C, KH, KW])` with `stride` and zero `padding` on both sides,
/// no bias, dilation or groups — the convs of a ResNet. Differentiable in both arguments.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if w.rank() == 4 && x.rank() == 4 && fused::on_cuda(&[x, w]) {
        return cuda::conv2d(x, w, stride, padding);
    }
    if !(runs_here(x, &[w]) && w.rank() == 4) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, op::Conv2d { stride, padding })
}

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
    if !runs_here(x, &[gamma, beta]) {
        let (y, stats) = batch_norm_plain(x, gamma, beta, eps)?;
        return Ok((if relu { y.relu()? } else { y }, stats));
    }
    let (b, c, h, w) = x.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        return Err(KernelError::Affine {
            channels: c,
            gamma: gamma.dims().to_vec(),
            beta: beta.dims().to_vec(),
        }
        .into());
    }
    let x = x.contiguous()?;
    let dims = batch_norm::Dims { b, c, s: h * w };
    let (mean, var) = op::with_data(&x, |x| Ok(batch_norm::stats(dims, x)))?;
    let invstd = batch_norm::invstd(&var, eps);
    let stats = BatchStats {
        mean: Tensor::from_slice(&mean, c, x.device())?,
        var: Tensor::from_vec(var, c, x.device())?,
        count: dims.m(),
    };
    let op = op::BatchNormOp {
        dims,
        mean,
        invstd,
        relu,
        batch_stats: true,
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, stats))
}

/// The same with candle's generic ops (other devices and dtypes, or kernels switched off).
fn batch_norm_plain(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let c = x.dim(1)?;
    let mut shape = vec![1; x.rank()];
    shape[1] = c;
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

/// The ResNet stem's max-pool: 3x3 windows, stride 2, padding 1 (padding never wins), over
/// `[B, C, H, W]`. The gradient goes to each window's first maximum. Only the CPU kernel is
/// here: elsewhere, and with the kernels off, it returns `None` and the caller uses its own.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Option<Tensor>> {
    if !runs_here(x, &[]) {
        return Ok(None);
    }
    x.contiguous()?.apply_op1(op::MaxPool3x3S2).map(Some)
}

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
