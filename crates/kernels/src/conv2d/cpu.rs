//! 2-D convolution on CPU as im2col + GEMM, forward and both gradients.
//!
//! candle's CPU conv backward runs direct loops far below the GEMM rate; here all three products
//! (forward, input gradient, weight gradient) are single GEMMs over a block of images whose
//! column matrices sit side by side, so even 3x3 maps of the deepest stage feed the kernel a
//! wide matrix. Intermediate matrices live in per-thread scratch buffers that are reused from
//! call to call: fresh allocations of this size cost page faults and zeroing on every step.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::direct::{self, lanes};
use crate::error::KernelError;
use crate::support::im2col::{col2im, im2col, scratch, Geom};
use crate::support::matmul::{gemm, Mat};
use crate::support::storage::{dims4, relu, slice, with_data};

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
        let y = forward(&g, slice(s1, l1)?, slice(s2, l2)?);
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
        // The stem's input is the image batch, which nothing upstream differentiates.
        let want_dx = x.track_op();
        let (dx, dw) = with_data(dy, |dy| {
            with_data(x, |x| {
                with_data(w, |w| Ok(backward(&g, x, dy, w, want_dx, None)))
            })
        })?;
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, x.shape(), &Device::Cpu))
            .transpose()?;
        let dw = Tensor::from_vec(dw, w.shape(), &Device::Cpu)?;
        Ok((dx, Some(dw)))
    }
}

/// Columns per GEMM worth aiming for: below this the kernel's packing overhead dominates; above
/// it, gathering several images side by side (and copying the result apart) costs more than it
/// saves (768 measured ~4% faster than 2048 on config (a)).
const TARGET_COLS: usize = 768;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TMP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How the batch is cut into blocks and how many threads each block's GEMM may use.
struct Plan {
    per_block: usize,
    blocks: usize,
    gemm_threads: usize,
}

fn plan(g: &Geom) -> Plan {
    plan_for(g, rayon::current_num_threads().max(1))
}

fn plan_for(g: &Geom, threads: usize) -> Plan {
    let per_block = block_size(g.b, g.n(), threads, TARGET_COLS);
    let blocks = g.b.div_ceil(per_block);
    let gemm_threads = if blocks < threads { threads } else { 1 };
    Plan {
        per_block,
        blocks,
        gemm_threads,
    }
}

/// Images per block for `images` images of `cols` columns each on `threads` threads, aiming at
/// `target` columns a block.
pub(crate) fn block_size(images: usize, cols: usize, threads: usize, target: usize) -> usize {
    let threads = threads.max(1);
    let by_width = target.div_ceil(cols.max(1));
    // Enough blocks to keep every thread busy when the batch allows it.
    let by_threads = images.div_ceil(threads);
    let widest = by_width.min(by_threads).max(1);
    // The threads take blocks in rounds, so a last round with fewer blocks than threads leaves
    // some idle: 64 images of 6x6 in blocks of 22 are three blocks, two rounds on two threads.
    // Of the block sizes down to half the widest, take the one that finishes soonest (images
    // per thread in whole rounds), the widest of those.
    let span = |per: usize| images.div_ceil(per).div_ceil(threads) * per;
    if threads == 1 {
        widest
    } else {
        (widest.div_ceil(2)..=widest)
            .rev()
            .min_by_key(|&per| span(per))
            .unwrap_or(widest)
    }
}

/// Runs `f(first_image, images, out_block, kept_block)` over the blocks, where `out` holds
/// `per_image` floats per image and `kept` (when given) `kept_per_image`; in parallel when there
/// are enough blocks, else one after the other with a parallel GEMM inside.
fn blocks_into(
    p: &Plan,
    out: &mut [f32],
    per_image: usize,
    kept: Option<(&mut [f32], usize)>,
    f: impl Fn(usize, usize, &mut [f32], Option<&mut [f32]>) + Sync,
) {
    if out.is_empty() || per_image == 0 {
        return;
    }
    let size = p.per_block * per_image;
    let run = |i: usize, chunk: &mut [f32], k: Option<&mut [f32]>| {
        f(i * p.per_block, chunk.len() / per_image, chunk, k)
    };
    let sequential = p.gemm_threads > 1;
    match kept {
        Some((buf, kept_per_image)) => {
            let ksize = p.per_block * kept_per_image;
            if sequential {
                let chunks = out.chunks_mut(size).zip(buf.chunks_mut(ksize));
                chunks
                    .enumerate()
                    .for_each(|(i, (c, k))| run(i, c, Some(k)));
            } else {
                let chunks = out.par_chunks_mut(size).zip(buf.par_chunks_mut(ksize));
                chunks
                    .enumerate()
                    .for_each(|(i, (c, k))| run(i, c, Some(k)));
            }
        }
        None if sequential => {
            let chunks = out.chunks_mut(size).enumerate();
            chunks.for_each(|(i, c)| run(i, c, None));
        }
        None => {
            let chunks = out.par_chunks_mut(size).enumerate();
            chunks.for_each(|(i, c)| run(i, c, None));
        }
    }
}

/// Largest column matrix (all images) the forward keeps for the weight gradient, in floats
/// (16 MiB): the deep stages' small maps, whose im2col costs most per float, fit; the large
/// maps of the first stages would cost hundreds of MiB and are rebuilt instead.
const KEEP_COLS: usize = 4 << 20;

/// Whether [`forward_keeping`] keeps this conv's column matrices.
fn keeps_columns(g: &Geom) -> bool {
    !g.is_pointwise() && g.k() * g.n() * g.b <= KEEP_COLS
}

/// Fills `col` (`[K, nb * N]`) with the column matrices of images `first..first + nb`.
fn columns(g: &Geom, x: &[f32], first: usize, nb: usize, col: &mut [f32]) {
    let (n, ld) = (g.n(), nb * g.n());
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

/// Copies between `[O, nb * N]` (images side by side, row stride `nb * N`) and `[nb, O, N]`.
fn side_to_images(g: &Geom, nb: usize, side: &[f32], images: &mut [f32]) {
    let (n, ld) = (g.n(), nb * g.n());
    for (j, img) in images.chunks_mut(g.o * n).take(nb).enumerate() {
        for (o, row) in img.chunks_mut(n).enumerate() {
            row.copy_from_slice(&side[o * ld + j * n..o * ld + (j + 1) * n]);
        }
    }
}

fn images_to_side(g: &Geom, nb: usize, images: &[f32], side: &mut [f32]) {
    let (n, ld) = (g.n(), nb * g.n());
    for (j, img) in images.chunks(g.o * n).take(nb).enumerate() {
        for (o, row) in img.chunks(n).enumerate() {
            side[o * ld + j * n..o * ld + (j + 1) * n].copy_from_slice(row);
        }
    }
}

/// `y [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, KH, KW])`: the direct kernels where they
/// apply, else im2col + GEMM.
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_then(g, x, w, None)
}

/// Eval-mode BatchNorm (+ ReLU) applied to a conv's output while each block of it is still in
/// cache: `v * scale[o] + shift[o]`, as `batch_norm::cpu::apply` computes it.
pub(crate) struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies to whole images `[n, O, positions]`.
    pub(crate) fn apply(&self, images: &mut [f32], positions: usize) {
        let o = self.scale.len();
        for (i, plane) in images.chunks_exact_mut(positions.max(1)).enumerate() {
            let (sc, sh) = (self.scale[i % o], self.shift[i % o]);
            if self.relu {
                plane.iter_mut().for_each(|v| *v = relu(*v * sc + sh));
            } else {
                plane.iter_mut().for_each(|v| *v = *v * sc + sh);
            }
        }
    }
}

/// [`forward`], then `epilogue` on each block of images as it is finished.
pub(crate) fn forward_then(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    epilogue: Option<&Epilogue>,
) -> Vec<f32> {
    if direct::applies(g) {
        return direct::forward(g, x, w, epilogue);
    }
    if lanes::applies(g) {
        return lanes::forward(g, x, w, epilogue);
    }
    let mut y = forward_into(g, x, w, None);
    // The GEMM blocks here can be whole batches on all threads: one parallel pass after.
    if let Some(e) = epilogue {
        y.par_chunks_mut(g.o * g.n())
            .for_each(|img| e.apply(img, g.n()));
    }
    y
}

/// [`forward`], also returning the column matrices when they are small enough to keep
/// ([`KEEP_COLS`]), for [`weight_grad`] to reuse instead of rebuilding them.
pub(crate) fn forward_keeping(g: &Geom, x: &[f32], w: &[f32]) -> (Vec<f32>, Option<Vec<f32>>) {
    if direct::applies(g) || lanes::applies_backward(g) || !keeps_columns(g) {
        return (forward(g, x, w), None);
    }
    let mut cols = crate::support::out::uninit(g.k() * g.n() * g.b);
    let y = forward_into(g, x, w, Some(&mut cols));
    (y, Some(cols))
}

fn forward_into(g: &Geom, x: &[f32], w: &[f32], keep: Option<&mut [f32]>) -> Vec<f32> {
    let (n, on) = (g.n(), g.o * g.n());
    let p = plan(g);
    let wm = Mat::row_major(w, g.o, g.k());
    let mut y = crate::support::out::uninit(g.b * on);
    let keep = keep.map(|buf| (buf, g.k() * n));
    blocks_into(&p, &mut y, on, keep, |first, nb, yb, kept| {
        let ld = nb * n;
        if g.is_pointwise() && nb == 1 {
            let img = &x[first * g.image_len()..(first + 1) * g.image_len()];
            gemm(yb, false, wm, Mat::row_major(img, g.c, n), p.gemm_threads);
            return;
        }
        let mut product = |col: &mut [f32]| {
            columns(g, x, first, nb, col);
            let cm = Mat::row_major(col, g.k(), ld);
            if nb == 1 {
                gemm(yb, false, wm, cm, p.gemm_threads);
            } else {
                scratch(&TMP, g.o * ld, |out| {
                    gemm(out, false, wm, cm, p.gemm_threads);
                    side_to_images(g, nb, out, yb);
                });
            }
        };
        match kept {
            Some(col) => product(col),
            None => scratch(&COLS, g.k() * ld, product),
        }
    });
    y
}

/// Runs `f` on `dy` of images `first..first + nb` as one `[O, nb * N]` matrix.
fn with_dy_block<R>(
    g: &Geom,
    dy: &[f32],
    first: usize,
    nb: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let on = g.o * g.n();
    let dy = &dy[first * on..(first + nb) * on];
    if nb == 1 {
        return f(dy);
    }
    scratch(&TMP, nb * on, |block| {
        images_to_side(g, nb, dy, block);
        f(block)
    })
}

/// The input gradient (when `want_dx`) and the weight gradient of [`forward`] from `dy`, with
/// the column matrices `kept` by [`forward_keeping`] when there are any.
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    want_dx: bool,
    kept: Option<&[f32]>,
) -> (Option<Vec<f32>>, Vec<f32>) {
    if direct::applies(g) {
        return direct::backward(g, x, dy, w, want_dx);
    }
    if lanes::applies_backward(g) {
        return lanes::backward(g, x, dy, w, want_dx);
    }
    let dx = want_dx.then(|| input_grad(g, dy, w));
    (dx, weight_grad(g, x, dy, kept))
}

/// `dx [B, C, H, W]` from `dy [B, O, Ho, Wo]`: `dcol = w^T dy`, then col2im.
pub(crate) fn input_grad(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (n, il) = (g.n(), g.image_len());
    let p = plan(g);
    let wt = Mat::row_major(w, g.o, g.k()).t();
    let mut dx = crate::support::out::uninit(g.b * il);
    blocks_into(&p, &mut dx, il, None, |first, nb, dxb, _| {
        let ld = nb * n;
        with_dy_block(g, dy, first, nb, |dyb| {
            let dym = Mat::row_major(dyb, g.o, ld);
            if g.is_pointwise() && nb == 1 {
                gemm(dxb, false, wt, dym, p.gemm_threads);
                return;
            }
            scratch(&COLS, g.k() * ld, |dcol| {
                gemm(dcol, false, wt, dym, p.gemm_threads);
                for j in 0..nb {
                    let img = &mut dxb[j * il..(j + 1) * il];
                    if g.is_pointwise() {
                        for c in 0..g.c {
                            img[c * n..(c + 1) * n]
                                .copy_from_slice(&dcol[c * ld + j * n..c * ld + (j + 1) * n]);
                        }
                    } else {
                        col2im(g, &dcol[j * n..], ld, img);
                    }
                }
            });
        });
    });
    dx
}

/// `dw [O, C, KH, KW]` from `x` and `dy`: the sum over images of `dy col^T`, with the column
/// matrices `kept` by [`forward_keeping`] when there are any.
pub(crate) fn weight_grad(g: &Geom, x: &[f32], dy: &[f32], kept: Option<&[f32]>) -> Vec<f32> {
    let n = g.n();
    let p = plan(g);
    let block = |i: usize| {
        let first = i * p.per_block;
        let nb = p.per_block.min(g.b - first);
        let ld = nb * n;
        let mut dw = crate::support::out::uninit(g.o * g.k());
        with_dy_block(g, dy, first, nb, |dyb| {
            let dym = Mat::row_major(dyb, g.o, ld);
            if g.is_pointwise() && nb == 1 {
                let img = &x[first * g.image_len()..(first + 1) * g.image_len()];
                gemm(
                    &mut dw,
                    false,
                    dym,
                    Mat::row_major(img, g.c, n).t(),
                    p.gemm_threads,
                );
                return;
            }
            let kn = g.k() * n;
            match kept {
                Some(all) => {
                    let cm = Mat::row_major(&all[first * kn..(first + nb) * kn], g.k(), ld).t();
                    gemm(&mut dw, false, dym, cm, p.gemm_threads);
                }
                None => scratch(&COLS, g.k() * ld, |col| {
                    columns(g, x, first, nb, col);
                    let cm = Mat::row_major(col, g.k(), ld).t();
                    gemm(&mut dw, false, dym, cm, p.gemm_threads);
                }),
            }
        });
        dw
    };
    let partials: Vec<Vec<f32>> = if p.gemm_threads > 1 {
        (0..p.blocks).map(block).collect()
    } else {
        (0..p.blocks).into_par_iter().map(block).collect()
    };
    sum_in_order(partials, g.o * g.k())
}

/// The element-wise sum of `parts` (each `len` floats), added in their order: a weight gradient
/// summed from per-block partials does not depend on which thread ran which block.
pub(crate) fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let Some(mut sum) = parts.next() else {
        return vec![0.0; len];
    };
    for part in parts {
        for (d, s) in sum.iter_mut().zip(&part) {
            *d += *s;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept column matrices give the same output and weight gradient as rebuilt ones, one block
    /// or several, and large convs keep none.
    #[test]
    fn kept_columns_match_rebuilt_ones() {
        let vals = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        for (x, w, s, p) in [
            ([1, 3, 7, 6], [4, 3, 3, 3], 1, 1),
            ([5, 2, 9, 9], [3, 2, 3, 3], 2, 1),
            ([32, 4, 4, 4], [6, 4, 3, 3], 1, 1),
        ] {
            let g = Geom::new(x, w, s, p).unwrap();
            let (xs, ws) = (vals(g.b * g.image_len(), 0.37), vals(g.o * g.k(), 0.11));
            let dy = vals(g.b * g.o * g.n(), 0.23);
            let (y, kept) = forward_keeping(&g, &xs, &ws);
            assert_eq!(y, forward(&g, &xs, &ws));
            let kept = kept.expect("small enough to keep");
            assert_eq!(
                weight_grad(&g, &xs, &dy, Some(&kept)),
                weight_grad(&g, &xs, &dy, None)
            );
        }
        let big = Geom::new([64, 64, 28, 28], [64, 64, 3, 3], 1, 1).unwrap();
        assert!(!keeps_columns(&big));
    }

    /// Blocks come in whole rounds of the threads where a narrower block allows it (the
    /// FER-2013 model's maps at 48 px, batch 64, two threads), and stay at full width where
    /// they already do or where there is one thread.
    #[test]
    fn blocks_fill_whole_rounds_of_threads() {
        let conv = |c: usize, size: usize| Geom::new([64, c, size, size], [c, c, 3, 3], 1, 1);
        let split = |g: Option<Geom>, threads: usize| {
            let p = plan_for(&g.unwrap(), threads);
            (p.per_block, p.blocks, p.gemm_threads)
        };
        // 6x6: 768 columns would be 22 images, three blocks, the third alone in a second round.
        assert_eq!(split(conv(128, 6), 2), (16, 4, 1));
        assert_eq!(split(conv(128, 6), 1), (22, 3, 1));
        // 12x12: 6 images make 11 blocks (6 rounds for 2 threads); 4 make 16 (8 rounds).
        assert_eq!(split(conv(64, 12), 2), (4, 16, 1));
        // 24x24 at 2 images and 3x3 at 32 images already split evenly.
        assert_eq!(split(conv(32, 24), 2), (2, 32, 1));
        assert_eq!(split(conv(256, 3), 2), (32, 2, 1));
        // Fewer images than threads: one block each, in turn, each GEMM on every thread.
        let small = Geom::new([3, 8, 6, 6], [8, 8, 3, 3], 1, 1);
        assert_eq!(split(small, 4), (1, 3, 4));
        // A single image gets the threads inside its GEMM.
        let one = Geom::new([1, 8, 6, 6], [8, 8, 3, 3], 1, 1);
        assert_eq!(split(one, 2), (1, 1, 2));
    }
}
