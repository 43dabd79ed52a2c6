//! `conv2d`: forward, input gradient and weight gradient, each one GEMM on the CPU.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_variables, unused_mut)
)]
mod direct;

use candle_core::{Result, Tensor};

use crate::dispatch::{backend, Backend, Op};

/// `conv2d(x [B, C, H, W], w [O, C, KH, KW])` with `stride` and zero `padding` on both sides,
/// no bias, dilation or groups — the convs of a ResNet. Differentiable in both arguments.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    match backend(Op::Conv2d, &[x, w]) {
        Backend::Cpu => x
            .contiguous()?
            .apply_op2(&w.contiguous()?, cpu::Conv2d { stride, padding }),
        #[cfg(feature = "cuda")]
        Backend::Cuda => cuda::conv2d(x, w, stride, padding),
        _ => x.conv2d(w, padding, stride, 1, 1),
    }
}
