//! 3x3 convs (stride 1, or 2 on even maps) on small maps, sixteen images to a vector.
//!
//! The tall planes of the parent module compute every border position they hold: 36 % more
//! work at 6x6 and 78 % more at 3x3. Here a vector holds one position of
//! sixteen images, so only the map's own positions are computed, with the same kernels: the
//! planes are interleaved on the way in and out, one copy each where im2col makes nine.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{
    avx512, grad_tap_offsets, grad_taps, has_avx512, pack, pack_taps, tap_grid, tap_offsets,
    Spacing, KC, LANES,
};
use crate::conv2d::cpu::Epilogue;
use crate::support::im2col::{scratch, Geom};
use crate::support::out::uninit;

/// Whether `g`'s forward runs here: a 3x3 conv with padding 1 at stride 1, or at stride 2 on
/// an even map (its input split into 2x2 phases, see [`super::phase_tap`]); a batch in whole
/// sixteens with a sixteen for every thread (the forward runs a sixteen a thread), channel
/// counts in whole eights, on a CPU with AVX-512F.
pub(crate) fn applies(g: &Geom) -> bool {
    applies_with(g, rayon::current_num_threads())
}

fn applies_with(g: &Geom, threads: usize) -> bool {
    let sized = g.b.is_multiple_of(LANES) && g.b / LANES >= threads.max(1);
    super::shape(g) && sized && g.o.is_multiple_of(8) && g.c.is_multiple_of(8) && has_avx512()
}

/// Whether `g`'s backward runs here too: [`applies`], with enough output positions over all
/// images for a weight-gradient call to pay for summing its accumulators (36: 3x3 maps of 64
/// images ran level with im2col + GEMM; 4x4 maps of 32 images, 512 channels, 30 % slower).
pub(crate) fn applies_backward(g: &Geom) -> bool {
    applies(g) && g.b / LANES * g.ho * g.wo >= 36
}

/// The layout of sixteen images' zero-padded `h x w` planes, a position's sixteen values
/// side by side.
#[derive(Clone, Copy, Debug)]
struct Lanes {
    h: usize,
    w: usize,
    /// Row stride in positions.
    wp: usize,
    /// Floats per padded plane.
    plane: usize,
    /// Floats per output plane (the map's own positions only).
    out: usize,
}

impl Lanes {
    fn new(h: usize, w: usize) -> Self {
        let wp = w + 2;
        Self {
            h,
            w,
            wp,
            plane: (h + 2) * wp * LANES,
            out: h * w * LANES,
        }
    }

    /// How planes `apart` floats apart space their floats: one position, one row, one plane.
    fn spacing(&self, apart: usize) -> Spacing {
        Spacing {
            unit: LANES,
            row: self.wp * LANES,
            apart,
        }
    }

    /// Writes sixteen images `src` (`[16, planes, h * stride, w * stride]`) into `dst`: at
    /// stride 1 a padded plane per channel, at stride 2 four, the channel's 2x2 phases (see
    /// [`super::phase_tap`]).
    fn interleave_at(&self, src: &[f32], planes: usize, stride: usize, dst: &mut [f32]) {
        let per_channel = stride * stride * self.plane;
        let to = self.targets(stride, self.plane);
        for (c, dst) in dst.chunks_exact_mut(per_channel).take(planes).enumerate() {
            self.interleave_channel(src, planes, (c, stride), dst, (&to, self.plane));
        }
    }

    /// Where each input position `k` of an image goes in its channel's planes (`stride^2`
    /// of them, `apart` floats apart): value `x[stride * y + p, stride * x + q]` into plane
    /// `p * stride + q` at `(y, x)`, one row and column in.
    fn targets(&self, stride: usize, apart: usize) -> Vec<usize> {
        let wi = self.w * stride;
        (0..self.h * stride * wi)
            .map(|k| {
                let (yy, xx) = (k / wi, k % wi);
                let phase = (yy % stride) * stride + xx % stride;
                phase * apart + ((yy / stride + 1) * self.wp + xx / stride + 1) * LANES
            })
            .collect()
    }

    /// Writes channel `c` of sixteen images `src` (`[16, planes, h * stride, w * stride]`)
    /// into its `stride^2` padded planes in `dst`, `apart` floats apart, input position `k`
    /// at `to[k]` ([`Self::targets`]).
    fn interleave_channel(
        &self,
        src: &[f32],
        planes: usize,
        (c, stride): (usize, usize),
        dst: &mut [f32],
        (to, apart): (&[usize], usize),
    ) {
        let (phases, hw) = (stride * stride, self.h * self.w * stride * stride);
        let reach = to.iter().max().map_or(0, |m| m + LANES);
        assert!(
            to.len() == hw && dst.len() >= reach.max((phases - 1) * apart + self.plane),
            "planes too short"
        );
        assert!(src.len() >= (15 * planes + c + 1) * hw, "images too short");
        // The borders; every other position is written below.
        for phase in 0..phases {
            dst[phase * apart..phase * apart + self.plane].fill(0.0);
        }
        let first = &src[c * hw..];
        for (k0, to) in (0..hw).step_by(LANES).zip(to.chunks(LANES)) {
            // SAFETY: AVX-512F was detected (`applies`). Image `j`'s row is read at
            // `(j * planes + c) * hw + k0 .. + to.len()`, inside `src` (asserted); vector `i`
            // goes to `to[i] .. + 16`, inside `dst` (asserted).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let at = first.as_ptr().add(k0);
                avx512::gather_columns(at, planes * hw, to, dst.as_mut_ptr());
            }
        }
    }

    /// All `groups` sixteens of images `src` (`[16 * groups, planes, h * stride, w * stride]`)
    /// as padded planes `[planes * stride^2, groups]`: a plane's sixteens side by side, for one
    /// pass over every image. The planes start at the returned offset, on a cache line.
    fn interleave_all(
        &self,
        src: &[f32],
        planes: usize,
        stride: usize,
        groups: usize,
    ) -> (Vec<f32>, usize) {
        let phases = stride * stride;
        let per_group = LANES * planes * self.h * self.w * phases;
        let (apart, len) = (groups * self.plane, planes * phases * groups * self.plane);
        let to = self.targets(stride, apart);
        let mut buf = uninit(len + LANES);
        let start = line_start(&buf);
        buf[start..start + len]
            .par_chunks_mut(phases * apart)
            .enumerate()
            .for_each(|(c, channel)| {
                for j in 0..groups {
                    let images = &src[j * per_group..(j + 1) * per_group];
                    let dst = &mut channel[j * self.plane..];
                    self.interleave_channel(images, planes, (c, stride), dst, (&to, apart));
                }
            });
        (buf, start)
    }

    /// Writes `src` (`planes` output planes) into sixteen images `dst` (`[16, planes, h, w]`).
    fn deinterleave(&self, src: &[f32], planes: usize, dst: &mut [f32]) {
        self.deinterleave_at(src, planes, (1, 0), dst)
    }

    /// [`Self::deinterleave`] into the positions `(stride * y + p, stride * x + q)` of `dst`
    /// (`[16, planes, h * stride, w * stride]`) for `phase = p * stride + q`.
    fn deinterleave_at(
        &self,
        src: &[f32],
        planes: usize,
        (stride, phase): (usize, usize),
        dst: &mut [f32],
    ) {
        let (p, q) = (phase / stride, phase % stride);
        let wi = self.w * stride;
        let hw = self.h * stride * wi;
        assert!(dst.len() >= LANES * planes * hw, "images too short");
        for (c, plane) in src.chunks_exact(self.out).take(planes).enumerate() {
            if stride == 1 {
                // Sixteen positions at a time: a transpose each.
                for k0 in (0..hw).step_by(LANES) {
                    let n = LANES.min(hw - k0);
                    // SAFETY: AVX-512F was detected (`applies`). Reads `plane[k0 * 16 ..
                    // (k0 + n) * 16]` (`plane` is `h * w * 16` long); writes image `j`'s
                    // `(j * planes + c) * hw + k0 .. + n`, inside `dst` (asserted).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let from = plane[k0 * LANES..].as_ptr();
                        let to = dst[c * hw + k0..].as_mut_ptr();
                        avx512::scatter_columns(from, n, to, planes * hw);
                    }
                }
                continue;
            }
            for j in 0..LANES {
                let image = &mut dst[(j * planes + c) * hw..(j * planes + c + 1) * hw];
                let mut values = plane[j..].iter().step_by(LANES);
                for y in 0..self.h {
                    let row = image[(y * stride + p) * wi + q..]
                        .iter_mut()
                        .step_by(stride);
                    row.take(self.w).zip(&mut values).for_each(|(d, v)| *d = *v);
                }
            }
        }
    }

    /// Runs of up to three positions along each row: (input position, output position, run).
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let mut runs = Vec::new();
        for y in 0..self.h {
            let mut x = 0;
            while x < self.w {
                let n = (self.w - x).min(3);
                runs.push((y * self.wp + x, y * self.w + x, n));
                x += n;
            }
        }
        runs
    }
}

/// Where the first cache line of `buf` starts, in floats: a vector of sixteen floats loaded
/// from there on a multiple of sixteen never straddles two lines.
fn line_start(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(LANES)
}

/// Runs `f` on `len` floats of scratch buffer `key` that start on a cache line.
fn aligned_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    scratch(key, len + LANES, |buf| {
        let start = line_start(buf);
        f(&mut buf[start..start + len])
    })
}

/// `out` (`outs` output planes) = the conv of padded planes `src` with `packed` panels whose
/// rows read the taps at `offs`.
fn conv(l: &Lanes, packed: &[f32], offs: &[usize], outs: usize, src: &[f32], out: &mut [f32]) {
    let k = offs.len();
    // Runs end inside their rows: a tap reads at most `(h - 1) * wp + w` positions on.
    let span = (l.h.saturating_sub(1) * l.wp + l.w) * LANES;
    let reach = offs.iter().max().map_or(0, |m| m + span);
    assert!(
        outs.is_multiple_of(8) && packed.len() >= outs * k,
        "weight panels too short"
    );
    assert!(
        src.len() >= reach && out.len() >= outs * l.out,
        "planes too short"
    );
    let runs = l.runs();
    #[cfg(target_arch = "x86_64")]
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let offs = &offs[k0..k0 + kc];
        for &(ip, op, n) in &runs {
            for (ob, rows) in out.chunks_exact_mut(8 * l.out).take(outs / 8).enumerate() {
                let w = packed[(ob * k + k0) * 8..].as_ptr();
                // SAFETY: AVX-512F was detected (`applies`). A run's reads end before
                // `offs[k] + (ip + n) * 16 <= offs[k] + span <= reach` (a run ends inside its
                // row: `ip + n <= (h - 1) * wp + w`), its writes before
                // `r * out + (op + n) * 16 <= 8 * out` for the panel's rows `r < 8`.
                unsafe {
                    let x = src.as_ptr().add(ip * LANES);
                    let dst = rows.as_mut_ptr().add(op * LANES);
                    avx512::forward_block_nv(n, w, x, offs, dst, l.out, k0 > 0);
                }
            }
        }
    }
}

thread_local! {
    static IN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, 3, 3])`, padding 1, stride 1 or 2
/// ([`applies`]).
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    let l = Lanes::new(g.ho, g.wo);
    let offs = tap_offsets(g.c, g.stride, l.spacing(l.plane));
    let packed = pack(w, g.o, g.c);
    let planes = g.c * g.stride * g.stride;
    let (il, on) = (g.image_len(), g.o * g.n());
    let mut y = uninit(g.b * on);
    y.par_chunks_mut(LANES * on)
        .enumerate()
        .for_each(|(i, yb)| {
            scratch(&IN, planes * l.plane, |xp| {
                let images = &x[i * LANES * il..(i + 1) * LANES * il];
                l.interleave_at(images, g.c, g.stride, xp);
                scratch(&OUT, g.o * l.out, |out| {
                    conv(&l, &packed, &offs, g.o, xp, out);
                    l.deinterleave(out, g.o, yb);
                });
            });
            if let Some(e) = epilogue {
                e.apply(yb, g.n());
            }
        });
    y
}

/// The input gradient (when `want_dx`) and the weight gradient of [`forward`] from `dy`.
///
/// Every image is interleaved once; the input gradient then runs per sixteen images, the
/// weight gradient per input channel over all images at once: at 3x3 maps a call per sixteen
/// images would spend more on summing its accumulators than on its products.
pub(crate) fn backward(
    g: &Geom,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (l, s) = (Lanes::new(g.ho, g.wo), g.stride);
    let groups = g.b / LANES;
    let step = groups * l.plane;
    let (dy_buf, dy_start) = l.interleave_all(dy, g.o, 1, groups);
    let dyp = &dy_buf[dy_start..];
    let dx = want_dx.then(|| {
        // One conv per plane of the input gradient (four phases at stride 2).
        let convs: Vec<_> = grad_taps(s)
            .into_iter()
            .map(|(plane, taps)| {
                let offs = grad_tap_offsets(g.o, s, &taps, l.spacing(step));
                (plane, pack_taps(w, g.o, g.c, &taps), offs)
            })
            .collect();
        let il = g.image_len();
        let mut dx = uninit(g.b * il);
        dx.par_chunks_mut(LANES * il)
            .enumerate()
            .for_each(|(j, dxg)| {
                aligned_scratch(&OUT, g.c * l.out, |out| {
                    for (plane, packed, offs) in &convs {
                        conv(&l, packed, offs, g.c, &dyp[j * l.plane..], out);
                        l.deinterleave_at(out, g.c, (s, *plane), dxg);
                    }
                });
            });
        dx
    });
    let (x_buf, x_start) = l.interleave_all(x, g.c, s, groups);
    let xp = &x_buf[x_start..];
    let channel = s * s * step;
    // One input channel a task: `[C, O, 9]`, transposed into `[O, C, 9]` below.
    let per_channel: Vec<Vec<f32>> = (0..g.c)
        .into_par_iter()
        .map(|c| weight_grad(g, &l, dyp, &xp[c * channel..(c + 1) * channel], groups))
        .collect();
    let mut dw = uninit(g.o * g.k());
    for (c, sums) in per_channel.iter().enumerate() {
        for (o, s) in sums.chunks_exact(9).enumerate() {
            dw[(o * g.c + c) * 9..(o * g.c + c + 1) * 9].copy_from_slice(s);
        }
    }
    (dx, dw)
}

/// The weight gradient `[O, 9]` of one input channel over every image, from the padded output
/// gradients `dyp` (`[O, groups]` planes) and that channel's padded inputs `xp` (`[stride^2,
/// groups]` planes).
fn weight_grad(g: &Geom, l: &Lanes, dyp: &[f32], xp: &[f32], groups: usize) -> Vec<f32> {
    let step = groups * l.plane;
    let grid = tap_grid(g.stride, l.spacing(step));
    assert!(
        dyp.len() >= g.o * step && xp.len() >= g.stride * g.stride * step,
        "planes too short"
    );
    let mut dw = vec![0.0; g.o * 9];
    let mut o = 0;
    while o < g.o {
        let mo = (g.o - o).min(3);
        let dy = dyp[o * step..].as_ptr();
        let (x, map) = (xp.as_ptr(), (l.h, l.w, l.wp));
        let sums = &mut dw[o * 9..(o + mo) * 9];
        // SAFETY: AVX-512F was detected (`applies`). Output-gradient plane `(o + m, j)` is
        // read at `(o + m) * step + j * plane + ((oy + 1) * wp + ox + 1) * 16 + lane` and the
        // input plane `(k, j)` of the tap at `k * step + j * plane + ((oy + ry) * wp + ox + rx)
        // * 16 + lane`, `oy < h`, `ox < w`, `ry, rx <= 2`, `k < stride^2`: both under
        // `(h + 2) * wp * 16 = plane` within their plane, inside the lengths asserted above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match mo {
                3 => {
                    let mut s = [[0.0; 9]; 3];
                    avx512::lanes_weight_block::<3>(
                        dy, step, x, grid, l.plane, groups, map, &mut s,
                    );
                    sums.copy_from_slice(s.as_flattened());
                }
                2 => {
                    let mut s = [[0.0; 9]; 2];
                    avx512::lanes_weight_block::<2>(
                        dy, step, x, grid, l.plane, groups, map, &mut s,
                    );
                    sums.copy_from_slice(s.as_flattened());
                }
                _ => {
                    let mut s = [[0.0; 9]; 1];
                    avx512::lanes_weight_block::<1>(
                        dy, step, x, grid, l.plane, groups, map, &mut s,
                    );
                    sums.copy_from_slice(s.as_flattened());
                }
            }
        }
        o += mo;
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::direct::tests::check;

    /// Sixteen images to a vector against the definition (forward, both gradients): maps from
    /// 1x1 to wider than three positions a row, square or not; one group of sixteen images or
    /// several a thread; more taps than one block of [`KC`].
    #[test]
    fn matches_the_definition() {
        if !has_avx512() {
            eprintln!("no AVX-512F on this CPU: the direct conv is not used here");
            return;
        }
        for (b, c, o, h, w) in [
            (16, 8, 8, 6, 6),
            (48, 8, 16, 3, 3),
            (16, 16, 8, 7, 5),
            (16, 8, 8, 1, 1),
            (32, 40, 24, 4, 4),
            (16, 8, 32, 2, 11),
        ] {
            let g = Geom::new([b, c, h, w], [o, c, 3, 3], 1, 1).unwrap();
            assert!(applies_with(&g, 1));
            check(&g, |g, x, w| forward(g, x, w, None), backward);
        }
        let odd = Geom::new([24, 8, 6, 6], [8, 8, 3, 3], 1, 1).unwrap();
        assert!(
            !applies_with(&odd, 1),
            "a batch of 24 is not whole sixteens"
        );
        let one = Geom::new([16, 8, 6, 6], [8, 8, 3, 3], 1, 1).unwrap();
        assert!(
            applies_with(&one, 1) && !applies_with(&one, 2),
            "a sixteen a thread"
        );
    }

    /// Stride 2 against the definition (forward, both gradients), sixteen images to a vector:
    /// even maps down to 2x2, square or not, several sixteens a thread, more taps than one
    /// block of [`KC`].
    #[test]
    fn stride_two_matches_the_definition() {
        if !has_avx512() {
            eprintln!("no AVX-512F on this CPU: the direct conv is not used here");
            return;
        }
        for (b, c, o, h, w) in [
            (16, 8, 8, 12, 12),
            (32, 16, 8, 6, 6),
            (16, 8, 16, 2, 2),
            (16, 40, 8, 4, 10),
        ] {
            let g = Geom::new([b, c, h, w], [o, c, 3, 3], 2, 1).unwrap();
            assert!(applies_with(&g, 1));
            check(&g, |g, x, w| forward(g, x, w, None), backward);
        }
    }
}
