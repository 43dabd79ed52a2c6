//! `conv2d` on CUDA: candle's forward (cuDNN with the `cudnn` feature), our backward as
//! im2col/col2im kernels around cuBLAS products (candle's own CUDA input gradient is a naive
//! direct kernel).

use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::cuda::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::support::cuda::{cuda_only, grid, kernel, output, tensor, with_views};

/// Sizes of a convolution, in the order the im2col/col2im kernels take them.
#[derive(Clone, Copy)]
struct ConvGeom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn args(&self) -> [i32; 10] {
        [
            self.b,
            self.c,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
        ]
        .map(|v| v as i32)
    }

    /// Column matrix length, `[B*Ho*Wo, C*KH*KW]`.
    fn col_len(&self) -> usize {
        self.b * self.ho * self.wo * self.c * self.kh * self.kw
    }

    /// Runs `name(geom.., src, dst)` over `threads` threads into a fresh `[dst_len]` output.
    fn launch(&self, name: &str, src: &Tensor, dst_len: usize, threads: usize) -> Result<Tensor> {
        with_views(&[src], |dev, v| {
            let mut out = output(dev, dst_len)?;
            let args = self.args();
            let f = kernel!(dev, name);
            let mut builder = f.builder();
            for a in &args {
                builder.arg(a);
            }
            builder.arg(&v[0]);
            builder.arg(&mut out);
            // SAFETY: `src` and `out` have the lengths the geometry implies (checked by the
            // callers' shapes); the kernel guards its thread index.
            unsafe { builder.launch(grid(threads)) }.w()?;
            Ok(tensor(dev, out, dst_len))
        })
    }
}

/// `conv2d` on CUDA: candle's forward (cuDNN with the `cudnn` feature), our backward.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, ConvCuda { stride, padding, y })
}

/// Carries the forward computed by candle so that autograd calls our backward.
struct ConvCuda {
    stride: usize,
    padding: usize,
    y: Tensor,
}

impl CustomOp2 for ConvCuda {
    fn name(&self) -> &'static str {
        "fer-conv2d-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // The CPU has its own conv op (cpu.rs).
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device.clone();
        let out = with_views(&[&self.y], |dev, v| {
            let mut out = output(dev, v[0].len())?;
            dev.cuda_stream().memcpy_dtod(&v[0], &mut out).w()?;
            Ok(out)
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            self.y.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, wd) = x.dims4()?;
        let (o, _, kh, kw) = w.dims4()?;
        let (_, _, ho, wo) = dy.dims4()?;
        let g = ConvGeom {
            b,
            c,
            h,
            w: wd,
            kh,
            kw,
            stride: self.stride,
            pad: self.padding,
            ho,
            wo,
        };
        let k = c * kh * kw;
        // dy as [B*Ho*Wo, O]: both gradients become single cuBLAS products.
        let dyt = dy
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b * ho * wo, o))?;
        // The stem's input is the image batch, which nothing upstream differentiates.
        let dx = if x.track_op() {
            let dcol = dyt.matmul(&w.reshape((o, k))?)?;
            let dx = g.launch("fer_col2im", &dcol, x.elem_count(), x.elem_count())?;
            Some(dx.reshape(x.shape())?)
        } else {
            None
        };
        let col = g
            .launch("fer_im2col", x, g.col_len(), g.col_len())?
            .reshape((b * ho * wo, k))?;
        let dw = dyt.t()?.matmul(&col)?.reshape(w.shape())?;
        Ok((dx, Some(dw)))
    }
}
