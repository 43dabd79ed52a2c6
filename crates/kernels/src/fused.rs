//! Helpers shared by the fused ops (first-level attention, recurrent cells), whose inputs are
//! not 4-D maps and so do not go through `runs_here`.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

use crate::error::KernelError;

/// Whether the fused kernels take these tensors: switched on, all on the CPU, all f32.
pub(crate) fn runs_here(ts: &[&Tensor]) -> bool {
    crate::enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether the CUDA twins take these tensors: built with CUDA, switched on, all on a CUDA
/// device, all f32.
pub(crate) fn on_cuda(ts: &[&Tensor]) -> bool {
    cfg!(feature = "cuda")
        && crate::enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

/// The f32 data of a contiguous CPU storage.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => Err(KernelError::Storage("a non-contiguous layout".into()).into()),
    }
}

/// Threads for a GEMM called outside any parallel loop of ours.
pub(crate) fn gemm_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `max(v, 0)` with NaN passing through, as PyTorch's ReLU does (`f32::max` would turn NaN into
/// 0 and hide a diverged activation from everything downstream).
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}
