//! 2-D convolution on CPU as im2col + GEMM, forward and both gradients.
//!
//! candle's CPU conv backward runs direct loops far below the GEMM rate; here all three products
//! (forward, input gradient, weight gradient) are single GEMMs over a block of images whose
//! column matrices sit side by side, so even 3x3 maps of the deepest stage feed the kernel a
//! wide matrix.

use rayon::prelude::*;

use crate::im2col::{col2im, im2col, Geom};
use crate::matmul::{gemm, Mat};

/// Columns per GEMM worth aiming for: below this the kernel's packing overhead dominates.
const TARGET_COLS: usize = 2048;

/// How the batch is cut into blocks and how many threads each block's GEMM may use.
struct Plan {
    per_block: usize,
    blocks: usize,
    gemm_threads: usize,
}

fn plan(g: &Geom) -> Plan {
    let threads = rayon::current_num_threads().max(1);
    let by_width = TARGET_COLS.div_ceil(g.n().max(1));
    // Enough blocks to keep every thread busy when the batch allows it.
    let by_threads = g.b.div_ceil(threads);
    let per_block = by_width.min(by_threads).max(1);
    let blocks = g.b.div_ceil(per_block);
    let gemm_threads = if blocks < threads { threads } else { 1 };
    Plan {
        per_block,
        blocks,
        gemm_threads,
    }
}

/// Runs `f(first_image, images)` for every block, in parallel when there are enough blocks.
fn for_blocks<R: Send>(g: &Geom, p: &Plan, f: impl Fn(usize, usize) -> R + Sync) -> Vec<R> {
    let run = |i: usize| {
        let first = i * p.per_block;
        f(first, p.per_block.min(g.b - first))
    };
    if p.gemm_threads > 1 {
        (0..p.blocks).map(run).collect()
    } else {
        (0..p.blocks).into_par_iter().map(run).collect()
    }
}

/// Fills `col` (`[K, nb * N]`) with the column matrices of images `first..first + nb`.
fn columns(g: &Geom, x: &[f32], first: usize, nb: usize, col: &mut Vec<f32>) {
    let (n, ld) = (g.n(), nb * g.n());
    col.resize(g.k() * ld, 0.0);
    for j in 0..nb {
        let img = &x[(first + j) * g.image_len()..(first + j + 1) * g.image_len()];
        if g.is_pointwise() {
            for c in 0..g.c {
                col[c * ld + j * n..c * ld + (j + 1) * n].copy_from_slice(&img[c * n..(c + 1) * n]);
            }
        } else {
            im2col(g, img, &mut col[j * n..], ld);
        }
    }
}

/// `y [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, KH, KW])`.
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (n, on) = (g.n(), g.o * g.n());
    let p = plan(g);
    let wm = Mat::row_major(w, g.o, g.k());
    let blocks = for_blocks(g, &p, |first, nb| {
        let ld = nb * n;
        let mut out = vec![0.0; g.o * ld];
        if g.is_pointwise() && nb == 1 {
            let img = &x[first * g.image_len()..(first + 1) * g.image_len()];
            gemm(
                &mut out,
                false,
                wm,
                Mat::row_major(img, g.c, n),
                p.gemm_threads,
            );
        } else {
            let mut col = Vec::new();
            columns(g, x, first, nb, &mut col);
            gemm(
                &mut out,
                false,
                wm,
                Mat::row_major(&col, g.k(), ld),
                p.gemm_threads,
            );
        }
        out
    });
    // Blocks hold `[O, nb * N]`; the output wants `[nb, O, N]`.
    let mut y = vec![0.0; g.b * on];
    for (bi, out) in blocks.iter().enumerate() {
        let first = bi * p.per_block;
        let nb = out.len() / on;
        for j in 0..nb {
            let dst = &mut y[(first + j) * on..(first + j + 1) * on];
            for o in 0..g.o {
                let src = &out[o * nb * n + j * n..o * nb * n + (j + 1) * n];
                dst[o * n..(o + 1) * n].copy_from_slice(src);
            }
        }
    }
    y
}

/// Gathers `dy` of images `first..first + nb` into `[O, nb * N]`.
fn gather_dy(g: &Geom, dy: &[f32], first: usize, nb: usize) -> Vec<f32> {
    let (n, on, ld) = (g.n(), g.o * g.n(), nb * g.n());
    let mut out = vec![0.0; g.o * ld];
    for j in 0..nb {
        let src = &dy[(first + j) * on..(first + j + 1) * on];
        for o in 0..g.o {
            out[o * ld + j * n..o * ld + (j + 1) * n].copy_from_slice(&src[o * n..(o + 1) * n]);
        }
    }
    out
}

/// `dx [B, C, H, W]` from `dy [B, O, Ho, Wo]`: `dcol = w^T dy`, then col2im.
pub(crate) fn input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (n, il) = (g.n(), g.image_len());
    let p = plan(g);
    let wt = Mat::row_major(w, g.o, g.k()).t();
    let blocks = for_blocks(g, &p, |first, nb| {
        let ld = nb * n;
        let dyb = gather_dy(g, dy, first, nb);
        let mut dcol = vec![0.0; g.k() * ld];
        gemm(
            &mut dcol,
            false,
            wt,
            Mat::row_major(&dyb, g.o, ld),
            p.gemm_threads,
        );
        let mut dx = vec![0.0; nb * il];
        for j in 0..nb {
            let img = &mut dx[j * il..(j + 1) * il];
            if g.is_pointwise() {
                for c in 0..g.c {
                    img[c * n..(c + 1) * n]
                        .copy_from_slice(&dcol[c * ld + j * n..c * ld + (j + 1) * n]);
                }
            } else {
                col2im(g, &dcol[j * n..], ld, img);
            }
        }
        dx
    });
    blocks.concat()
}

/// `dw [O, C, KH, KW]` from `x` and `dy`: the sum over images of `dy col^T`.
pub(crate) fn weight_grad(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let n = g.n();
    let p = plan(g);
    let partials = for_blocks(g, &p, |first, nb| {
        let ld = nb * n;
        let dyb = gather_dy(g, dy, first, nb);
        let mut col = Vec::new();
        columns(g, x, first, nb, &mut col);
        let mut dw = vec![0.0; g.o * g.k()];
        let colm = Mat::row_major(&col, g.k(), ld).t();
        gemm(
            &mut dw,
            false,
            Mat::row_major(&dyb, g.o, ld),
            colm,
            p.gemm_threads,
        );
        dw
    });
    let mut dw = vec![0.0; g.o * g.k()];
    for part in &partials {
        for (d, s) in dw.iter_mut().zip(part) {
            *d += *s;
        }
    }
    dw
}
