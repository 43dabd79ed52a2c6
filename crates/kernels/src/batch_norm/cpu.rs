//! The BatchNorm numerics: statistics, the affine step (+ ReLU) and the backward, per channel.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::support::storage::{slice, with_data};

/// `[B, C, S]` with `S = H * W`: channel `c` of image `b` is `x[(b * C + c) * S..][..S]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub c: usize,
    pub s: usize,
}

impl Dims {
    fn plane(&self, b: usize, c: usize) -> std::ops::Range<usize> {
        let start = (b * self.c + c) * self.s;
        start..start + self.s
    }

    /// Values per channel.
    pub(crate) fn m(&self) -> usize {
        self.b * self.s
    }
}

/// Per-channel mean and biased variance, accumulated in f64 across planes (one pass, no
/// cancellation trouble at activation magnitudes).
pub(crate) fn stats(d: Dims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let m = d.m() as f64;
    let per: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..d.b {
                let (ps, ps2) = lanes2(&x[d.plane(b, c)], |v| (v, v * v));
                s += ps as f64;
                s2 += ps2 as f64;
            }
            let mean = s / m;
            (mean as f32, (s2 / m - mean * mean).max(0.0) as f32)
        })
        .collect();
    per.into_iter().unzip()
}

/// Accumulator lanes: a plane is summed as `LANES` interleaved partial sums so the loop
/// vectorises (one running f32 sum is a serial chain of dependent adds).
const LANES: usize = 16;

/// `(sum f(v).0, sum f(v).1)` over `xs`, in `LANES` partial sums.
#[inline(always)]
fn lanes2(xs: &[f32], f: impl Fn(f32) -> (f32, f32)) -> (f32, f32) {
    lanes2_zip3(xs, xs, xs, |v, _, _| f(v))
}

/// The same over three equally long slices.
#[inline(always)]
fn lanes2_zip3(
    xs: &[f32],
    ys: &[f32],
    zs: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let (xc, yc, zc) = (
        xs.chunks_exact(LANES),
        ys.chunks_exact(LANES),
        zs.chunks_exact(LANES),
    );
    let tail = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .zip(zc.remainder());
    for ((xk, yk), zk) in xc.zip(yc).zip(zc) {
        for l in 0..LANES {
            let (p, q) = f(xk[l], yk[l], zk[l]);
            a[l] += p;
            b[l] += q;
        }
    }
    for (l, ((&x, &y), &z)) in tail.enumerate() {
        let (p, q) = f(x, y, z);
        a[l] += p;
        b[l] += q;
    }
    (a.iter().sum(), b.iter().sum())
}

/// `1 / sqrt(var + eps)` per channel, the square root taken in f64.
pub(crate) fn invstd(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|v| 1.0 / (*v as f64 + eps).sqrt() as f32)
        .collect()
}

/// Per-channel `scale` and `shift` such that `y = x * scale + shift`.
pub(crate) fn affine(
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(i, g)| i * g).collect();
    let shift = mean
        .iter()
        .zip(&scale)
        .zip(beta)
        .map(|((m, s), b)| b - m * s)
        .collect();
    (scale, shift)
}

/// `y = x * scale[c] + shift[c]` (then `max(y, 0)` with `relu`), parallel over images.
pub(crate) fn apply(d: Dims, x: &[f32], scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    let mut y = crate::support::out::uninit(x.len());
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(d.c * d.s).enumerate().for_each(|(b, yb)| {
        for c in 0..d.c {
            let (sc, sh) = (scale[c], shift[c]);
            let xs = &x[d.plane(b, c)];
            let out = yb[c * d.s..(c + 1) * d.s].iter_mut().zip(xs);
            if relu {
                out.for_each(|(o, &v)| *o = crate::support::storage::relu(v * sc + sh));
            } else {
                out.for_each(|(o, &v)| *o = v * sc + sh);
            }
        }
    });
    y
}

/// Gradients of BatchNorm: `(dx, dgamma, dbeta)`. With `relu_out` (the forward's output after
/// a fused ReLU) the incoming gradient is first zeroed where it is zero.
///
/// With `xh = (x - mean) * invstd` and `M` values per channel:
/// `dbeta = sum dy`, `dgamma = sum dy * xh`, and with the batch's own statistics
/// (`BATCH_STATS`, training mode) `dx = gamma * invstd * (dy - dbeta / M - xh * dgamma / M)`;
/// with fixed ones (eval mode, running averages) nothing flows through them:
/// `dx = gamma * invstd * dy`.
pub(crate) fn backward<const BATCH_STATS: bool>(
    d: Dims,
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match relu_out {
        Some(y) => backward_gated::<true, BATCH_STATS>(d, x, dy, y, mean, invstd, gamma),
        None => backward_gated::<false, BATCH_STATS>(d, x, dy, dy, mean, invstd, gamma),
    }
}

/// The gradient reaching the normalisation: none where a fused ReLU cut the output (`RELU`,
/// with `y` the forward's output).
#[inline(always)]
fn gate<const RELU: bool>(g: f32, y: f32) -> f32 {
    if RELU && y <= 0.0 {
        0.0
    } else {
        g
    }
}

fn backward_gated<const RELU: bool, const BATCH_STATS: bool>(
    d: Dims,
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let sums: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            let mc = mean[c];
            for b in 0..d.b {
                let r = d.plane(b, c);
                let (a, e) = lanes2_zip3(&dy[r.clone()], &y[r.clone()], &x[r], |g, y, v| {
                    let g = gate::<RELU>(g, y);
                    (g, g * (v - mc))
                });
                sdy += a as f64;
                sdyx += e as f64;
            }
            (sdy as f32, (sdyx * invstd[c] as f64) as f32)
        })
        .collect();
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    let m = d.m() as f32;
    let mut dx = crate::support::out::uninit(x.len());
    if dx.is_empty() {
        return (dx, dgamma, dbeta);
    }
    dx.par_chunks_mut(d.c * d.s)
        .enumerate()
        .for_each(|(b, db)| {
            for c in 0..d.c {
                let k = gamma[c] * invstd[c];
                let (mc, mut mdb) = (mean[c], dbeta[c] / m);
                let mut mdg = dgamma[c] / m * invstd[c];
                if !BATCH_STATS {
                    (mdb, mdg) = (0.0, 0.0);
                }
                let out = &mut db[c * d.s..(c + 1) * d.s];
                let r = d.plane(b, c);
                let ins = x[r.clone()].iter().zip(&dy[r.clone()]).zip(&y[r]);
                for (o, ((&v, &g), &y)) in out.iter_mut().zip(ins) {
                    *o = k * (gate::<RELU>(g, y) - mdb - (v - mc) * mdg);
                }
            }
        });
    (dx, dgamma, dbeta)
}

/// BatchNorm of `x [B, C, H, W]` with statistics computed beforehand: the batch's own (training
/// mode: the gradient flows through them) or fixed running averages (eval mode).
pub(crate) struct BatchNormOp {
    pub dims: Dims,
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
        let (scale, shift) = affine(&self.mean, &self.invstd, gamma, beta);
        let y = apply(self.dims, x, &scale, &shift, self.relu);
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
                            backward::<true>(d, x, dy, relu_out, mean, invstd, g)
                        } else {
                            backward::<false>(d, x, dy, relu_out, mean, invstd, g)
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
