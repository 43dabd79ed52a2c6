//! Launching our CUDA kernels: the module `cuda/fer_kernels.cu` (PTX compiled by build.rs,
//! JIT-compiled by the driver when first used), output buffers, views of candle's storages.

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor};

use crate::error::KernelError;

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fer_kernels.ptx"));
pub(crate) const MODULE: &str = "fer_kernels";
pub(crate) const THREADS: u32 = 256;

/// The kernel `name` of our module (loaded on first use, then cached by the device).
macro_rules! kernel {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func(
            $name,
            $crate::support::cuda::MODULE,
            $crate::support::cuda::PTX,
        )?
    };
}
pub(crate) use kernel;

/// One thread per element, `THREADS` per block.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A fresh output of `n` floats for a kernel that writes every element (NaN when poisoning).
pub(crate) fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: uninitialised device memory is only handed to kernels that write all of it
    // (poisoning in the checks catches one that does not).
    let mut out = unsafe { dev.alloc::<f32>(n.max(1))? };
    if crate::support::out::poisoned() {
        let f = kernel!(dev, "fer_fill");
        let (len, nan) = (n.max(1), f32::NAN);
        let mut b = f.builder();
        b.arg(&len);
        b.arg(&nan);
        b.arg(&mut out);
        // SAFETY: the kernel writes `len` floats of `out`, which holds that many.
        unsafe { b.launch(grid(len)) }.w()?;
    }
    Ok(out)
}

/// The f32 data of a contiguous CUDA storage.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| KernelError::Storage("a non-contiguous layout".into()))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// Runs `f` on the device and data of CUDA tensors (each made contiguous first).
pub(crate) fn with_views<R>(
    ts: &[&Tensor],
    f: impl FnOnce(&CudaDevice, &[CudaView<'_, f32>]) -> Result<R>,
) -> Result<R> {
    let ts = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(guards.len());
    let mut dev = None;
    for (st, l) in &guards {
        let Storage::Cuda(cs) = &**st else {
            return Err(KernelError::Storage("a tensor that is not on the GPU".into()).into());
        };
        dev.get_or_insert_with(|| cs.device.clone());
        views.push(view(cs, l)?);
    }
    let dev = dev.ok_or_else(|| KernelError::Storage("no tensors".into()))?;
    f(&dev, &views)
}

/// A tensor (outside any graph) owning `s`.
pub(crate) fn tensor(dev: &CudaDevice, s: CudaSlice<f32>, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// The CPU side of an op that only exists on CUDA: never called (the public functions pick the
/// CPU ops there), an error rather than a panic if it were.
pub(crate) fn cuda_only(op: &str) -> Result<(CpuStorage, Shape)> {
    Err(KernelError::Storage(format!("{op} runs on CUDA only")).into())
}
