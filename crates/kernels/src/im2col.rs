//! The shape arithmetic of a 2-D convolution and the im2col / col2im transforms of one image.

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

    /// Output indices `o` whose input index `o * stride + k - pad` lies in `0..len`.
    fn valid(&self, k: usize, len: usize, out_len: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad.saturating_sub(k).div_ceil(s).min(out_len);
        // Largest o with o * s + k - pad <= len - 1, i.e. o * s <= len - 1 + pad - k.
        let hi = if len + self.pad > k {
            ((len - 1 + self.pad - k) / s + 1).min(out_len)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Writes image `x` (`[C, H, W]`) as columns into `col`, a `[K, N]` block whose rows are `ld`
/// apart (so several images can sit side by side in one wider matrix).
pub(crate) fn im2col(g: &Geom, x: &[f32], col: &mut [f32], ld: usize) {
    let n_w = g.wo;
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (oy_lo, oy_hi) = g.valid(ki, g.h, g.ho);
            for kj in 0..g.kw {
                let (ox_lo, ox_hi) = g.valid(kj, g.w, g.wo);
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld..row * ld + g.n()];
                dst[..oy_lo * n_w].fill(0.0);
                dst[oy_hi * n_w..].fill(0.0);
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride + ki - g.pad;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let d = &mut dst[oy * n_w..(oy + 1) * n_w];
                    d[..ox_lo].fill(0.0);
                    d[ox_hi..].fill(0.0);
                    let x0 = ox_lo * g.stride + kj - g.pad;
                    gather(&mut d[ox_lo..ox_hi], &src[x0..], g.stride);
                }
            }
        }
    }
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

/// Adds the columns of `col` (`[K, N]`, rows `ld` apart) back onto image gradient `dx`
/// (`[C, H, W]`), the adjoint of [`im2col`].
pub(crate) fn col2im(g: &Geom, col: &[f32], ld: usize, dx: &mut [f32]) {
    let n_w = g.wo;
    for c in 0..g.c {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (oy_lo, oy_hi) = g.valid(ki, g.h, g.ho);
            for kj in 0..g.kw {
                let (ox_lo, ox_hi) = g.valid(kj, g.w, g.wo);
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &col[row * ld..row * ld + g.n()];
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride + ki - g.pad;
                    let d = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let s = &src[oy * n_w + ox_lo..oy * n_w + ox_hi];
                    let x0 = ox_lo * g.stride + kj - g.pad;
                    if g.stride == 1 {
                        for (v, s) in d[x0..x0 + s.len()].iter_mut().zip(s) {
                            *v += *s;
                        }
                    } else {
                        for (v, s) in d[x0..].iter_mut().step_by(g.stride).zip(s) {
                            *v += *s;
                        }
                    }
                }
            }
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
            let mut dx = vec![0.0; g.image_len()];
            col2im(&g, &y, g.n(), &mut dx);
            let lhs: f32 = col.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{h}x{w} k{k} s{s} p{p}");
        }
    }
}
