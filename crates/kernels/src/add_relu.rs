//! The residual block's output, `relu(y + identity)`, as one op.
//!
//! With candle's ops this is an add and a ReLU forward, and a comparison, a cast, a product and
//! two gradient accumulations backward: five passes over the block's output where one forward
//! and one backward pass do.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::fused::{relu, runs_here, slice};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

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
    if !runs_here(&[a, b]) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `f(a[i], b[i])` for equally long slices, chunked over the rayon pool.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = f(*a, *b);
            }
        });
    out
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = map2(slice(s1, l1)?, slice(s2, l2)?, |a, b| relu(a + b));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &PassPositive)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `grad` where `res > 0`, else 0.
struct PassPositive;

impl CustomOp2 for PassPositive {
    fn name(&self) -> &'static str {
        "relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = map2(slice(s1, l1)?, slice(s2, l2)?, |g, r| {
            if r > 0.0 {
                g
            } else {
                0.0
            }
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}
