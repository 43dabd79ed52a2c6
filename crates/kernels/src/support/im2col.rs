//! The shape arithmetic of a 2-D convolution and the im2col / col2im transforms of one image.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Sizes of one `conv2d(x [B, C, H, W], w [O, C, KH, KW], stride, padding)` (no dilation,
/// no groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    pub(crate) fn new(x: [usize; 4], w: [usize; 4], stride: usize, pad: usize) -> Option<Self> {
        let [b, c, h, wd] = x;
        let [o, c2, kh, kw] = w;
        if c != c2 || stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            return None;
        }
        Some(Self {
            b,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the column matrix: one per (channel, kernel row, kernel column).
    pub(crate) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions of one image.
    pub(crate) fn n(&self) -> usize {
        self.ho * self.wo
    }

    pub(crate) fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1x1 stride-1 unpadded conv reads the image itself as its column matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

thread_local! {
    /// One zero-padded plane, reused from call to call.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch buffer `key` (contents unspecified).
pub(crate) fn scratch<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered on this thread (work stealing inside a parallel GEMM): use a fresh buffer.
        Err(_) => f(&mut crate::support::out::uninit(len)),
    })
}

/// Runs `f` on a `(H + 2p) x (W + 2p)` buffer (contents unspecified; the callers zero what they
/// read): with a zero border, every column row is a plain strided read with no bounds logic,
/// which for the 4x4 and 7x7 maps of the deep stages (rows of a few floats) is most of the cost.
fn with_padded<R>(g: &Geom, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch(&PADDED, (g.h + 2 * g.pad) * (g.w + 2 * g.pad), f)
}

/// Writes image `x` (`[C, H, W]`) as columns into `col`, a `[K, N]` block whose rows are `ld`
/// apart (so several images can sit side by side in one wider matrix).
pub(crate) fn im2col(g: &Geom, x: &[f32], col: &mut [f32], ld: usize) {
    let (wp, hw) = (g.w + 2 * g.pad, g.h * g.w);
    let rows = |plane: &[f32], c: usize, col: &mut [f32]| {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld..row * ld + g.n()];
                for (oy, d) in dst.chunks_exact_mut(g.wo).enumerate() {
                    let start = (oy * g.stride + ki) * wp + kj;
                    gather(d, &plane[start..], g.stride);
                }
            }
        }
    };
    if g.pad == 0 {
        for c in 0..g.c {
            rows(&x[c * hw..(c + 1) * hw], c, col);
        }
        return;
    }
    with_padded(g, |padded| {
        padded.fill(0.0);
        for c in 0..g.c {
            let plane = &x[c * hw..(c + 1) * hw];
            for (y, src) in plane.chunks_exact(g.w).enumerate() {
                let start = (y + g.pad) * wp + g.pad;
                padded[start..start + g.w].copy_from_slice(src);
            }
            rows(padded, c, col);
        }
    });
}

/// `dst[i] = src[i * stride]`. Rows here are short (a few to a hundred floats), so the
/// stride-1 copy is an inline loop rather than a memcpy call, and stride 2 (the stem and every
/// stage's first conv) reads pairs, which the compiler turns into vector shuffles where a
/// `step_by` walk stays scalar.
#[inline(always)]
fn gather(dst: &mut [f32], src: &[f32], stride: usize) {
    let n = dst.len();
    match stride {
        1 => {
            for (v, s) in dst.iter_mut().zip(&src[..n]) {
                *v = *s;
            }
        }
        2 => {
            // The last output's pair may run past the row: take it on its own.
            let pairs = if src.len() >= 2 * n {
                n
            } else {
                n.saturating_sub(1)
            };
            for (v, p) in dst[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                *v = p[0];
            }
            if pairs < n {
                dst[pairs] = src[2 * pairs];
            }
        }
        _ => {
            for (v, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *v = *s;
            }
        }
    }
}

/// Writes into image gradient `dx` (`[C, H, W]`) the sum of the columns of `col` (`[K, N]`,
/// rows `ld` apart) at the positions they were read from: the adjoint of [`im2col`]. `dx` is
/// overwritten, so it need not start at zero.
pub(crate) fn col2im(g: &Geom, col: &[f32], ld: usize, dx: &mut [f32]) {
    let (wp, hw) = (g.w + 2 * g.pad, g.h * g.w);
    let rows = |acc: &mut [f32], c: usize| {
        acc.fill(0.0);
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &col[row * ld..row * ld + g.n()];
                for (oy, s) in src.chunks_exact(g.wo).enumerate() {
                    let start = (oy * g.stride + ki) * wp + kj;
                    scatter_add(&mut acc[start..], s, g.stride);
                }
            }
        }
    };
    if g.pad == 0 {
        for (c, plane) in dx.chunks_exact_mut(hw).take(g.c).enumerate() {
            rows(plane, c);
        }
        return;
    }
    with_padded(g, |padded| {
        for (c, plane) in dx.chunks_exact_mut(hw).take(g.c).enumerate() {
            rows(padded, c);
            for (y, dst) in plane.chunks_exact_mut(g.w).enumerate() {
                let start = (y + g.pad) * wp + g.pad;
                dst.copy_from_slice(&padded[start..start + g.w]);
            }
        }
    });
}

/// `dst[i * stride] += src[i]`.
#[inline(always)]
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize) {
    if stride == 1 {
        for (d, s) in dst[..src.len()].iter_mut().zip(src) {
            *d += *s;
        }
    } else {
        for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
            *d += *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition: col[(c, ki, kj), (oy, ox)] = x[c, oy*s+ki-p, ox*s+kj-p] or 0.
    fn naive_im2col(g: &Geom, x: &[f32]) -> Vec<f32> {
        let mut col = vec![0.0; g.k() * g.n()];
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    for oy in 0..g.ho {
                        for ox in 0..g.wo {
                            let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                            let ix = (ox * g.stride + kj) as isize - g.pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                let row = (c * g.kh + ki) * g.kw + kj;
                                col[row * g.n() + oy * g.wo + ox] =
                                    x[(c * g.h + iy as usize) * g.w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        for &(h, w, k, s, p) in &[
            (5, 7, 3, 1, 1),
            (6, 5, 3, 2, 1),
            (7, 7, 7, 2, 3),
            (4, 4, 1, 2, 0),
            (3, 3, 3, 1, 0),
            (2, 5, 3, 2, 2),
            (1, 1, 3, 1, 1),
        ] {
            let g = Geom::new([1, 2, h, w], [3, 2, k, k], s, p).unwrap();
            let x: Vec<f32> = (0..g.image_len()).map(|i| i as f32 + 1.0).collect();
            let mut col = vec![f32::NAN; g.k() * g.n()];
            im2col(&g, &x, &mut col, g.n());
            assert_eq!(col, naive_im2col(&g, &x), "{h}x{w} k{k} s{s} p{p}");
            // <im2col(x), y> == <x, col2im(y)> for any y.
            let y: Vec<f32> = (0..col.len()).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            // col2im overwrites: whatever dx held before must not leak through.
            let mut dx = vec![f32::NAN; g.image_len()];
            col2im(&g, &y, g.n(), &mut dx);
            let lhs: f32 = col.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{h}x{w} k{k} s{s} p{p}");
        }
    }
}
