//! Eval-mode BatchNorm (running statistics) with an optional ReLU, as one pass.
//!
//! With candle's ops this is a broadcast multiply, a broadcast add and a ReLU, three passes over
//! every activation of an inference step, each into a fresh tensor.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::batch_norm::{self, Dims};
use crate::error::KernelError;
use crate::fused::slice;
use crate::op::with_data;
use crate::runs_here;

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over `x [B, C, H, W]` with fixed per-channel
/// `mean` and `var` (the running averages), then a ReLU when `relu` (NaN passes through, as in
/// PyTorch). Differentiable in `x`, `gamma` and `beta`; the statistics are constants, as
/// PyTorch's buffers are. Only the CPU kernel is here: elsewhere, and with the kernels off, it
/// returns `None` and the caller uses its own ops.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[[1f32, -3.]], [[2., 4.]]]], &dev)?; // [1, 2, 1, 2]
/// let (g, b) = (Tensor::ones(2, DType::F32, &dev)?, Tensor::zeros(2, DType::F32, &dev)?);
/// let (mean, var) = (Tensor::new(&[1f32, 0.], &dev)?, Tensor::new(&[4f32, 1.], &dev)?);
/// let y = fer_kernels::batch_norm_eval(&x, &g, &b, &mean, &var, 0.0, true)?.unwrap();
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![0., 0., 2., 4.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Option<Tensor>> {
    if !runs_here(x, &[gamma, beta, mean, var]) {
        return Ok(None);
    }
    let (b, c, h, w) = x.dims4()?;
    if [gamma, beta, mean, var].iter().any(|t| t.dims() != [c]) {
        return Err(KernelError::EvalShapes {
            channels: c,
            gamma: gamma.dims().to_vec(),
            beta: beta.dims().to_vec(),
            mean: mean.dims().to_vec(),
            var: var.dims().to_vec(),
        }
        .into());
    }
    let mean: Vec<f32> = mean.to_vec1()?;
    let invstd = batch_norm::invstd(&var.to_vec1::<f32>()?, eps);
    let op = BatchNormEval {
        dims: Dims { b, c, s: h * w },
        mean,
        invstd,
        relu,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
        .map(Some)
}

struct BatchNormEval {
    dims: Dims,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
}

impl CustomOp3 for BatchNormEval {
    fn name(&self) -> &'static str {
        "fer-batch-norm-eval"
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
        beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = with_data(x, |x| {
            with_data(dy, |dy| {
                with_data(gamma, |g| {
                    with_data(res, |y| {
                        let relu_out = self.relu.then_some(y);
                        let (d, mean, invstd) = (self.dims, &self.mean, &self.invstd);
                        Ok(batch_norm::backward_fixed(
                            d, x, dy, relu_out, mean, invstd, g,
                        ))
                    })
                })
            })
        })?;
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), dev)?),
            Some(Tensor::from_vec(dbeta, beta.shape(), dev)?),
        ))
    }
}
