//! The CUDA twins of the fused ops: launches of `cuda/fer_kernels.cu` (PTX compiled by
//! build.rs, JIT-compiled by the driver when first used) and the conv gradients as
//! im2col/col2im kernels around cuBLAS products.
//!
//! On CUDA candle's conv input gradient is a naive direct kernel, and the attention pooling and
//! recurrent cells would be a dozen element-wise launches each; the ops here keep the model code
//! the same on both devices (same public functions, same autograd).

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor,
};

use crate::error::KernelError;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fer_kernels.ptx"));
const MODULE: &str = "fer_kernels";
const THREADS: u32 = 256;

/// The kernel `name` of our module (loaded on first use, then cached by the device).
macro_rules! kernel {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func($name, MODULE, PTX)?
    };
}

/// One thread per element, `THREADS` per block.
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A fresh output of `n` floats for a kernel that writes every element (NaN when poisoning).
fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: uninitialised device memory is only handed to kernels that write all of it
    // (poisoning in the checks catches one that does not).
    let mut out = unsafe { dev.alloc::<f32>(n.max(1))? };
    if crate::out::poisoned() {
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
fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| KernelError::Storage("a non-contiguous layout".into()))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// Runs `f` on the device and data of CUDA tensors (each made contiguous first).
fn with_views<R>(
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
fn tensor(dev: &CudaDevice, s: CudaSlice<f32>, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Launches an element-wise cell kernel `name(int b, int h, inputs.., outputs..)` over `b * h`
/// threads; returns the outputs, of `out_lens` floats each.
fn cell(
    dev: &CudaDevice,
    name: &str,
    (b, h): (usize, usize),
    inputs: &[CudaView<'_, f32>],
    out_lens: &[usize],
) -> Result<Vec<CudaSlice<f32>>> {
    let mut outs = out_lens
        .iter()
        .map(|&n| output(dev, n))
        .collect::<Result<Vec<_>>>()?;
    let f = kernel!(dev, name);
    let (bi, hi) = (b as i32, h as i32);
    let mut builder = f.builder();
    builder.arg(&bi);
    builder.arg(&hi);
    for v in inputs {
        builder.arg(v);
    }
    for o in outs.iter_mut() {
        builder.arg(o);
    }
    // SAFETY: the kernel reads `b * h` rows of the sizes the callers checked and writes the
    // outputs, allocated at the sizes the kernel indexes.
    unsafe { builder.launch(grid(b * h)) }.w()?;
    Ok(outs)
}

/// A cell's forward on CUDA, from the op's three storages to one output of `shape`.
pub(crate) fn cell_forward(
    name: &str,
    bh: (usize, usize),
    ins: [(&CudaStorage, &Layout); 3],
    shape: impl Into<Shape>,
) -> Result<(CudaStorage, Shape)> {
    let shape = shape.into();
    let dev = &ins[0].0.device;
    let views = ins
        .iter()
        .map(|(s, l)| view(s, l))
        .collect::<Result<Vec<_>>>()?;
    let out = cell(dev, name, bh, &views, &[shape.elem_count()])?;
    let out = out.into_iter().next().expect("one output asked for");
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// A cell's backward on CUDA: inputs as tensors, outputs as tensors of the given shapes.
pub(crate) fn cell_backward(
    name: &str,
    bh: (usize, usize),
    inputs: &[&Tensor],
    shapes: &[&Shape],
) -> Result<Vec<Tensor>> {
    with_views(inputs, |dev, views| {
        let lens: Vec<usize> = shapes.iter().map(|s| s.elem_count()).collect();
        let outs = cell(dev, name, bh, views, &lens)?;
        Ok(outs
            .into_iter()
            .zip(shapes)
            .map(|(o, s)| tensor(dev, o, (*s).clone()))
            .collect())
    })
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
        // The CPU runs the fused op with its own GEMM (attention.rs).
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

/// The CPU side of an op that only exists on CUDA: never called (the public functions pick the
/// CPU ops there), an error rather than a panic if it were.
fn cuda_only(op: &str) -> Result<(CpuStorage, Shape)> {
    Err(KernelError::Storage(format!("{op} runs on CUDA only")).into())
}

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
        // The CPU has its own conv op (op.rs).
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
