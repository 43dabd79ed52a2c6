//! A ResNet unit in training mode as one op: conv2d, BatchNorm with the batch's statistics, and
//! optionally a ReLU.
//!
//! As two ops (`conv2d` then `batch_norm_train`) the conv output is a graph node of its own, and
//! candle's backward adds its gradient into a fresh zero tensor before the conv's backward reads
//! it: a memset and an add over the largest activations, for every conv of the network. Fused,
//! the BatchNorm backward's input gradient goes straight into the conv backward. The conv output
//! is kept inside the op for the backward, as the graph kept it before.

pub(crate) mod cpu;
mod eval;

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};

use crate::batch_norm::BatchStats;
use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;
use crate::{batch_norm_train, conv2d, max_pool_3x3_s2};

/// `batch_norm_train(conv2d(x, w, stride, padding), gamma, beta, eps, relu)`: the same values,
/// statistics and gradients (in `x`, `w`, `gamma` and `beta`), as one op on the CPU in f32
/// (kernels on); elsewhere exactly that composition.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let dev = Device::Cpu;
/// let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev)?)?;
/// let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev)?)?;
/// let (g, b) = (Tensor::ones(4, candle_core::DType::F32, &dev)?, Tensor::zeros(4, candle_core::DType::F32, &dev)?);
/// let (y, stats) = fer_kernels::conv_bn_train(&x, &w, 1, 1, &g, &b, 1e-5, true)?;
/// assert_eq!(y.dims(), &[2, 4, 6, 6]);
/// assert_eq!(stats.mean.dims(), &[4]);
/// let grads = y.sum_all()?.backward()?;
/// assert_eq!(grads.get(&w).unwrap().dims(), &[4, 3, 3, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    match backend(Op::ConvBnTrain, &[x, w, gamma, beta]) {
        Backend::Cpu => fused(x, w, stride, padding, gamma, beta, eps, relu, false),
        Backend::Cuda | Backend::Candle => {
            batch_norm_train(&conv2d(x, w, stride, padding)?, gamma, beta, eps, relu)
        }
    }
}

/// The ImageNet stem in training mode: [`conv_bn_train`] with the ReLU, then
/// [`crate::max_pool_3x3_s2`], as one op (the BatchNorm output, the largest map of the network,
/// is then no graph node of its own) on the CPU in f32 (kernels on); elsewhere that composition.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_pool_train(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    match backend(Op::ConvBnReluPoolTrain, &[x, w, gamma, beta]) {
        Backend::Cpu => fused(x, w, stride, padding, gamma, beta, eps, true, true),
        Backend::Cuda | Backend::Candle => {
            let (y, stats) = conv_bn_train(x, w, stride, padding, gamma, beta, eps, true)?;
            Ok((max_pool_3x3_s2(&y)?, stats))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: bool,
) -> Result<(Tensor, BatchStats)> {
    let g = crate::conv2d::cpu::geom(x.shape(), w.shape(), stride, padding)?;
    crate::batch_norm::check_affine(g.o, gamma, beta)?;
    // Scale and shift travel as one `[2, C]` input (a CustomOp takes three).
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let stats = Arc::new(OnceLock::new());
    let op = cpu::ConvBnTrain {
        g,
        eps,
        relu,
        pool,
        saved: OnceLock::new(),
        stats: Arc::clone(&stats),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
    let (mean, var): &(Vec<f32>, Vec<f32>) = stats
        .get()
        .ok_or_else(|| KernelError::Storage("conv_bn_train ran without statistics".into()))?;
    let stats = BatchStats {
        mean: Tensor::from_slice(mean, g.o, x.device())?,
        var: Tensor::from_slice(var, g.o, x.device())?,
        count: g.b * g.n(),
    };
    Ok((y, stats))
}

/// Eval-mode conv + BatchNorm (+ ReLU): `conv2d(x, w)` normalised with the running statistics
/// `mean` and `var` (`[O]`, constants, as PyTorch's buffers), scaled by `gamma` and shifted by
/// `beta`. On the CPU the normalisation is applied to each block of the conv's output as it is
/// finished, while it is in cache, instead of in a pass of its own over the whole output.
/// Differentiable in `x`, `w`, `gamma` and `beta`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = &Device::Cpu;
/// let x = Tensor::ones((1, 1, 3, 3), DType::F32, dev)?;
/// let w = Tensor::ones((1, 1, 3, 3), DType::F32, dev)?;
/// let (gamma, beta) = (Tensor::new(&[0.5f32], dev)?, Tensor::new(&[-2f32], dev)?);
/// let (mean, var) = (Tensor::new(&[1f32], dev)?, Tensor::new(&[1f32], dev)?);
/// let y = fer_kernels::conv_bn_eval(&x, &w, 1, 1, &gamma, &beta, &mean, &var, 0.0, true)?;
/// // (sum - 1) * 0.5 - 2: corners sum 4 (-0.5, cut by the ReLU), edges 6 (0.5), the centre 9 (2).
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![0., 0.5, 0., 0.5, 2., 0.5, 0., 0.5, 0.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    match backend(Op::ConvBnEval, &[x, w, gamma, beta, mean, var]) {
        Backend::Cpu => {
            let g = crate::conv2d::cpu::geom(x.shape(), w.shape(), stride, padding)?;
            crate::batch_norm::check_eval(g.o, gamma, beta, mean, var)?;
            let gb = Tensor::stack(&[gamma, beta], 0)?;
            let op = eval::ConvBnEval {
                g,
                mean: mean.to_vec1()?,
                invstd: crate::batch_norm::cpu::invstd(&var.to_vec1::<f32>()?, eps),
                relu,
            };
            x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)
        }
        Backend::Cuda | Backend::Candle => {
            let y = crate::conv2d(x, w, stride, padding)?;
            crate::batch_norm_eval(&y, gamma, beta, mean, var, eps, relu)
        }
    }
}
