//! One step of a PyTorch-compatible LSTM or GRU cell from precomputed gate pre-activations, as
//! one op forward and one backward.
//!
//! Written with candle's ops a step is about ten graph nodes (narrows, sigmoids, tanhs,
//! products, sums), each allocating a `[B, h]` tensor, and the backward twice that; the
//! sequences are short (one step per tapped layer), so the per-node overhead dominates.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;
use cpu::{GruCell, LstmCell};

fn check(
    op: &'static str,
    gates: usize,
    gx: &Tensor,
    gh: &Tensor,
    s: &Tensor,
) -> Result<(usize, usize)> {
    let err = || KernelError::CellShapes {
        op,
        gates,
        gx: gx.dims().to_vec(),
        gh: gh.dims().to_vec(),
        state: s.dims().to_vec(),
    };
    let &[b, h] = s.dims() else {
        return Err(err().into());
    };
    if gx.dims() != [b, gates * h] || gh.dims() != [b, gates * h] {
        return Err(err().into());
    }
    Ok((b, h))
}

/// One LSTM step, PyTorch gate order (i, f, g, o): with `pre = gx + gh` (`[B, 4h]`, the input
/// and hidden projections with their biases), `c' = f*c + i*g`, `h' = o*tanh(c')`. Returns
/// `(h', c')`, `[B, h]` each; differentiable in `gx`, `gh` and `c`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let (gx, gh) = (Tensor::randn(0f32, 1.0, (2, 12), &dev)?, Tensor::zeros((2, 12), DType::F32, &dev)?);
/// let c = Tensor::zeros((2, 3), DType::F32, &dev)?;
/// let (h, c) = fer_kernels::lstm_cell(&gx, &gh, &c)?;
/// assert_eq!((h.dims(), c.dims()), (&[2, 3][..], &[2, 3][..]));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lstm_cell(gx: &Tensor, gh: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, h) = check("lstm_cell", 4, gx, gh, c)?;
    if backend(Op::LstmCell, &[gx, gh, c]) == Backend::Candle {
        return lstm_plain(gx, gh, c, h);
    }
    // One op for both our devices: its CPU and CUDA halves are `cpu.rs` and `cuda.rs`.
    let out = gx
        .contiguous()?
        .apply_op3(&gh.contiguous()?, &c.contiguous()?, LstmCell { b, h })?;
    // Planes `[2, B, h]`: each output is a contiguous view.
    Ok((out.get(0)?, out.get(1)?))
}

/// One GRU step, PyTorch gate order (r, z, n): `r = sig(gx_r + gh_r)`, `z = sig(gx_z + gh_z)`,
/// `n = tanh(gx_n + r*gh_n)`, `h' = (1 - z)*n + z*h`, with `gx`, `gh` `[B, 3h]` (biases
/// included) and `h` `[B, h]`. Differentiable in all three.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let (gx, gh) = (Tensor::randn(0f32, 1.0, (2, 9), &dev)?, Tensor::zeros((2, 9), DType::F32, &dev)?);
/// let h = Tensor::zeros((2, 3), DType::F32, &dev)?;
/// assert_eq!(fer_kernels::gru_cell(&gx, &gh, &h)?.dims(), &[2, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn gru_cell(gx: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    let (b, hid) = check("gru_cell", 3, gx, gh, h)?;
    if backend(Op::GruCell, &[gx, gh, h]) == Backend::Candle {
        return gru_plain(gx, gh, h, hid);
    }
    gx.contiguous()?
        .apply_op3(&gh.contiguous()?, &h.contiguous()?, GruCell { b, h: hid })
}

/// The LSTM step with candle's generic ops (other devices and dtypes, or kernels off).
fn lstm_plain(gx: &Tensor, gh: &Tensor, c: &Tensor, h: usize) -> Result<(Tensor, Tensor)> {
    let pre = (gx + gh)?;
    let gate = |k: usize| pre.narrow(1, k * h, h);
    let i = sigmoid(&gate(0)?)?;
    let f = sigmoid(&gate(1)?)?;
    let g = gate(2)?.tanh()?;
    let o = sigmoid(&gate(3)?)?;
    let c = ((f * c)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// The GRU step with candle's generic ops.
fn gru_plain(gx: &Tensor, gh: &Tensor, h: &Tensor, hid: usize) -> Result<Tensor> {
    let gate = |t: &Tensor, k: usize| t.narrow(1, k * hid, hid);
    let r = sigmoid(&(gate(gx, 0)? + gate(gh, 0)?)?)?;
    let z = sigmoid(&(gate(gx, 1)? + gate(gh, 1)?)?)?;
    let n = (gate(gx, 2)? + (r * gate(gh, 2)?)?)?.tanh()?;
    // (1 - z)*n + z*h, written as n + z*(h - n) to save an op.
    n.clone() + (z * (h - n)?)?
}
