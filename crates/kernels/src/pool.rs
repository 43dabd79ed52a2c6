//! The ResNet stem's 3x3 stride-2 max-pool (padding 1, padded cells never win) over
//! `[B, C, H, W]`, and its backward, which routes each output's gradient to its window's
//! first maximum in row-major order (PyTorch's choice among ties).

use rayon::prelude::*;

pub(crate) fn out_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// The window of output `o` along one axis: `2o - 1 ..= 2o + 1`, clipped.
fn window(o: usize, n: usize) -> std::ops::Range<usize> {
    (2 * o).saturating_sub(1)..(2 * o + 2).min(n)
}

/// Index (within the plane) of the first maximum of output `(oy, ox)`'s window.
fn argmax(
    plane: &[f32],
    w: usize,
    ry: std::ops::Range<usize>,
    rx: std::ops::Range<usize>,
) -> usize {
    let mut best = ry.start * w + rx.start;
    for y in ry {
        for x in rx.clone() {
            // NaN wins, as in PyTorch, so it propagates rather than vanishing.
            let v = plane[y * w + x];
            if v > plane[best] || (v.is_nan() && !plane[best].is_nan()) {
                best = y * w + x;
            }
        }
    }
    best
}

pub(crate) fn forward(planes: usize, h: usize, w: usize, x: &[f32]) -> Vec<f32> {
    let (ho, wo) = (out_len(h), out_len(w));
    let mut y = vec![0f32; planes * ho * wo];
    y.par_chunks_mut(ho * wo).enumerate().for_each(|(p, out)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                out[oy * wo + ox] = plane[argmax(plane, w, window(oy, h), window(ox, w))];
            }
        }
    });
    y
}

pub(crate) fn backward(planes: usize, h: usize, w: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ho, wo) = (out_len(h), out_len(w));
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, d)| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        let g = &dy[p * ho * wo..(p + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                d[argmax(plane, w, window(oy, h), window(ox, w))] += g[oy * wo + ox];
            }
        }
    });
    dx
}
