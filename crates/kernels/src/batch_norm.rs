//! Training-mode BatchNorm over `[B, C, H, W]` in two passes forward and two backward.
//!
//! candle's BatchNorm is a chain of generic ops (transpose, copy, mean, sub, sqr, mean, div,
//! mul, add, transpose) each a full pass over the activations, and autograd doubles them. Here
//! the statistics, the normalisation and the whole backward are written out per channel.

use rayon::prelude::*;

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

/// Per-channel mean and biased variance, accumulated in f64 (one pass, no cancellation trouble
/// at activation magnitudes).
pub(crate) fn stats(d: Dims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let m = d.m() as f64;
    let per: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..d.b {
                let (mut ps, mut ps2) = (0f32, 0f32);
                for &v in &x[d.plane(b, c)] {
                    ps += v;
                    ps2 += v * v;
                }
                s += ps as f64;
                s2 += ps2 as f64;
            }
            let mean = s / m;
            (mean as f32, (s2 / m - mean * mean).max(0.0) as f32)
        })
        .collect();
    per.into_iter().unzip()
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
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let mut y = vec![0f32; x.len()];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(d.c * d.s).enumerate().for_each(|(b, yb)| {
        for c in 0..d.c {
            let (sc, sh) = (scale[c], shift[c]);
            let xs = &x[d.plane(b, c)];
            for (o, &v) in yb[c * d.s..(c + 1) * d.s].iter_mut().zip(xs) {
                *o = (v * sc + sh).max(floor);
            }
        }
    });
    y
}

/// Gradients of the training-mode BatchNorm: `(dx, dgamma, dbeta)`. With `relu_out` (the
/// forward's output after a fused ReLU) the incoming gradient is first zeroed where it is zero.
///
/// With `xh = (x - mean) * invstd` and `M` values per channel:
/// `dbeta = sum dy`, `dgamma = sum dy * xh`,
/// `dx = gamma * invstd * (dy - dbeta / M - xh * dgamma / M)`.
pub(crate) fn backward(
    d: Dims,
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let sums: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for b in 0..d.b {
                let (mut a, mut e) = (0f32, 0f32);
                for (i, &v) in d.plane(b, c).zip(&x[d.plane(b, c)]) {
                    let g = grad(dy, relu_out, i);
                    a += g;
                    e += g * (v - mean[c]);
                }
                sdy += a as f64;
                sdyx += e as f64;
            }
            (sdy as f32, (sdyx * invstd[c] as f64) as f32)
        })
        .collect();
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    let m = d.m() as f32;
    let mut dx = vec![0f32; x.len()];
    if dx.is_empty() {
        return (dx, dgamma, dbeta);
    }
    dx.par_chunks_mut(d.c * d.s)
        .enumerate()
        .for_each(|(b, db)| {
            for c in 0..d.c {
                let k = gamma[c] * invstd[c];
                let mdb = dbeta[c] / m;
                let mdg = dgamma[c] / m * invstd[c];
                let out = db[c * d.s..(c + 1) * d.s].iter_mut();
                for ((o, &v), i) in out.zip(&x[d.plane(b, c)]).zip(d.plane(b, c)) {
                    *o = k * (grad(dy, relu_out, i) - mdb - (v - mean[c]) * mdg);
                }
            }
        });
    (dx, dgamma, dbeta)
}

/// The gradient reaching the normalisation at `i`: none where a fused ReLU cut the output.
#[inline(always)]
fn grad(dy: &[f32], relu_out: Option<&[f32]>, i: usize) -> f32 {
    match relu_out {
        Some(y) if y[i] <= 0.0 => 0.0,
        _ => dy[i],
    }
}
