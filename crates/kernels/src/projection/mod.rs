//! The first-level attention's position projection as one op: `p [B, N, d]` from a feature map
//! `f [B, C, H, W]`, `p[b, n] = W f[b, :, n] + bias` at each of the `N = H * W` positions.
//!
//! Written with candle's ops this is flatten, transpose, a copy into `[B*N, C]`, a matmul and a
//! broadcast add; their backward adds each gradient into a fresh zero tensor, one of them through
//! a transposed (strided) view. Here the map is read in place: per image one GEMM with the map
//! as a transposed view, the input gradient written straight back in `[C, N]` layout.
mod cpu;

use candle_core::{Result, Tensor};

use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;

/// `p [B, H*W, d]` with `p[b, n, :] = w f[b, :, n] + bias` for `f [B, C, H, W]`, `w [d, C]`,
/// `bias [d]`: a linear map of every position's channel vector (a 1x1 convolution whose output
/// lists positions first). Differentiable in all three inputs.
///
/// On the CPU in f32 (kernels on) one op; elsewhere the same maths with candle's ops.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let dev = Device::Cpu;
/// let f = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev)?)?;
/// let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (6, 3), &dev)?)?;
/// let b = Tensor::zeros(6, candle_core::DType::F32, &dev)?;
/// let p = fer_kernels::position_projection(&f, &w, &b)?;
/// assert_eq!(p.dims(), &[2, 20, 6]);
/// let grads = p.sum_all()?.backward()?;
/// assert_eq!(grads.get(&f).unwrap().dims(), &[2, 3, 4, 5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn position_projection(f: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let dims = Dims::check(f, w, bias)?;
    match backend(Op::PositionProjection, &[f, w, bias]) {
        Backend::Cpu => {
            f.contiguous()?
                .apply_op3(&w.contiguous()?, &bias.contiguous()?, cpu::Projection(dims))
        }
        Backend::Cuda | Backend::Candle => projection_plain(f, w, bias),
    }
}

/// The same with candle's generic ops (other devices and dtypes, or kernels switched off).
fn projection_plain(f: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, _, _) = f.dims4()?;
    let positions = f.flatten_from(2)?.transpose(1, 2)?;
    let n = positions.dim(1)?;
    positions
        .reshape((b * n, c))?
        .matmul(&w.t()?)?
        .broadcast_add(bias)?
        .reshape((b, n, w.dim(0)?))
}

/// Sizes: `b` images, `c` channels, `n` positions, `d` outputs per position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub c: usize,
    pub n: usize,
    pub d: usize,
}

impl Dims {
    fn check(f: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Self> {
        let err = || KernelError::ProjectionShapes {
            f: f.dims().to_vec(),
            w: w.dims().to_vec(),
            b: bias.dims().to_vec(),
        };
        let (&[b, c, h, wd], &[d, cw]) = (f.dims(), w.dims()) else {
            return Err(err().into());
        };
        if c == 0 || h * wd == 0 || d == 0 || cw != c || bias.dims() != [d] {
            return Err(err().into());
        }
        Ok(Self { b, c, n: h * wd, d })
    }
}
