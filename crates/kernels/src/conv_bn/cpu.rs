//! The fused CPU op: conv (im2col + GEMM), BatchNorm, ReLU and max-pool forward; their
//! backward in one pass chain, the conv output and (when small) its column matrices kept.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::batch_norm::cpu::{self as batch_norm, Dims};
use crate::conv2d::cpu as conv;
use crate::max_pool::cpu as pool;
use crate::support::im2col::Geom;
use crate::support::storage::{slice, with_data};

/// What the forward keeps for the backward: the conv output and its normalisation.
pub(crate) struct Saved {
    y: Vec<f32>,
    pub(crate) mean: Vec<f32>,
    invstd: Vec<f32>,
    /// The conv's column matrices, when small enough to keep (see `conv::forward_keeping`).
    cols: Option<Vec<f32>>,
    /// The BatchNorm output before the max-pool (pooled ops only): the pool's backward and the
    /// ReLU mask read it.
    z: Option<Vec<f32>>,
}

pub(super) struct ConvBnTrain {
    pub g: Geom,
    pub eps: f64,
    pub relu: bool,
    /// A 3x3 stride-2 max-pool after the ReLU.
    pub pool: bool,
    pub saved: OnceLock<Saved>,
    /// The batch mean and biased variance, for the caller's running averages.
    pub stats: Arc<OnceLock<(Vec<f32>, Vec<f32>)>>,
}

impl ConvBnTrain {
    /// The whole forward: what the backward keeps, the batch variance and the op's output.
    fn run(&self, x: &[f32], w: &[f32], gb: &[f32]) -> (Saved, Vec<f32>, Vec<f32>) {
        let (gamma, beta) = gb.split_at(self.g.o);
        let (mut saved, var, z) = train_forward(&self.g, self.eps, self.relu, x, w, gamma, beta);
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

/// Conv, training BatchNorm (and ReLU): what the backward keeps, the batch variance and the
/// normalised output.
pub(crate) fn train_forward(
    g: &Geom,
    eps: f64,
    relu: bool,
    x: &[f32],
    w: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Saved, Vec<f32>, Vec<f32>) {
    let (y, cols) = conv::forward_keeping(g, x, w);
    let d = dims(g);
    let (mean, var) = batch_norm::stats(d, &y);
    let invstd = batch_norm::invstd(&var, eps);
    let (scale, shift) = batch_norm::affine(&mean, &invstd, gamma, beta);
    let z = batch_norm::apply(d, &y, &scale, &shift, relu);
    let saved = Saved {
        y,
        mean,
        invstd,
        cols,
        z: None,
    };
    (saved, var, z)
}

/// The gradients `(dx, dw, dgamma, dbeta)` of [`train_forward`] from the gradient `dz` of its
/// output (`relu_out`: that output, when a ReLU was fused); `dx` when `want_dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_backward(
    g: &Geom,
    saved: &Saved,
    x: &[f32],
    w: &[f32],
    gamma: &[f32],
    dz: &[f32],
    relu_out: Option<&[f32]>,
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, invstd) = (&saved.mean, &saved.invstd);
    let (dy, dgamma, dbeta) =
        batch_norm::backward::<true>(dims(g), &saved.y, dz, relu_out, mean, invstd, gamma);
    let (dx, dw) = conv::backward(g, x, &dy, w, want_dx, saved.cols.as_deref());
    (dx, dw, dgamma, dbeta)
}

/// The BatchNorm dimensions of a conv's output.
pub(crate) fn dims(g: &Geom) -> Dims {
    Dims {
        b: g.b,
        c: g.o,
        s: g.n(),
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
        grads(x, w, gb, res, dres, |x, w, gb, res, dres, track_x| {
            let recomputed;
            let saved = match self.saved.get() {
                Some(s) => s,
                None => {
                    recomputed = self.run(x, w, gb).0;
                    &recomputed
                }
            };
            let (dz, z) = match &saved.z {
                Some(z) => {
                    let dz = pool::backward(g.b * g.o, g.ho, g.wo, z, dres);
                    (Cow::Owned(dz), z.as_slice())
                }
                None => (Cow::Borrowed(dres), res),
            };
            let relu_out = self.relu.then_some(z);
            let gamma = &gb[..g.o];
            train_backward(&g, saved, x, w, gamma, &dz, relu_out, track_x)
        })
    }
}

/// The data of a conv + BatchNorm op's inputs `(x, w, [gamma; beta])`, its output and output
/// gradient, and whether `x` wants a gradient, handed to `f`, whose `(dx, dw, dgamma, dbeta)`
/// come back as the op's three input gradients.
pub(crate) fn grads(
    x: &Tensor,
    w: &Tensor,
    gb: &Tensor,
    res: &Tensor,
    dres: &Tensor,
    f: impl FnOnce(
        &[f32],
        &[f32],
        &[f32],
        &[f32],
        &[f32],
        bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Vec<f32>),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    // The stem's input is the image batch, which nothing upstream differentiates.
    let track_x = x.track_op();
    let (dx, dw, dgb) = with_data(x, |xs| {
        with_data(w, |ws| {
            with_data(gb, |gbs| {
                with_data(res, |rs| {
                    with_data(dres, |ds| {
                        let (dx, dw, dgamma, dbeta) = f(xs, ws, gbs, rs, ds, track_x);
                        Ok((dx, dw, [dgamma, dbeta].concat()))
                    })
                })
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
