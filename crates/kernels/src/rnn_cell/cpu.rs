//! The cells as candle ops: CPU loops here, the CUDA launches in `cuda.rs`.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::support::storage::{slice, with_data};

#[inline(always)]
fn sig(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Rows per parallel task: enough work to pay for the task.
fn min_rows(h: usize) -> usize {
    (4096 / h.max(1)).max(1)
}

pub(super) struct LstmCell {
    pub b: usize,
    pub h: usize,
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
        super::cuda::cell_forward(
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
        let (b, h) = (self.b, self.h);
        #[cfg(feature = "cuda")]
        if gx.device().is_cuda() {
            let shapes = [gx.shape(), c.shape()];
            let ins = [gx, gh, c, res, dres];
            let mut g = super::cuda::cell_backward("fer_lstm_bwd", (b, h), &ins, &shapes)?;
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

pub(super) struct GruCell {
    pub b: usize,
    pub h: usize,
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
        super::cuda::cell_forward(
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
        let (b, h) = (self.b, self.h);
        #[cfg(feature = "cuda")]
        if gx.device().is_cuda() {
            let shapes = [gx.shape(), gh.shape(), hp.shape()];
            let ins = [gx, gh, hp, dres];
            let mut g = super::cuda::cell_backward("fer_gru_bwd", (b, h), &ins, &shapes)?;
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
