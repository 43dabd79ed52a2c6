//! The residual block's output, `relu(y + identity)`, as one op.
//!
//! With candle's ops this is an add and a ReLU forward, and a comparison, a cast, a product and
//! two gradient accumulations backward: five passes over the block's output where one forward
//! and one backward pass do.

pub(crate) mod cpu;

use candle_core::{Result, Tensor};

use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;

/// `relu(a + b)` for two tensors of the same shape, differentiable in both; the gradient passes
/// where the output is positive (PyTorch's rule). On the CPU in f32 (kernels on) one fused op;
/// elsewhere candle's add and ReLU.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let dev = Device::Cpu;
/// let a = Var::new(&[1f32, -2.0, 0.5], &dev)?;
/// let b = Tensor::new(&[1f32, 1.0, -1.0], &dev)?;
/// let y = fer_kernels::add_relu(&a, &b)?;
/// assert_eq!(y.to_vec1::<f32>()?, [2.0, 0.0, 0.0]);
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(&a).unwrap().to_vec1::<f32>()?, [1.0, 0.0, 0.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(KernelError::AddShapes {
            a: a.dims().to_vec(),
            b: b.dims().to_vec(),
        }
        .into());
    }
    match backend(Op::AddRelu, &[a, b]) {
        Backend::Cpu => a.contiguous()?.apply_op2(&b.contiguous()?, cpu::AddRelu),
        Backend::Cuda | Backend::Candle => (a + b)?.relu(),
    }
}
