//! The max-pool on the CPU (padded cells never win) and its backward, which routes each
//! output's gradient to its window's first maximum in row-major order (PyTorch's choice among
//! ties).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::error::KernelError;
use crate::support::storage::{dims4, slice, with_data};

pub(crate) fn out_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// The window of output `o` along one axis: `2o - 1 ..= 2o + 1`, clipped.
fn window(o: usize, n: usize) -> std::ops::Range<usize> {
    (2 * o).saturating_sub(1)..(2 * o + 2).min(n)
}

/// Whether `v` displaces the best so far `b` in a row-major scan: strictly greater, or NaN
/// over a number (NaN wins, as in PyTorch, so it propagates rather than vanishing).
#[inline(always)]
fn better(v: f32, b: f32) -> bool {
    v > b || (v.is_nan() && !b.is_nan())
}

/// `(v, i)` if `v` displaces `b` (see [`better`]), else `(b, j)`; written as selects so that
/// the loops below have no data-dependent branches (random maxima mispredict half the time).
#[inline(always)]
fn pick(v: f32, i: u32, b: f32, j: u32) -> (f32, u32) {
    let t = (v > b) | (v.is_nan() & !b.is_nan());
    (if t { v } else { b }, if t { i } else { j })
}

/// Calls `f(output, input)` for every output of one `h x w` plane, with `input` the index in
/// the plane of the output window's first maximum.
///
/// Windows are scanned row by row: the best of each window row, then the rows in order, an
/// earlier one winning ties; the same first maximum as a row-major scan of the window, since
/// `better` is a strict preference. Whole windows (all but the first and last columns) go
/// through branch-free loops over the row's even and odd columns; `scratch` holds those.
#[inline(always)]
fn for_each_argmax(
    plane: &[f32],
    h: usize,
    w: usize,
    scratch: &mut Rows,
    mut f: impl FnMut(usize, usize),
) {
    let (ho, wo) = (out_len(h), out_len(w));
    // Outputs 1..whole have windows 2o-1..=2o+1 inside the row.
    let whole = if w >= 2 { (w - 2) / 2 + 1 } else { 1 }.clamp(1, wo);
    let clipped = |oy: usize, ox: usize| {
        let mut best = usize::MAX;
        for y in window(oy, h) {
            for x in window(ox, w) {
                let i = y * w + x;
                if best == usize::MAX || better(plane[i], plane[best]) {
                    best = i;
                }
            }
        }
        best
    };
    scratch.resize(wo);
    let Rows {
        even,
        odd,
        best_v,
        best_i,
    } = scratch;
    for oy in 0..ho {
        f(oy * wo, clipped(oy, 0));
        for (k, y) in window(oy, h).enumerate() {
            let row = &plane[y * w..(y + 1) * w];
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            let base = (y * w) as u32;
            // Output ox reads columns 2ox-1, 2ox, 2ox+1: odd[ox-1], even[ox], odd[ox].
            let cols = odd[..whole - 1]
                .iter()
                .zip(&even[1..whole])
                .zip(&odd[1..whole])
                .zip(best_v[1..whole].iter_mut().zip(&mut best_i[1..whole]));
            for (ox, (((&a, &b), &c), (bv, bi))) in cols.enumerate() {
                let x = base + 2 * ox as u32 + 1; // column 2(ox+1) - 1
                let (v, i) = pick(b, x + 1, a, x);
                let (v, i) = pick(c, x + 2, v, i);
                (*bv, *bi) = if k == 0 { (v, i) } else { pick(v, i, *bv, *bi) };
            }
        }
        for (ox, &i) in best_i.iter().enumerate().take(whole).skip(1) {
            f(oy * wo + ox, i as usize);
        }
        for ox in whole..wo {
            f(oy * wo + ox, clipped(oy, ox));
        }
    }
}

/// Per-thread row buffers of [`for_each_argmax`].
#[derive(Default)]
struct Rows {
    even: Vec<f32>,
    odd: Vec<f32>,
    best_v: Vec<f32>,
    best_i: Vec<u32>,
}

impl Rows {
    fn resize(&mut self, wo: usize) {
        self.even.resize(wo, 0.0);
        self.odd.resize(wo, 0.0);
        self.best_v.resize(wo, 0.0);
        self.best_i.resize(wo, 0);
    }
}

pub(crate) fn forward(planes: usize, h: usize, w: usize, x: &[f32]) -> Vec<f32> {
    let (ho, wo) = (out_len(h), out_len(w));
    let mut y = vec![0f32; planes * ho * wo];
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each_init(Rows::default, |rows, (p, out)| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            for_each_argmax(plane, h, w, rows, |o, i| out[o] = plane[i]);
        });
    y
}

pub(crate) fn backward(planes: usize, h: usize, w: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ho, wo) = (out_len(h), out_len(w));
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each_init(Rows::default, |rows, (p, d)| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            let g = &dy[p * ho * wo..(p + 1) * ho * wo];
            for_each_argmax(plane, h, w, rows, |o, i| d[i] += g[o]);
        });
    dx
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
        let y = forward(planes, h, w, slice(s, l)?);
        let d = l.shape().dims();
        let shape = Shape::from((d[0], d[1], out_len(h), out_len(w)));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (planes, h, w) = pool_dims(x.shape())?;
        let dx = with_data(x, |x| with_data(dy, |dy| Ok(backward(planes, h, w, x, dy))))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}
