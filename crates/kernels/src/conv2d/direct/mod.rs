//! 3x3 convs with padding 1 (stride 1, or 2 on even maps), computed straight from zero-padded
//! planes.
//!
//! im2col + GEMM writes every input value nine times into a column matrix, which the GEMM then
//! copies again into its packed panels; on 12-24 px maps those copies cost about half of what
//! the GEMM itself does. Here each channel of a block of images is copied once, into one tall
//! zero-padded plane of row stride `wp = W + 1` (see [`Tall`]), and outputs are computed at
//! padded positions: tap `(ki, kj)` of position `q` is `plane[q + ki * wp + kj]`, so a vector
//! of sixteen positions is one unaligned load from the plane. The padding positions are computed
//! and dropped: 8.5 % more work at 24 px, 17 % at 12, 36 % at 6.
//!
//! The input gradient is the same conv of the padded output gradient with the kernels flipped
//! and transposed; the weight gradient is dot products of output-gradient rows with shifted
//! windows of the input planes. The padded output gradient serves both: read from one row and
//! one column in, it is the output gradient at every position, zero at the dropped ones.
//!
//! A stride-2 conv reads its input as four phase planes per channel (`x[2y + p, 2x + q]`, see
//! [`phase_tap`]): each tap lands in one phase, one row or column up or none, so the forward is
//! a stride-1 conv over those planes with the same nine taps a channel; the input gradient is
//! one such conv per phase, with the one, two or four taps that reach it; the weight gradient
//! reads each tap from its phase plane.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod lanes;

use std::borrow::Cow;
use std::cell::RefCell;

use rayon::prelude::*;

use crate::conv2d::cpu::Epilogue;
use crate::support::im2col::{scratch, Geom};
use crate::support::out::uninit;

/// Whether `g` runs here: a 3x3 conv with padding 1 at stride 1, or at stride 2 on a map of
/// even height and width (see [`phase_tap`]), with at least [`MIN_POSITIONS`] output positions,
/// whose channel counts fill whole blocks of eight, on a CPU with AVX-512F.
pub(crate) fn applies(g: &Geom) -> bool {
    let sized =
        g.ho * g.wo >= MIN_POSITIONS && g.o.is_multiple_of(8) && g.c.is_multiple_of(8) && g.b > 0;
    shape(g) && sized && has_avx512()
}

/// A 3x3 conv with padding 1, at stride 1, or at stride 2 on an even map.
pub(super) fn shape(g: &Geom) -> bool {
    let even = g.h.is_multiple_of(2) && g.w.is_multiple_of(2);
    let stride = g.stride == 1 || (g.stride == 2 && even);
    g.kh == 3 && g.kw == 3 && g.pad == 1 && stride
}

/// Where tap `t = ki * 3 + kj` of a stride-2 conv reads in the 2x2 phase split of its input.
///
/// Phase `p * 2 + q` holds `x[2y + p, 2x + q]`; output `(i, j)`'s tap reads
/// `x[2i + ki - 1, 2j + kj - 1]`, which is phase `(p, q)` at `(i + dy, j + dx)` with `dy, dx`
/// in {-1, 0}. So a stride-2 conv is a stride-1 conv over four planes per channel, each
/// holding some of the nine taps, with the same multiply-adds. Returns the phase and
/// `(dy + 1, dx + 1)`: the tap's row and column from a position in planes padded by one.
pub(super) fn phase_tap(t: usize) -> (usize, usize, usize) {
    let split = |k: usize| match k {
        0 => (1, 0),
        1 => (0, 1),
        _ => (1, 1),
    };
    let ((p, ry), (q, rx)) = (split(t / 3), split(t % 3));
    (p * 2 + q, ry, rx)
}

/// Tap `t`'s plane among its channel's (one at stride 1, four at stride 2) and its row and
/// column from a position in planes padded by one.
pub(super) fn tap_at(stride: usize, t: usize) -> (usize, usize, usize) {
    if stride == 1 {
        (0, t / 3, t % 3)
    } else {
        phase_tap(t)
    }
}

/// The planes of the input gradient at `stride`, each with the taps that reach it: at stride 1
/// the one plane and all nine taps, at stride 2 each phase and its one, two or four.
pub(super) fn grad_taps(stride: usize) -> Vec<(usize, Vec<usize>)> {
    (0..stride * stride)
        .map(|plane| {
            let taps = (0..9).filter(|&t| tap_at(stride, t).0 == plane);
            (plane, taps.collect())
        })
        .collect()
}

/// How a layout spaces its floats: `unit` from one position of a row to the next, `row` from
/// one row to the next, `apart` from one plane to the next (the tall planes: 1, `wp`, `ls`;
/// sixteen images to a vector: 16, `16 * wp`, a plane or a run of them).
#[derive(Clone, Copy, Debug)]
pub(super) struct Spacing {
    pub unit: usize,
    pub row: usize,
    pub apart: usize,
}

/// The taps of a conv of `stride` over `planes` channels (one plane each at stride 1, four at
/// stride 2) spaced by `sp`, channel-major: the `k`-th row of a [`pack`]ed weight panel.
pub(super) fn tap_offsets(planes: usize, stride: usize, sp: Spacing) -> Vec<usize> {
    (0..planes * 9)
        .map(|k| {
            let (plane, ry, rx) = tap_at(stride, k % 9);
            ((k / 9) * stride * stride + plane) * sp.apart + ry * sp.row + rx * sp.unit
        })
        .collect()
}

/// The input gradient's taps into `planes` padded output-gradient planes spaced by `sp`: for
/// each plane, `taps` mirrored (a position of the input gets tap `(ry, rx)` from the output
/// `1 - ry, 1 - rx` rows and columns on), the rows of [`pack_taps`]'s panels.
pub(super) fn grad_tap_offsets(
    planes: usize,
    stride: usize,
    taps: &[usize],
    sp: Spacing,
) -> Vec<usize> {
    let tap = |t: usize| {
        let (_, ry, rx) = tap_at(stride, t);
        (2 - ry) * sp.row + (2 - rx) * sp.unit
    };
    (0..planes)
        .flat_map(|o| taps.iter().map(move |&t| o * sp.apart + tap(t)))
        .collect()
}

/// Where the weight-gradient kernels find the nine taps of one channel whose planes are spaced
/// by `sp`: row offsets for `ki` and column offsets for `kj` (their sum is the tap's).
pub(super) fn tap_grid(stride: usize, sp: Spacing) -> TapGrid {
    // Tap `(ki, kj)`'s plane is `p(ki) * stride + q(kj)`: its row part goes with `ki`.
    let part = |k: usize| tap_at(stride, k * 3 + k);
    let rows = [0, 1, 2].map(|k| {
        let (ph, ry, _) = part(k);
        (ph / stride) * stride * sp.apart + ry * sp.row
    });
    let cols = [0, 1, 2].map(|k| {
        let (ph, _, rx) = part(k);
        (ph % stride) * sp.apart + rx * sp.unit
    });
    (rows, cols)
}

/// Row and column offsets of a channel's nine taps ([`tap_grid`]).
pub(super) type TapGrid = ([usize; 3], [usize; 3]);

/// Below this many positions per map (10x10) the dropped border positions cost more than they
/// save: at 6x6 (56 % more work then, 36 % since rows share a zero column) the backward measured
/// ~1.5x slower than im2col + GEMM, and later slower than sixteen images to a vector on five of
/// six 6x6 and 3x3 convs.
const MIN_POSITIONS: usize = 100;

pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Floats per vector of the kernels.
const LANES: usize = 16;

/// A block of `n` images of one channel as one tall zero-padded plane: a zero row, then each
/// image's rows, each after one zero column that is also the row before's right border,
/// followed by a zero row that is also the next image's top border. Position
/// `q = j * s + oy * wp + ox` (image `j`) sits at `origin + q`, and tap `(ki, kj)` of it at
/// `q + ki * wp + kj`, so one loop runs over all positions of the block; the extra row and
/// column per image are computed and dropped.
#[derive(Clone, Copy, Debug)]
struct Tall {
    h: usize,
    w: usize,
    n: usize,
    /// Row stride.
    wp: usize,
    /// Positions per image.
    s: usize,
    /// Positions of the block, rounded up to whole vectors.
    q: usize,
    /// Floats per tall plane: every window a kernel reads stays inside its own plane.
    ls: usize,
}

impl Tall {
    fn new(h: usize, w: usize, n: usize) -> Self {
        // One zero column between rows: the right border of one row is the left of the next
        // (two columns cost 4-9 % more positions at 12-24 px).
        let wp = w + 1;
        let s = (h + 1) * wp;
        let q = (n * s).next_multiple_of(LANES);
        Self {
            h,
            w,
            n,
            wp,
            s,
            q,
            ls: (q + 2 * wp + 2).next_multiple_of(LANES),
        }
    }

    /// Offset of image 0's `(y, x) = (0, 0)` in a tall plane.
    fn origin(&self) -> usize {
        self.wp + 1
    }

    /// How the planes space their floats: one position, one row, one plane.
    fn spacing(&self) -> Spacing {
        Spacing {
            unit: 1,
            row: self.wp,
            apart: self.ls,
        }
    }

    /// Writes `src` (`[n, planes, h, w]`) into `dst` (`planes` tall planes of `ls`).
    fn pad(&self, src: &[f32], planes: usize, dst: &mut [f32]) {
        self.pad_at(src, planes, 1, dst)
    }

    /// Writes `src` (`[n, planes, h * stride, w * stride]`) into `dst`: at stride 1 as
    /// [`Self::pad`], at stride 2 as four tall planes per channel, its 2x2 phases (see
    /// [`phase_tap`]).
    fn pad_at(&self, src: &[f32], planes: usize, stride: usize, dst: &mut [f32]) {
        let phases = stride * stride;
        let (hi, wi) = (self.h * stride, self.w * stride);
        dst[..planes * phases * self.ls].fill(0.0);
        for (j, image) in src.chunks_exact(planes * hi * wi).take(self.n).enumerate() {
            for (c, plane) in image.chunks_exact(hi * wi).enumerate() {
                for phase in 0..phases {
                    let (p, q) = (phase / stride, phase % stride);
                    let base = (c * phases + phase) * self.ls + self.origin() + j * self.s;
                    for y in 0..self.h {
                        let row = &plane[(y * stride + p) * wi..][..wi];
                        let start = base + y * self.wp;
                        let dst = &mut dst[start..start + self.w];
                        if stride == 1 {
                            dst.copy_from_slice(row);
                        } else {
                            let src = row[q..].iter().step_by(stride);
                            dst.iter_mut().zip(src).for_each(|(d, v)| *d = *v);
                        }
                    }
                }
            }
        }
    }

    /// Writes the in-image positions of `src` (`planes` rows of `q` positions) into `dst`
    /// (`[n, planes, h, w]`).
    fn unpad(&self, src: &[f32], planes: usize, dst: &mut [f32]) {
        self.unpad_at(src, planes, (1, 0), dst)
    }

    /// [`Self::unpad`] into the positions `(stride * y + p, stride * x + q)` of `dst`
    /// (`[n, planes, h * stride, w * stride]`) for `phase = p * stride + q`.
    fn unpad_at(
        &self,
        src: &[f32],
        planes: usize,
        (stride, phase): (usize, usize),
        dst: &mut [f32],
    ) {
        let (p, q) = (phase / stride, phase % stride);
        let wi = self.w * stride;
        let hw = self.h * stride * wi;
        for (j, image) in dst.chunks_exact_mut(planes * hw).take(self.n).enumerate() {
            for (c, plane) in image.chunks_exact_mut(hw).enumerate() {
                let base = c * self.q + j * self.s;
                for y in 0..self.h {
                    let start = base + y * self.wp;
                    let src = &src[start..start + self.w];
                    let row = &mut plane[(y * stride + p) * wi..][..wi];
                    if stride == 1 {
                        row.copy_from_slice(src);
                    } else {
                        let dst = row[q..].iter_mut().step_by(stride);
                        dst.zip(src).for_each(|(d, v)| *d = *v);
                    }
                }
            }
        }
    }
}

/// Panels of `k` rows per parallel task: ~64k floats, so that small layers stay on one thread.
fn min_panels(k: usize) -> usize {
    (1 << 13) / k.max(1) + 1
}

/// Weights `[O, C, 3, 3]` as panels of eight output channels: `[O / 8, C * 9, 8]`.
// Panels in parallel: packed on the calling thread alone, the wider layers' weights (up to
// 2.4 MB) kept the other threads idle for ~1.5 % of a training step.
fn pack(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let k = c * 9;
    let mut out = uninit(o * k);
    let panels = out.par_chunks_exact_mut(k * 8).with_min_len(min_panels(k));
    panels.enumerate().for_each(|(ob, panel)| {
        for (kk, row) in panel.chunks_exact_mut(8).enumerate() {
            for (r, v) in row.iter_mut().enumerate() {
                *v = w[(ob * 8 + r) * k + kk];
            }
        }
    });
    out
}

/// The input gradient's kernels for `taps` (transposed: `w'[c, o, i] = w[o, c, taps[i]]`), as
/// panels of eight of its output channels (the conv's inputs): `[C / 8, O * taps.len(), 8]`.
/// The offsets the panels' rows read at mirror the taps ([`grad_tap_offsets`]).
fn pack_taps(w: &[f32], o: usize, c: usize, taps: &[usize]) -> Vec<f32> {
    let nt = taps.len();
    let k = o * nt;
    let mut out = uninit(c * k);
    let panels = out.par_chunks_exact_mut(k * 8).with_min_len(min_panels(k));
    panels.enumerate().for_each(|(cb, panel)| {
        for (kk, row) in panel.chunks_exact_mut(8).enumerate() {
            let (oo, t) = (kk / nt, taps[kk % nt]);
            for (r, v) in row.iter_mut().enumerate() {
                *v = w[(oo * c + cb * 8 + r) * 9 + t];
            }
        }
    });
    out
}

/// `out[r][i] = sum_k a[r][k] * src[offs[k] + i]` for `r < outs`, `i < q` (a multiple of 16),
/// with `a` packed by [`pack`] and `out` rows `q` apart: the conv of tall planes `src` whose
/// taps sit at `offs`.
fn conv_planes(
    packed: &[f32],
    offs: &[usize],
    outs: usize,
    src: &[f32],
    q: usize,
    out: &mut [f32],
) {
    let k = offs.len();
    let reach = offs.iter().max().map_or(0, |m| m + q);
    assert!(q.is_multiple_of(LANES), "positions in whole vectors");
    assert!(
        outs.is_multiple_of(8) && packed.len() >= outs * k,
        "weight panels too short"
    );
    assert!(
        src.len() >= reach && out.len() >= outs * q,
        "planes too short"
    );
    // Blocks of KC rows of `a` across all panels before the next block: the source windows of
    // a block stay in L1 for every panel instead of streaming the whole source once a panel.
    #[cfg(target_arch = "x86_64")]
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let offs = &offs[k0..k0 + kc];
        let mut p0 = 0;
        while p0 < q {
            let nv = ((q - p0) / LANES).min(3);
            for (ob, rows) in out.chunks_exact_mut(8 * q).take(outs / 8).enumerate() {
                let w = packed[(ob * k + k0) * 8..].as_ptr();
                let acc = k0 > 0;
                // SAFETY: AVX-512F was detected by the caller; the asserts above keep every
                // read at `offs[k] + p0 + i < reach <= src.len()` and every write at
                // `r * q + p0 + i < 8 * q` (rows of this panel), `p0 + 16 * nv <= q`; the
                // panel's rows `k0..k0 + kc` are `kc * 8` floats from `w`.
                unsafe {
                    let (x, dst) = (src.as_ptr().add(p0), rows.as_mut_ptr().add(p0));
                    avx512::forward_block_nv(nv, w, x, offs, dst, q, acc);
                }
            }
            p0 += nv * LANES;
        }
    }
}

/// Rows of `a` per block of [`conv_planes`] (32 channels of taps).
const KC: usize = 288;

thread_local! {
    static IN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static GRAD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Images per block: blocks in whole rounds of the threads, of about `target` positions.
fn per_block(g: &Geom, target: usize) -> usize {
    let s = (g.ho + 1) * (g.wo + 1);
    crate::conv2d::cpu::block_size(g.b, s, rayon::current_num_threads(), target)
}

/// Runs of blocks per thread in the backward (see [`backward`]).
const GROUPS_PER_THREAD: usize = 4;

/// Positions per forward block: the outputs of a panel stay in cache.
const FORWARD_POSITIONS: usize = 768;
/// Positions per backward block: each weight-gradient call sums its nine taps' vectors across
/// lanes at the end, which at 768 positions cost a third of the call.
const BACKWARD_POSITIONS: usize = 2048;

/// `y [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, 3, 3])`, padding 1, stride 1 or 2
/// ([`applies`]).
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    let nb = per_block(g, FORWARD_POSITIONS);
    let packed = pack(w, g.o, g.c);
    let (s, planes) = (g.stride, g.c * g.stride * g.stride);
    let offs = tap_offsets(g.c, s, Tall::new(g.ho, g.wo, nb).spacing());
    let (il, on) = (g.image_len(), g.o * g.n());
    let mut y = uninit(g.b * on);
    y.par_chunks_mut(nb * on).enumerate().for_each(|(i, yb)| {
        let n = yb.len() / on;
        // The last block may be shorter: its planes are shorter too.
        let t = Tall::new(g.ho, g.wo, n);
        let offs = if n == nb {
            Cow::Borrowed(&offs)
        } else {
            Cow::Owned(tap_offsets(g.c, s, t.spacing()))
        };
        scratch(&IN, planes * t.ls, |xp| {
            t.pad_at(&x[i * nb * il..(i * nb + n) * il], g.c, s, xp);
            scratch(&OUT, g.o * t.q, |out| {
                conv_planes(&packed, &offs, g.o, xp, t.q, out);
                t.unpad(out, g.o, yb);
            });
            if let Some(e) = epilogue {
                e.apply(yb, g.n());
            }
        });
    });
    y
}

/// The input gradient (when `want_dx`) and the weight gradient of [`forward`] from `dy`, in one
/// pass over blocks of images.
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let nb = per_block(g, BACKWARD_POSITIONS);
    let blocks = g.b.div_ceil(nb);
    // Runs of consecutive blocks sum their weight gradients into one buffer each: a buffer per
    // block (and their sum) cost ~1 ms a conv at 28 px, 64 channels. Four runs a thread, not
    // one: when the host stalls a thread, the others take its remaining runs.
    let runs = (GROUPS_PER_THREAD * rayon::current_num_threads()).clamp(1, blocks.max(1));
    let per_group = blocks.div_ceil(runs);
    let s = g.stride;
    // One conv per plane of the input gradient (four phases at stride 2), each over the taps
    // that reach it.
    let packed: Vec<_> = match want_dx {
        true => grad_taps(s)
            .into_iter()
            .map(|(plane, taps)| (plane, pack_taps(w, g.o, g.c, &taps), taps))
            .collect(),
        false => Vec::new(),
    };
    let (il, on) = (g.image_len(), g.o * g.n());
    let group = |gi: usize, mut dxg: Option<&mut [f32]>| {
        let mut dw = vec![0.0; g.o * g.k()];
        let first_block = gi * per_group;
        for bi in first_block..(first_block + per_group).min(blocks) {
            let first = bi * nb;
            let n = nb.min(g.b - first);
            let t = Tall::new(g.ho, g.wo, n);
            scratch(&GRAD, g.o * t.ls, |dyp| {
                t.pad(&dy[first * on..(first + n) * on], g.o, dyp);
                if let Some(dxg) = dxg.as_deref_mut() {
                    let dxb = &mut dxg[(bi - first_block) * nb * il..][..n * il];
                    for (plane, packed, taps) in &packed {
                        scratch(&OUT, g.c * t.q, |out| {
                            let offs = grad_tap_offsets(g.o, s, taps, t.spacing());
                            conv_planes(packed, &offs, g.c, dyp, t.q, out);
                            t.unpad_at(out, g.c, (s, *plane), dxb);
                        });
                    }
                }
                scratch(&IN, g.c * s * s * t.ls, |xp| {
                    t.pad_at(&x[first * il..(first + n) * il], g.c, s, xp);
                    weight_grad_block(g, &t, dyp, xp, &mut dw);
                });
            });
        }
        dw
    };
    let groups = blocks.div_ceil(per_group);
    let (dx, partials): (Option<Vec<f32>>, Vec<Vec<f32>>) = if want_dx {
        let mut dx = uninit(g.b * il);
        let partials = dx
            .par_chunks_mut(per_group * nb * il)
            .enumerate()
            .map(|(gi, dxg)| group(gi, Some(dxg)))
            .collect();
        (Some(dx), partials)
    } else {
        let partials = (0..groups)
            .into_par_iter()
            .map(|gi| group(gi, None))
            .collect();
        (None, partials)
    };
    // Summed in group order: the result depends on the thread count, not on timing.
    (dx, crate::conv2d::cpu::sum_in_order(partials, g.o * g.k()))
}

/// Adds to `dw [O, C, 3, 3]` the weight gradient of one block from its tall output gradients
/// `dyp` (`O` planes) and inputs `xp` (`C` planes, four per channel at stride 2).
fn weight_grad_block(g: &Geom, t: &Tall, dyp: &[f32], xp: &[f32], dw: &mut [f32]) {
    let per_channel = g.stride * g.stride * t.ls;
    let grid = tap_grid(g.stride, t.spacing());
    assert!(
        dyp.len() >= g.o * t.ls && xp.len() >= g.c * per_channel,
        "planes too short"
    );
    assert!(dw.len() >= g.o * g.k(), "weight gradient too short");
    for c in 0..g.c {
        let mut o = 0;
        while o < g.o {
            let mo = (g.o - o).min(3);
            let rows = |m: usize| ((o + m) * g.c + c) * 9;
            let mut add = |sums: &[[f32; 9]]| {
                for (m, s) in sums.iter().enumerate() {
                    for (d, v) in dw[rows(m)..rows(m) + 9].iter_mut().zip(s) {
                        *d += *v;
                    }
                }
            };
            let dy = dyp[o * t.ls + t.origin()..].as_ptr();
            let x = xp[c * per_channel..].as_ptr();
            let vecs = t.q / LANES;
            // SAFETY: AVX-512F was detected (`applies`). Output-gradient row `o + m` is read at
            // `(o + m) * ls + origin + p` and channel `c`'s planes at
            // `c * per_channel + plane * ls + (ry * wp + rx) + p` for a tap's plane, `p < q`;
            // `origin` and every `ry * wp + rx` are at most `2 * wp + 2` and
            // `ls >= q + 2 * wp + 2`, so each read stays in its own plane, inside the lengths
            // asserted above.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match mo {
                    3 => {
                        let mut s = [[0.0; 9]; 3];
                        avx512::weight_block::<3>(dy, t.ls, x, grid, vecs, &mut s);
                        add(&s);
                    }
                    2 => {
                        let mut s = [[0.0; 9]; 2];
                        avx512::weight_block::<2>(dy, t.ls, x, grid, vecs, &mut s);
                        add(&s);
                    }
                    _ => {
                        let mut s = [[0.0; 9]; 1];
                        avx512::weight_block::<1>(dy, t.ls, x, grid, vecs, &mut s);
                        add(&s);
                    }
                }
            }
            o += mo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn vals(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin()).collect()
    }

    pub(super) fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 2e-5 * scale,
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// The conv, its input gradient and its weight gradient by their definitions, in f64:
    /// `y[b, o, i, j] = sum w[o, c, ki, kj] * x[b, c, s * i + ki - 1, s * j + kj - 1]` (zero
    /// outside), at the stride `s` of `g`.
    pub(super) fn reference(g: &Geom, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let (mut y, mut dx, mut dw) = (
            vec![0.0; g.b * g.o * g.n()],
            vec![0.0; g.b * g.image_len()],
            vec![0.0; g.o * g.k()],
        );
        for oi in 0..y.len() {
            let (b, o) = (oi / (g.o * g.n()), oi / g.n() % g.o);
            let (i, j) = (oi / g.wo % g.ho, oi % g.wo);
            for c in 0..g.c {
                for t in 0..9 {
                    let yi = (g.stride * i + t / 3).checked_sub(1).filter(|&v| v < g.h);
                    let xj = (g.stride * j + t % 3).checked_sub(1).filter(|&v| v < g.w);
                    let (Some(yi), Some(xj)) = (yi, xj) else {
                        continue;
                    };
                    let (wi, xi) = ((o * g.c + c) * 9 + t, ((b * g.c + c) * g.h + yi) * g.w + xj);
                    y[oi] += w[wi] as f64 * x[xi] as f64;
                    dx[xi] += w[wi] as f64 * dy[oi] as f64;
                    dw[wi] += x[xi] as f64 * dy[oi] as f64;
                }
            }
        }
        [y, dx, dw]
    }

    type Backward = fn(&Geom, &[f32], &[f32], &[f32], bool) -> (Option<Vec<f32>>, Vec<f32>);

    /// `forward` and `backward` (with and without the input gradient) against the definition.
    pub(super) fn check(
        g: &Geom,
        forward: fn(&Geom, &[f32], &[f32]) -> Vec<f32>,
        backward: Backward,
    ) {
        let (x, wt) = (vals(g.b * g.image_len(), 0.37), vals(g.o * g.k(), 0.11));
        let dy = vals(g.b * g.o * g.n(), 0.23);
        let [want_y, want_dx, want_dw] = reference(g, &x, &wt, &dy);
        let what = format!("{}x{}x{}x{} -> {}", g.b, g.c, g.h, g.w, g.o);
        assert_close(&forward(g, &x, &wt), &want_y, &what);
        let (dx, dw) = backward(g, &x, &dy, &wt, true);
        let dx = dx.expect("the input gradient was asked for");
        assert_close(&dx, &want_dx, &format!("dx {what}"));
        assert_close(&dw, &want_dw, &format!("dw {what}"));
        let (none, again) = backward(g, &x, &dy, &wt, false);
        assert!(none.is_none(), "no input gradient asked for {what}");
        assert_eq!(dw, again, "dw without dx {what}");
    }

    /// The direct kernels against the definition (forward, both gradients), on maps from 1x1
    /// to wider than three vectors a row, odd and even, square or not; channel counts that
    /// leave one or two output channels for the weight gradient's last block, and more taps
    /// than one block of [`KC`]; batches of one block up to several blocks a thread.
    #[test]
    fn matches_the_definition() {
        if !has_avx512() {
            eprintln!("no AVX-512F on this CPU: the direct conv is not used here");
            return;
        }
        // Nine 24x24 images make blocks of two, so each thread sums several blocks and the
        // last block is short.
        for (b, c, o, h, w) in [
            (9, 8, 8, 24, 24),
            (3, 8, 8, 24, 24),
            (2, 16, 8, 12, 12),
            (5, 8, 16, 6, 6),
            (4, 8, 32, 3, 3),
            (1, 8, 8, 1, 1),
            (3, 24, 40, 7, 5),
            (2, 8, 16, 5, 31),
            (2, 40, 16, 10, 10),
        ] {
            let g = Geom::new([b, c, h, w], [o, c, 3, 3], 1, 1).unwrap();
            assert_eq!(applies(&g), h * w >= MIN_POSITIONS, "{b}x{c}x{h}x{w}");
            check(&g, |g, x, w| forward(g, x, w, None), backward);
        }
    }

    /// Stride 2 against the definition (forward, both gradients): even maps whose outputs fill
    /// one block or several, square or not, a short last block, more taps than one block of
    /// [`KC`]; odd maps stay off this path.
    #[test]
    fn stride_two_matches_the_definition() {
        if !has_avx512() {
            eprintln!("no AVX-512F on this CPU: the direct conv is not used here");
            return;
        }
        for (b, c, o, h, w) in [(5, 8, 16, 24, 24), (2, 16, 8, 20, 22), (3, 40, 8, 48, 20)] {
            let g = Geom::new([b, c, h, w], [o, c, 3, 3], 2, 1).unwrap();
            assert!(applies(&g), "{b}x{c}x{h}x{w}");
            check(&g, |g, x, w| forward(g, x, w, None), backward);
        }
        let odd = Geom::new([2, 8, 25, 24], [8, 8, 3, 3], 2, 1).unwrap();
        assert!(!applies(&odd), "an odd map");
    }
}
