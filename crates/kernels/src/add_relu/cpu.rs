//! The CPU kernel: one pass forward, one backward.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::support::storage::{relu, slice};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// `f(a[i], b[i])` for equally long slices, chunked over the rayon pool.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = crate::support::out::uninit(a.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = f(*a, *b);
            }
        });
    out
}

pub(super) struct AddRelu;

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
        let d = relu_grad(slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// The gradient `g` through a ReLU whose output was `res`: `g` where `res > 0`, else 0.
pub(crate) fn relu_grad(g: &[f32], res: &[f32]) -> Vec<f32> {
    map2(g, res, |g, r| if r > 0.0 { g } else { 0.0 })
}
