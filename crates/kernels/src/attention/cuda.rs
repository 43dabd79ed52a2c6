//! First-level attention on CUDA: the scores by cuBLAS, the pooling by two kernels.

use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CpuStorage, CudaStorage, Layout, Result, Shape, Tensor};

use super::Dims;
use crate::support::cuda::{cuda_only, kernel, output, tensor, view, with_views, THREADS};

/// On CUDA: the scores' pre-activations as one cuBLAS product (autograd handles `W` and its
/// share of `dp`), then one kernel per pass for the rest.
pub(crate) fn scores_then_pool(dims: Dims, p: &Tensor, w: &Tensor, bv: &Tensor) -> Result<Tensor> {
    let Dims { b, n, d, a } = dims;
    let s = p.reshape((b * n, d))?.matmul(&w.t()?)?;
    let op = super::cuda::AttentionFromScores { b, n, d, a };
    s.apply_op3(&p.contiguous()?, &bv.contiguous()?, op)
}

/// First-level attention from the scores' pre-activations `s = p W^T` (`[B*N, a]`, a cuBLAS
/// product done by the caller, so autograd handles `W`): `(s, p [B, N, d], bv [2, a])` in,
/// attention.rs's packed `[u g .. | alpha ..]` out.
pub(crate) struct AttentionFromScores {
    pub b: usize,
    pub n: usize,
    pub d: usize,
    pub a: usize,
}

impl AttentionFromScores {
    fn dims(&self) -> [i32; 4] {
        [self.n as i32, self.d as i32, self.a as i32, self.b as i32]
    }

    /// One block per image with `floats` floats of shared memory.
    fn blocks(&self, floats: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.b as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (floats * std::mem::size_of::<f32>()) as u32,
        }
    }
}

impl candle_core::CustomOp3 for AttentionFromScores {
    fn name(&self) -> &'static str {
        "fer-attention-from-scores"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // The CPU runs the fused op with its own GEMM (cpu.rs).
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let len = self.b * (2 * self.d + self.n);
        let mut out = output(dev, len)?;
        let (s, p, bv) = (view(s1, l1)?, view(s2, l2)?, view(s3, l3)?);
        let [n, d, a, b] = self.dims();
        let f = kernel!(dev, "fer_attn_fwd");
        let mut builder = f.builder();
        builder.arg(&n);
        builder.arg(&d);
        builder.arg(&a);
        builder.arg(&s);
        builder.arg(&p);
        builder.arg(&bv);
        builder.arg(&mut out);
        builder.arg(&b);
        if self.b > 0 {
            // SAFETY: shapes checked by `position_attention`; `out` holds the packed length.
            unsafe { builder.launch(self.blocks(self.n)) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(len),
        ))
    }

    fn bwd(
        &self,
        s: &Tensor,
        p: &Tensor,
        bv: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bs, n, d, a) = (self.b, self.n, self.d, self.a);
        let (ds, dp, parts) = with_views(&[s, p, bv, res, dres], |dev, v| {
            let mut dp = output(dev, bs * n * d)?;
            let mut ds = output(dev, bs * n * a)?;
            let mut parts = output(dev, bs * 2 * a)?;
            let [ni, di, ai, bi] = self.dims();
            let f = kernel!(dev, "fer_attn_bwd");
            let mut builder = f.builder();
            builder.arg(&ni);
            builder.arg(&di);
            builder.arg(&ai);
            for x in v {
                builder.arg(x);
            }
            builder.arg(&mut dp);
            builder.arg(&mut ds);
            builder.arg(&mut parts);
            builder.arg(&bi);
            if bs > 0 {
                // SAFETY: as the forward; outputs allocated at the sizes the kernel indexes.
                unsafe { builder.launch(self.blocks(2 * n)) }.w()?;
            }
            Ok((
                tensor(dev, ds, (bs * n, a)),
                tensor(dev, dp, (bs, n, d)),
                tensor(dev, parts, (bs, 2, a)),
            ))
        })?;
        Ok((Some(ds), Some(dp), Some(parts.sum(0)?)))
    }
}
