//! The ONNX operators a BlazeFace graph uses, on plain row-major `f32` tensors.
//!
//! Semantics follow the ONNX operator specs (opset 12): `Conv` with groups and asymmetric pads
//! (`[top, left, bottom, right]`), `MaxPool` without ceil mode, `Reshape` with `0`/`-1`, and so
//! on. Convolution loops run over whole output rows so the compiler vectorises them; output
//! channels run in parallel.

use rayon::prelude::*;

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }
}

/// Convolution settings, already checked against the tensors' shapes by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub group: usize,
}

/// Output spatial size of a window op, or `None` when the window does not fit.
pub fn out_size(input: usize, pad: usize, kernel: usize, stride: usize) -> Option<usize> {
    (input + pad).checked_sub(kernel).map(|d| d / stride + 1)
}

/// `x` `[N, C, H, W]`, `w` `[M, C/group, kh, kw]`, `b` `[M]` -> `[N, M, Ho, Wo]`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&[f32]>, spec: ConvSpec) -> Tensor {
    let [n, c, h, wd] = x.shape[..] else {
        unreachable!("checked by the caller")
    };
    let [m, cg, kh, kw] = w.shape[..] else {
        unreachable!("checked by the caller")
    };
    let [sy, sx] = spec.stride;
    let [pt, pl, pb, pr] = spec.pads;
    let (hp, wp) = (h + pt + pb, wd + pl + pr);
    let ho = out_size(h, pt + pb, kh, sy).expect("checked by the caller");
    let wo = out_size(wd, pl + pr, kw, sx).expect("checked by the caller");
    let mg = m / spec.group;
    if spec.group == 1 {
        return dense_conv2d(x, w, b, spec, [ho, wo]);
    }
    // Zero padding once up front keeps the inner loops free of bounds tests.
    let padded: Vec<f32> = if pt + pb + pl + pr == 0 {
        x.data.clone()
    } else {
        let mut p = vec![0f32; n * c * hp * wp];
        for (plane, src) in x.data.chunks_exact(h * wd).enumerate() {
            let dst = &mut p[plane * hp * wp..(plane + 1) * hp * wp];
            for (y, row) in src.chunks_exact(wd).enumerate() {
                dst[(y + pt) * wp + pl..(y + pt) * wp + pl + wd].copy_from_slice(row);
            }
        }
        p
    };
    let mut out = vec![0f32; n * m * ho * wo];
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(plane, o)| {
            let (img, oc) = (plane / m, plane % m);
            o.fill(b.map_or(0.0, |b| b[oc]));
            let first_ic = (oc / mg) * cg;
            for icg in 0..cg {
                let src = &padded[(img * c + first_ic + icg) * hp * wp..][..hp * wp];
                let taps = &w.data[(oc * cg + icg) * kh * kw..][..kh * kw];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let k = taps[ky * kw + kx];
                        for (oy, orow) in o.chunks_exact_mut(wo).enumerate() {
                            let srow = &src[(oy * sy + ky) * wp + kx..];
                            if sx == 1 {
                                for (d, s) in orow.iter_mut().zip(&srow[..wo]) {
                                    *d += k * s;
                                }
                            } else {
                                for (ox, d) in orow.iter_mut().enumerate() {
                                    *d += k * srow[ox * sx];
                                }
                            }
                        }
                    }
                }
            }
        });
    Tensor::new(vec![n, m, ho, wo], out)
}

/// A dense convolution as one matrix product per image: `W [M, C kh kw] x cols [C kh kw, P]`,
/// where `cols` is the input itself for a 1x1 kernel with stride 1 and no padding. Most of
/// BlazeFace's time is in these products.
fn dense_conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&[f32]>,
    spec: ConvSpec,
    [ho, wo]: [usize; 2],
) -> Tensor {
    let [n, c, h, wd] = x.shape[..] else {
        unreachable!("checked by the caller")
    };
    let [m, _, kh, kw] = w.shape[..] else {
        unreachable!("checked by the caller")
    };
    let [sy, sx] = spec.stride;
    let [pt, pl, _, _] = spec.pads;
    let (k, p) = (c * kh * kw, ho * wo);
    let direct = kh == 1 && kw == 1 && sy == 1 && sx == 1 && spec.pads == [0; 4];
    let mut out = vec![0f32; n * m * p];
    let mut cols = if direct { vec![] } else { vec![0f32; k * p] };
    for img in 0..n {
        let src = &x.data[img * c * h * wd..(img + 1) * c * h * wd];
        if !direct {
            // Row (ci, ky, kx) of `cols` holds that tap's input pixel for every output pixel
            // (zero where the window hangs over the padding).
            cols.par_chunks_mut(p).enumerate().for_each(|(r, row)| {
                let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
                let plane = &src[ci * h * wd..(ci + 1) * h * wd];
                for (oy, orow) in row.chunks_exact_mut(wo).enumerate() {
                    let y = (oy * sy + ky).wrapping_sub(pt);
                    for (ox, d) in orow.iter_mut().enumerate() {
                        let xx = (ox * sx + kx).wrapping_sub(pl);
                        *d = if y < h && xx < wd {
                            plane[y * wd + xx]
                        } else {
                            0.0
                        };
                    }
                }
            });
        }
        let rhs = if direct { src } else { &cols[..] };
        let dst = &mut out[img * m * p..(img + 1) * m * p];
        if let Some(b) = b {
            for (row, &bias) in dst.chunks_exact_mut(p).zip(b) {
                row.fill(bias);
            }
        }
        let threads = rayon::current_num_threads();
        // SAFETY: `dst` is `m x p`, `w.data` is `m x k` and `rhs` is `k x p`, all dense
        // row-major and checked by the caller's shape tests; `dst` is exclusively borrowed.
        unsafe {
            gemm::gemm(
                m,
                p,
                k,
                dst.as_mut_ptr(),
                1,
                p as isize,
                b.is_some(),
                w.data.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                p as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                },
            )
        }
    }
    Tensor::new(vec![n, m, ho, wo], out)
}

/// Max pooling over `[N, C, H, W]` (padding never wins: it counts as minus infinity).
pub fn max_pool2d(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], pads: [usize; 4]) -> Tensor {
    let [n, c, h, w] = x.shape[..] else {
        unreachable!("checked by the caller")
    };
    let ho = out_size(h, pads[0] + pads[2], kernel[0], stride[0]).expect("checked");
    let wo = out_size(w, pads[1] + pads[3], kernel[1], stride[1]).expect("checked");
    let mut out = vec![f32::NEG_INFINITY; n * c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(o, src)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = f32::NEG_INFINITY;
                    for ky in 0..kernel[0] {
                        let y = (oy * stride[0] + ky).wrapping_sub(pads[0]);
                        if y >= h {
                            continue;
                        }
                        for kx in 0..kernel[1] {
                            let xx = (ox * stride[1] + kx).wrapping_sub(pads[1]);
                            if xx < w {
                                best = best.max(src[y * w + xx]);
                            }
                        }
                    }
                    o[oy * wo + ox] = best;
                }
            }
        });
    Tensor::new(vec![n, c, ho, wo], out)
}

/// Permutes the axes: output axis `i` is input axis `perm[i]`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * x.shape[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = Vec::with_capacity(x.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..x.len() {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(x.data[off]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::new(shape, out)
}

/// Joins tensors whose shapes differ only along `axis`.
pub fn concat(xs: &[&Tensor], axis: usize) -> Tensor {
    let outer: usize = xs[0].shape[..axis].iter().product();
    let mut shape = xs[0].shape.clone();
    shape[axis] = xs.iter().map(|t| t.shape[axis]).sum();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for t in xs {
            let block = t.len() / outer.max(1);
            out.extend_from_slice(&t.data[o * block..(o + 1) * block]);
        }
    }
    Tensor::new(shape, out)
}

/// The target shape of `Reshape`: `0` copies the input's dimension, one `-1` is inferred.
pub fn reshape_target(input: &[usize], spec: &[i64]) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => out.push(
                *input
                    .get(i)
                    .ok_or_else(|| format!("0 at axis {i} of a rank-{} input", input.len()))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            _ => return Err(format!("bad target shape {spec:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot infer -1 in {spec:?} for {total} values"));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(format!("{spec:?} does not hold {total} values ({input:?})"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec())
    }

    #[test]
    fn conv_by_hand_with_asymmetric_padding_and_stride() {
        // 1x1x3x3 input 1..9, 2x2 kernel of ones, pads top/left 0 bottom/right 1, stride 2:
        // windows start at (0,0), (0,2), (2,0), (2,2) of the padded 4x4 image.
        let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let w = t(&[1, 1, 2, 2], &[1., 1., 1., 1.]);
        let spec = ConvSpec {
            stride: [2, 2],
            pads: [0, 0, 1, 1],
            group: 1,
        };
        let y = conv2d(&x, &w, Some(&[0.5]), spec);
        assert_eq!(y.shape, vec![1, 1, 2, 2]);
        assert_eq!(y.data, vec![12.5, 9.5, 15.5, 9.5]);
    }

    #[test]
    fn depthwise_conv_keeps_channels_apart() {
        // Two channels, group 2: channel 0 scaled by 2, channel 1 by -1.
        let x = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
        let w = t(&[2, 1, 1, 1], &[2., -1.]);
        let spec = ConvSpec {
            stride: [1, 1],
            pads: [0; 4],
            group: 2,
        };
        assert_eq!(conv2d(&x, &w, None, spec).data, vec![2., 4., -3., -4.]);
    }

    #[test]
    fn dense_conv_sums_over_input_channels() {
        let x = t(&[1, 2, 1, 1], &[3., 5.]);
        let w = t(&[2, 2, 1, 1], &[1., 10., -1., 2.]);
        let spec = ConvSpec {
            stride: [1, 1],
            pads: [0; 4],
            group: 1,
        };
        assert_eq!(conv2d(&x, &w, None, spec).data, vec![53., 7.]);
    }

    #[test]
    fn max_pool_two_by_two() {
        let x = t(&[1, 1, 2, 4], &[1., 5., 2., 0., -1., 3., 8., 7.]);
        let y = max_pool2d(&x, [2, 2], [2, 2], [0; 4]);
        assert_eq!((y.shape, y.data), (vec![1, 1, 1, 2], vec![5., 8.]));
    }

    #[test]
    fn transpose_nhwc_to_nchw_and_back() {
        let x = t(
            &[1, 2, 2, 3],
            &(0..12).map(|v| v as f32).collect::<Vec<_>>(),
        );
        let y = transpose(&x, &[0, 3, 1, 2]);
        assert_eq!(y.shape, vec![1, 3, 2, 2]);
        // Channel 1 of NHWC [h][w][c] = 3*(2h+w)+1.
        assert_eq!(&y.data[4..8], &[1., 4., 7., 10.]);
        assert_eq!(transpose(&y, &[0, 2, 3, 1]), x);
    }

    #[test]
    fn concat_along_channels() {
        let a = t(&[1, 1, 1, 2], &[1., 2.]);
        let b = t(&[1, 2, 1, 2], &[3., 4., 5., 6.]);
        let y = concat(&[&a, &b], 1);
        assert_eq!(
            (y.shape, y.data),
            (vec![1, 3, 1, 2], vec![1., 2., 3., 4., 5., 6.])
        );
    }

    #[test]
    fn reshape_zero_and_minus_one() {
        assert_eq!(
            reshape_target(&[1, 8, 8, 6], &[0, -1, 3]),
            Ok(vec![1, 128, 3])
        );
        assert!(reshape_target(&[1, 8], &[3, -1]).is_err());
        assert!(reshape_target(&[1, 8], &[-1, -1]).is_err());
    }
}
