//! The candle face of the kernels: custom ops whose backward calls the gradient kernels.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor,
};

use crate::error::KernelError;
use crate::fused::slice;
use crate::im2col::Geom;
use crate::{batch_norm, conv, pool};

/// Borrows a contiguous f32 CPU tensor's data.
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout)?),
        other => Err(KernelError::Storage(format!("{:?}", other.device().location())).into()),
    }
}

fn dims4(shape: &Shape, op: &'static str, what: &'static str) -> Result<[usize; 4]> {
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

pub(crate) fn geom(x: &Shape, w: &Shape, stride: usize, padding: usize) -> Result<Geom> {
    let (xd, wd) = (dims4(x, "conv2d", "input")?, dims4(w, "conv2d", "weight")?);
    Geom::new(xd, wd, stride, padding).ok_or_else(|| {
        KernelError::ConvShapes {
            input: xd,
            weight: wd,
            stride,
            padding,
        }
        .into()
    })
}

/// `conv2d(x, w)` with the given stride and zero padding (no bias, dilation or groups).
pub(crate) struct Conv2d {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "fer-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geom(l1.shape(), l2.shape(), self.stride, self.padding)?;
        let y = conv::forward(&g, slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = geom(x.shape(), w.shape(), self.stride, self.padding)?;
        let (dx, dw) = with_data(dy, |dy| {
            // The stem's input is the image batch, which nothing upstream differentiates.
            let dx = if x.track_op() {
                Some(with_data(w, |w| Ok(conv::input_grad(&g, dy, w)))?)
            } else {
                None
            };
            let dw = with_data(x, |x| Ok(conv::weight_grad(&g, x, dy, None)))?;
            Ok((dx, dw))
        })?;
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, x.shape(), &Device::Cpu))
            .transpose()?;
        let dw = Tensor::from_vec(dw, w.shape(), &Device::Cpu)?;
        Ok((dx, Some(dw)))
    }
}

/// BatchNorm of `x [B, C, H, W]` with statistics computed beforehand: the batch's own (training
/// mode: the gradient flows through them) or fixed running averages (eval mode).
pub(crate) struct BatchNormOp {
    pub dims: crate::batch_norm::Dims,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    /// A ReLU fused after the affine step.
    pub relu: bool,
    /// Whether `mean` and `invstd` are the batch's own statistics.
    pub batch_stats: bool,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        if self.batch_stats {
            "fer-batch-norm-train"
        } else {
            "fer-batch-norm-eval"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (scale, shift) = batch_norm::affine(&self.mean, &self.invstd, gamma, beta);
        let y = batch_norm::apply(self.dims, x, &scale, &shift, self.relu);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = with_data(dy, |dy| {
            with_data(x, |x| {
                with_data(gamma, |g| {
                    with_data(res, |y| {
                        let relu_out = self.relu.then_some(y);
                        let (mean, invstd) = (&self.mean, &self.invstd);
                        let d = self.dims;
                        Ok(if self.batch_stats {
                            batch_norm::backward::<true>(d, x, dy, relu_out, mean, invstd, g)
                        } else {
                            batch_norm::backward::<false>(d, x, dy, relu_out, mean, invstd, g)
                        })
                    })
                })
            })
        })?;
        let c = self.dims.c;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dgamma, c, &Device::Cpu)?),
            Some(Tensor::from_vec(dbeta, c, &Device::Cpu)?),
        ))
    }
}

/// The stem's 3x3 stride-2 padding-1 max-pool of `[B, C, H, W]`.
pub(crate) struct MaxPool3x3S2;

fn pool_dims(shape: &Shape) -> Result<(usize, usize, usize)> {
    let [b, c, h, w] = dims4(shape, "max-pool", "input")?;
    if h == 0 || w == 0 {
        return Err(KernelError::EmptyMap { h, w }.into());
    }
    Ok((b * c, h, w))
}

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "fer-max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w) = pool_dims(l.shape())?;
        let y = pool::forward(planes, h, w, slice(s, l)?);
        let d = l.shape().dims();
        let shape = Shape::from((d[0], d[1], pool::out_len(h), pool::out_len(w)));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (planes, h, w) = pool_dims(x.shape())?;
        let dx = with_data(x, |x| {
            with_data(dy, |dy| Ok(pool::backward(planes, h, w, x, dy)))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}
