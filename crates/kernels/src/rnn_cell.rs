//! One step of a PyTorch-compatible LSTM or GRU cell from precomputed gate pre-activations, as
//! one op forward and one backward.
//!
//! Written with candle's ops a step is about ten graph nodes (narrows, sigmoids, tanhs,
//! products, sums), each allocating a `[B, h]` tensor, and the backward twice that; the
//! sequences are short (one step per tapped layer), so the per-node overhead dominates.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use candle_nn::ops::sigmoid;
use rayon::prelude::*;

use crate::error::KernelError;
use crate::fused::{on_cuda, runs_here, slice};

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
    if !(runs_here(&[gx, gh, c]) || on_cuda(&[gx, gh, c])) {
        return lstm_plain(gx, gh, c, h);
    }
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
    if !(runs_here(&[gx, gh, h]) || on_cuda(&[gx, gh, h])) {
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

#[inline(always)]
fn sig(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Rows per parallel task: enough work to pay for the task.
fn min_rows(h: usize) -> usize {
    (4096 / h.max(1)).max(1)
}

struct LstmCell {
    b: usize,
    h: usize,
}

/// The gate activations `(i, f, g, o)` of one unit.
#[inline(always)]
fn lstm_gates(gx: &[f32], gh: &[f32], h: usize, j: usize) -> (f32, f32, f32, f32) {
    let pre = |k: usize| gx[k * h + j] + gh[k * h + j];
    (sig(pre(0)), sig(pre(1)), pre(2).tanh(), sig(pre(3)))
}

impl CustomOp3 for LstmCell {
    fn name(&self) -> &'static str {
        "fer-lstm-cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gx, gh, c) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (b, h) = (self.b, self.h);
        let mut out = vec![0f32; 2 * b * h];
        let (ho, co) = out.split_at_mut(b * h);
        if b * h > 0 {
            ho.par_chunks_mut(h)
                .zip(co.par_chunks_mut(h))
                .enumerate()
                .with_min_len(min_rows(h))
                .for_each(|(r, (hr, cr))| {
                    let (gx, gh) = (&gx[r * 4 * h..][..4 * h], &gh[r * 4 * h..][..4 * h]);
                    for j in 0..h {
                        let (i, f, g, o) = lstm_gates(gx, gh, h, j);
                        cr[j] = f * c[r * h + j] + i * g;
                        hr[j] = o * cr[j].tanh();
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((2, b, h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = (self.b, self.h);
        crate::cuda::cell_forward(
            "fer_lstm_fwd",
            (b, h),
            [(s1, l1), (s2, l2), (s3, l3)],
            (2, b, h),
        )
    }

    fn bwd(
        &self,
        gx: &Tensor,
        gh: &Tensor,
        c: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use crate::op::with_data;
        let (b, h) = (self.b, self.h);
        #[cfg(feature = "cuda")]
        if gx.device().is_cuda() {
            let shapes = [gx.shape(), c.shape()];
            let ins = [gx, gh, c, res, dres];
            let mut g = crate::cuda::cell_backward("fer_lstm_bwd", (b, h), &ins, &shapes)?;
            let dc = g.pop();
            let dpre = g.pop();
            return Ok((dpre.clone(), dpre, dc));
        }
        let (dpre, dc) = with_data(gx, |gx| {
            with_data(gh, |gh| {
                with_data(c, |c| {
                    with_data(res, |out| {
                        with_data(dres, |dout| Ok(lstm_backward(b, h, gx, gh, c, out, dout)))
                    })
                })
            })
        })?;
        let dpre = Tensor::from_vec(dpre, gx.shape(), &Device::Cpu)?;
        let dc = Tensor::from_vec(dc, c.shape(), &Device::Cpu)?;
        Ok((Some(dpre.clone()), Some(dpre), Some(dc)))
    }
}

/// `(d pre, dc)`: the pre-activation gradient is the same for `gx` and `gh`.
fn lstm_backward(
    b: usize,
    h: usize,
    gx: &[f32],
    gh: &[f32],
    c: &[f32],
    out: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut dpre = vec![0f32; b * 4 * h];
    let mut dc = vec![0f32; b * h];
    if b * h == 0 {
        return (dpre, dc);
    }
    let (cn, (dh, dcn)) = (&out[b * h..], dout.split_at(b * h));
    dpre.par_chunks_mut(4 * h)
        .zip(dc.par_chunks_mut(h))
        .enumerate()
        .with_min_len(min_rows(h))
        .for_each(|(r, (dp, dcr))| {
            let (gx, gh) = (&gx[r * 4 * h..][..4 * h], &gh[r * 4 * h..][..4 * h]);
            for j in 0..h {
                let k = r * h + j;
                let (i, f, g, o) = lstm_gates(gx, gh, h, j);
                let tc = cn[k].tanh();
                let dct = dcn[k] + dh[k] * o * (1.0 - tc * tc);
                dp[j] = dct * g * i * (1.0 - i);
                dp[h + j] = dct * c[k] * f * (1.0 - f);
                dp[2 * h + j] = dct * i * (1.0 - g * g);
                dp[3 * h + j] = dh[k] * tc * o * (1.0 - o);
                dcr[j] = dct * f;
            }
        });
    (dpre, dc)
}

struct GruCell {
    b: usize,
    h: usize,
}

/// `(r, z, n)` of one unit, and `gh_n` (the backward needs it).
#[inline(always)]
fn gru_gates(gx: &[f32], gh: &[f32], h: usize, j: usize) -> (f32, f32, f32, f32) {
    let r = sig(gx[j] + gh[j]);
    let z = sig(gx[h + j] + gh[h + j]);
    let ghn = gh[2 * h + j];
    (r, z, (gx[2 * h + j] + r * ghn).tanh(), ghn)
}

impl CustomOp3 for GruCell {
    fn name(&self) -> &'static str {
        "fer-gru-cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gx, gh, hp) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (b, h) = (self.b, self.h);
        let mut out = vec![0f32; b * h];
        if b * h > 0 {
            out.par_chunks_mut(h)
                .enumerate()
                .with_min_len(min_rows(h))
                .for_each(|(r, hr)| {
                    let (gx, gh) = (&gx[r * 3 * h..][..3 * h], &gh[r * 3 * h..][..3 * h]);
                    for j in 0..h {
                        let (_, z, n, _) = gru_gates(gx, gh, h, j);
                        hr[j] = n + z * (hp[r * h + j] - n);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h) = (self.b, self.h);
        crate::cuda::cell_forward(
            "fer_gru_fwd",
            (b, h),
            [(s1, l1), (s2, l2), (s3, l3)],
            (b, h),
        )
    }

    fn bwd(
        &self,
        gx: &Tensor,
        gh: &Tensor,
        hp: &Tensor,
        _res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use crate::op::with_data;
        let (b, h) = (self.b, self.h);
        #[cfg(feature = "cuda")]
        if gx.device().is_cuda() {
            let shapes = [gx.shape(), gh.shape(), hp.shape()];
            let ins = [gx, gh, hp, dres];
            let mut g = crate::cuda::cell_backward("fer_gru_bwd", (b, h), &ins, &shapes)?;
            let dh = g.pop();
            let dgh = g.pop();
            return Ok((g.pop(), dgh, dh));
        }
        let mut dgx = vec![0f32; b * 3 * h];
        let mut dgh = vec![0f32; b * 3 * h];
        let mut dh = vec![0f32; b * h];
        if b * h > 0 {
            with_data(gx, |gx| {
                with_data(gh, |gh| {
                    with_data(hp, |hp| {
                        with_data(dres, |dout| {
                            dgx.par_chunks_mut(3 * h)
                                .zip(dgh.par_chunks_mut(3 * h))
                                .zip(dh.par_chunks_mut(h))
                                .enumerate()
                                .with_min_len(min_rows(h))
                                .for_each(|(r, ((dx, dhh), dhr))| {
                                    let gxr = &gx[r * 3 * h..][..3 * h];
                                    let ghr = &gh[r * 3 * h..][..3 * h];
                                    for j in 0..h {
                                        let k = r * h + j;
                                        let (rr, z, n, ghn) = gru_gates(gxr, ghr, h, j);
                                        let d = dout[k];
                                        let dan = d * (1.0 - z) * (1.0 - n * n);
                                        let daz = d * (hp[k] - n) * z * (1.0 - z);
                                        let dar = dan * ghn * rr * (1.0 - rr);
                                        dx[j] = dar;
                                        dx[h + j] = daz;
                                        dx[2 * h + j] = dan;
                                        dhh[j] = dar;
                                        dhh[h + j] = daz;
                                        dhh[2 * h + j] = dan * rr;
                                        dhr[j] = d * z;
                                    }
                                });
                            Ok(())
                        })
                    })
                })
            })?;
        }
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dgx, gx.shape(), dev)?),
            Some(Tensor::from_vec(dgh, gh.shape(), dev)?),
            Some(Tensor::from_vec(dh, hp.shape(), dev)?),
        ))
    }
}
