//! Access to tensor data for the CPU kernels, and the small helpers every op shares.

use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};

use crate::error::KernelError;

/// The f32 data of a contiguous CPU storage (what a candle custom op's `cpu_fwd` receives).
pub fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => Err(KernelError::Storage("a non-contiguous layout".into()).into()),
    }
}

/// The same, writable (what an in-place op's `cpu_fwd` receives).
pub fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        (CpuStorage::F32(_), None) => {
            Err(KernelError::Storage("a non-contiguous layout".into()).into())
        }
        (_, _) => Err(KernelError::Storage("data that is not f32".into()).into()),
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

/// Borrows a contiguous f32 CPU tensor's data.
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout)?),
        other => Err(KernelError::Storage(format!("{:?}", other.device().location())).into()),
    }
}

pub(crate) fn dims4(shape: &Shape, op: &'static str, what: &'static str) -> Result<[usize; 4]> {
    match shape.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        d => Err(KernelError::Rank {
            op,
            what,
            got: d.to_vec(),
        }
        .into()),
    }
}
