//! A ResNet unit in training mode as one op: conv2d, BatchNorm with the batch's statistics, and
//! optionally a ReLU.
//!
//! As two ops (`conv2d` then `batch_norm_train`) the conv output is a graph node of its own, and
//! candle's backward adds its gradient into a fresh zero tensor before the conv's backward reads
//! it: a memset and an add over the largest activations, for every conv of the network. Fused,
//! the BatchNorm backward's input gradient goes straight into the conv backward. The conv output
//! is kept inside the op for the backward, as the graph kept it before.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::batch_norm::{self, Dims};
use crate::error::KernelError;
use crate::fused::slice;
use crate::im2col::Geom;
use crate::op::{geom, with_data};
use crate::{conv, conv2d, pool, runs_here, BatchStats};

/// `batch_norm_train(conv2d(x, w, stride, padding), gamma, beta, eps, relu)`: the same values,
/// statistics and gradients (in `x`, `w`, `gamma` and `beta`), as one op on the CPU in f32
/// (kernels on); elsewhere exactly that composition.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let dev = Device::Cpu;
/// let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev)?)?;
/// let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev)?)?;
/// let (g, b) = (Tensor::ones(4, candle_core::DType::F32, &dev)?, Tensor::zeros(4, candle_core::DType::F32, &dev)?);
/// let (y, stats) = fer_kernels::conv_bn_train(&x, &w, 1, 1, &g, &b, 1e-5, true)?;
/// assert_eq!(y.dims(), &[2, 4, 6, 6]);
/// assert_eq!(stats.mean.dims(), &[4]);
/// let grads = y.sum_all()?.backward()?;
/// assert_eq!(grads.get(&w).unwrap().dims(), &[4, 3, 3, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    if !(runs_here(x, &[w, gamma, beta]) && w.rank() == 4) {
        let y = conv2d(x, w, stride, padding)?;
        return crate::batch_norm_train(&y, gamma, beta, eps, relu);
    }
    fused(x, w, stride, padding, gamma, beta, eps, relu, false)
}

/// The ImageNet stem in training mode: [`conv_bn_train`] with the ReLU, then
/// [`crate::max_pool_3x3_s2`], as one op (the BatchNorm output, the largest map of the network,
/// is then no graph node of its own). Like the max-pool, only the CPU kernel is here: elsewhere
/// it returns `None` and the caller composes its own.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_relu_pool_train(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, BatchStats)>> {
    if !(runs_here(x, &[w, gamma, beta]) && w.rank() == 4) {
        return Ok(None);
    }
    fused(x, w, stride, padding, gamma, beta, eps, true, true).map(Some)
}

#[allow(clippy::too_many_arguments)]
fn fused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: bool,
) -> Result<(Tensor, BatchStats)> {
    let g = geom(x.shape(), w.shape(), stride, padding)?;
    if gamma.dims() != [g.o] || beta.dims() != [g.o] {
        return Err(KernelError::Affine {
            channels: g.o,
            gamma: gamma.dims().to_vec(),
            beta: beta.dims().to_vec(),
        }
        .into());
    }
    // Scale and shift travel as one `[2, C]` input (a CustomOp takes three).
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let stats = Arc::new(OnceLock::new());
    let op = ConvBnTrain {
        g,
        eps,
        relu,
        pool,
        saved: OnceLock::new(),
        stats: Arc::clone(&stats),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
    let (mean, var): &(Vec<f32>, Vec<f32>) = stats
        .get()
        .ok_or_else(|| KernelError::Storage("conv_bn_train ran without statistics".into()))?;
    let stats = BatchStats {
        mean: Tensor::from_slice(mean, g.o, x.device())?,
        var: Tensor::from_slice(var, g.o, x.device())?,
        count: g.b * g.n(),
    };
    Ok((y, stats))
}

/// What the forward keeps for the backward: the conv output and its normalisation.
struct Saved {
    y: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    /// The conv's column matrices, when small enough to keep (see `conv::forward_keeping`).
    cols: Option<Vec<f32>>,
    /// The BatchNorm output before the max-pool (pooled ops only): the pool's backward and the
    /// ReLU mask read it.
    z: Option<Vec<f32>>,
}

struct ConvBnTrain {
    g: Geom,
    eps: f64,
    relu: bool,
    /// A 3x3 stride-2 max-pool after the ReLU.
    pool: bool,
    saved: OnceLock<Saved>,
    /// The batch mean and biased variance, for the caller's running averages.
    stats: Arc<OnceLock<(Vec<f32>, Vec<f32>)>>,
}

impl ConvBnTrain {
    fn dims(&self) -> Dims {
        Dims {
            b: self.g.b,
            c: self.g.o,
            s: self.g.n(),
        }
    }

    /// The whole forward: what the backward keeps, the batch variance and the op's output.
    fn run(&self, x: &[f32], w: &[f32], gb: &[f32]) -> (Saved, Vec<f32>, Vec<f32>) {
        let (y, cols) = conv::forward_keeping(&self.g, x, w);
        let (mean, var) = batch_norm::stats(self.dims(), &y);
        let invstd = batch_norm::invstd(&var, self.eps);
        let (gamma, beta) = gb.split_at(self.g.o);
        let (scale, shift) = batch_norm::affine(&mean, &invstd, gamma, beta);
        let z = batch_norm::apply(self.dims(), &y, &scale, &shift, self.relu);
        let mut saved = Saved {
            y,
            mean,
            invstd,
            cols,
            z: None,
        };
        let out = if self.pool {
            let g = &self.g;
            let pooled = pool::forward(g.b * g.o, g.ho, g.wo, &z);
            saved.z = Some(z);
            pooled
        } else {
            z
        };
        (saved, var, out)
    }
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "fer-conv-bn-train"
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
        let (x, w, gb) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (saved, var, out) = self.run(x, w, gb);
        let _ = self.stats.set((saved.mean.clone(), var));
        let _ = self.saved.set(saved);
        let g = &self.g;
        let (h, w) = if self.pool {
            (pool::out_len(g.ho), pool::out_len(g.wo))
        } else {
            (g.ho, g.wo)
        };
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.o, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        // The stem's input is the image batch, which nothing upstream differentiates.
        let track_x = x.track_op();
        let (dx, dw, dgb) = with_data(x, |x| {
            with_data(w, |w| {
                with_data(gb, |gb| {
                    let recomputed;
                    let saved = match self.saved.get() {
                        Some(s) => s,
                        None => {
                            recomputed = self.run(x, w, gb).0;
                            &recomputed
                        }
                    };
                    let (dy, dgamma, dbeta) = with_data(res, |res| {
                        with_data(dres, |dres| {
                            let d = self.dims();
                            let (dz, z) = match &saved.z {
                                Some(z) => {
                                    let dz = pool::backward(d.b * d.c, g.ho, g.wo, z, dres);
                                    (Cow::Owned(dz), z.as_slice())
                                }
                                None => (Cow::Borrowed(dres), res),
                            };
                            let relu_out = self.relu.then_some(z);
                            let (mean, invstd) = (&saved.mean, &saved.invstd);
                            let gamma = &gb[..g.o];
                            Ok(batch_norm::backward::<true>(
                                d, &saved.y, &dz, relu_out, mean, invstd, gamma,
                            ))
                        })
                    })?;
                    let dx = track_x.then(|| conv::input_grad(&g, &dy, w));
                    let dw = conv::weight_grad(&g, x, &dy, saved.cols.as_deref());
                    Ok((dx, dw, [dgamma, dbeta].concat()))
                })
            })
        })?;
        let dev = &Device::Cpu;
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, x.shape(), dev))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(dgb, gb.shape(), dev)?),
        ))
    }
}
