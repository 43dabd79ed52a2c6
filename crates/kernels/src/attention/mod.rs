//! First-level (position) attention pooling as one op: scores, softmax over positions, the
//! weighted sum and the mean.
//!
//! Written with candle's generic ops this is a dozen graph nodes (matmul, bias, tanh, matmul,
//! softmax's five, a batched matmul, a mean), each a pass over `[B, N, a]` or `[B, N, d]`, and
//! autograd doubles them. Here the forward is one GEMM for all scores plus one pass per image;
//! the backward is one pass per image plus two GEMMs, reusing the forward's tanh activations.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor, D};

use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;

/// What [`position_attention`] returns.
#[derive(Debug, Clone)]
pub struct AttentionPool {
    /// Attention-weighted sum of the positions, `u = sum_n alpha_n p_n`, `[B, d]`.
    pub u: Tensor,
    /// Mean of the positions, `g = mean_n p_n`, `[B, d]`.
    pub g: Tensor,
    /// `[u ; g]` side by side, `[B, 2d]` (what the fuse layer takes; no extra copy).
    pub ug: Tensor,
    /// Attention weights over positions, `[B, N]`; each row sums to 1.
    pub alpha: Tensor,
}

/// Sizes: `b` images, `n` positions, `d` features per position, `a` attention width.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub n: usize,
    pub d: usize,
    pub a: usize,
}

impl Dims {
    fn check(p: &Tensor, w: &Tensor, bias: &Tensor, v: &Tensor) -> Result<Self> {
        let err = || KernelError::AttentionShapes {
            p: p.dims().to_vec(),
            w: w.dims().to_vec(),
            b: bias.dims().to_vec(),
            v: v.dims().to_vec(),
        };
        let (&[b, n, d], &[a, dw]) = (p.dims(), w.dims()) else {
            return Err(err().into());
        };
        if n == 0 || d == 0 || a == 0 || dw != d || bias.dims() != [a] || v.dims() != [a] {
            return Err(err().into());
        }
        Ok(Self { b, n, d, a })
    }

    /// Floats per image in the packed output: `u`, `g`, then (in a second block) `alpha`.
    fn packed_len(&self) -> usize {
        self.b * (2 * self.d + self.n)
    }
}

/// First-level attention pooling of `p [B, N, d]` (one d-vector per position):
/// `e_n = v^T tanh(W p_n + b)` with `w [a, d]`, `b [a]`, `v [a]`, `alpha = softmax_n(e)`,
/// `u = sum_n alpha_n p_n`, `g = mean_n p_n`. Differentiable in all four inputs.
///
/// On the CPU in f32 (kernels on) one fused op; elsewhere the same maths with candle's ops.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let dev = Device::Cpu;
/// let p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?)?;
/// let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (3, 4), &dev)?)?;
/// let (b, v) = (Tensor::zeros(3, candle_core::DType::F32, &dev)?, Tensor::ones(3, candle_core::DType::F32, &dev)?);
/// let pool = fer_kernels::position_attention(&p, &w, &b, &v)?;
/// assert_eq!(pool.ug.dims(), &[2, 8]);
/// let rows = pool.alpha.sum(1)?.to_vec1::<f32>()?;
/// assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-6));
/// let grads = pool.u.sum_all()?.backward()?;
/// assert_eq!(grads.get(&w).unwrap().dims(), &[3, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn position_attention(p: &Tensor, w: &Tensor, b: &Tensor, v: &Tensor) -> Result<AttentionPool> {
    let dims = Dims::check(p, w, b, v)?;
    // Bias and score vector travel as one `[2, a]` input (a CustomOp takes three).
    let out = match backend(Op::PositionAttention, &[p, w, b, v]) {
        Backend::Cpu => {
            let op = cpu::PositionAttentionOp {
                dims,
                tanh: Default::default(),
            };
            let bv = Tensor::stack(&[b, v], 0)?;
            p.contiguous()?.apply_op3(&w.contiguous()?, &bv, op)?
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => cuda::scores_then_pool(dims, p, w, &Tensor::stack(&[b, v], 0)?)?,
        _ => return position_attention_plain(p, w, b, v),
    };
    let Dims { b, n, d, .. } = dims;
    let ug = out.narrow(0, 0, b * 2 * d)?.reshape((b, 2 * d))?;
    Ok(AttentionPool {
        u: ug.narrow(1, 0, d)?,
        g: ug.narrow(1, d, d)?,
        alpha: out.narrow(0, b * 2 * d, b * n)?.reshape((b, n))?,
        ug,
    })
}

/// The same with candle's generic ops (other devices and dtypes, or kernels switched off).
fn position_attention_plain(
    p: &Tensor,
    w: &Tensor,
    b: &Tensor,
    v: &Tensor,
) -> Result<AttentionPool> {
    let (bs, n, d) = p.dims3()?;
    let e = p
        .reshape((bs * n, d))?
        .matmul(&w.t()?)?
        .broadcast_add(b)?
        .tanh()?
        .matmul(&v.unsqueeze(1)?)?
        .reshape((bs, n))?;
    let alpha = candle_nn::ops::softmax(&e, D::Minus1)?;
    let u = alpha.unsqueeze(1)?.matmul(p)?.squeeze(1)?;
    let g = p.mean(1)?;
    let ug = Tensor::cat(&[&u, &g], 1)?;
    Ok(AttentionPool { u, g, ug, alpha })
}
