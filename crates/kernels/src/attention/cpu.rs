//! The CPU kernel: one GEMM for all scores and one pass per image forward; one pass per image
//! and two GEMMs backward.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Dims;
use crate::support::matmul::{gemm, Mat};
use crate::support::storage::{gemm_threads, slice, with_data};
use crate::support::tanh::tanh_in_place;

/// The fused op over `(p [B, N, d], w [a, d], bv [2, a])`; its output is flat:
/// `[u_0 g_0 u_1 g_1 ... | alpha_0 alpha_1 ...]`.
pub(super) struct PositionAttentionOp {
    pub dims: Dims,
    /// `tanh(W p_n + b)` of every position, `[B*N, a]`, kept from the forward for the backward
    /// (it saves a third GEMM; the graph already keeps `p`, which is twice as large at a = d/2).
    pub tanh: OnceLock<Vec<f32>>,
}

impl CustomOp3 for PositionAttentionOp {
    fn name(&self) -> &'static str {
        "fer-position-attention"
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
        let (p, w, bv) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (out, tanh) = forward(self.dims, p, w, bv);
        let _ = self.tanh.set(tanh);
        Ok((CpuStorage::F32(out), Shape::from(self.dims.packed_len())))
    }

    fn bwd(
        &self,
        p: &Tensor,
        w: &Tensor,
        bv: &Tensor,
        res: &Tensor,
        dres: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims;
        let (dp, dw, dbv) = with_data(p, |p| {
            with_data(w, |w| {
                with_data(bv, |bv| {
                    with_data(res, |out| {
                        with_data(dres, |dout| {
                            let recomputed;
                            let tanh = match self.tanh.get() {
                                Some(t) => t,
                                None => {
                                    recomputed = forward(dims, p, w, bv).1;
                                    &recomputed
                                }
                            };
                            Ok(backward(dims, p, w, bv, tanh, out, dout))
                        })
                    })
                })
            })
        })?;
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dp, p.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(dbv, bv.shape(), dev)?),
        ))
    }
}

/// Numerically stable softmax of `e`, in place.
fn softmax(e: &mut [f32]) {
    let max = e.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for x in e.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in e.iter_mut() {
        *x /= sum;
    }
}

/// Returns the packed output and the tanh activations `[B*N, a]`.
fn forward(dm: Dims, p: &[f32], w: &[f32], bv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, n, d, a } = dm;
    let (bias, v) = bv.split_at(a);
    // All scores' pre-activations at once: one large GEMM beats B small ones.
    let mut t = vec![0f32; b * n * a];
    let pm = Mat::row_major(p, b * n, d);
    gemm(
        &mut t,
        false,
        pm,
        Mat::row_major(w, a, d).t(),
        gemm_threads(),
    );
    let mut out = vec![0f32; dm.packed_len()];
    let (ug, alpha) = out.split_at_mut(b * 2 * d);
    ug.par_chunks_mut(2 * d)
        .zip(alpha.par_chunks_mut(n))
        .zip(t.par_chunks_mut(n * a))
        .enumerate()
        .for_each(|(i, ((ug, al), tb))| {
            for row in tb.chunks_exact_mut(a) {
                row.iter_mut().zip(bias).for_each(|(x, &bb)| *x += bb);
            }
            tanh_in_place(tb);
            for (row, e) in tb.chunks_exact(a).zip(al.iter_mut()) {
                *e = row.iter().zip(v).map(|(x, vv)| x * vv).sum();
            }
            softmax(al);
            let (u, g) = ug.split_at_mut(d);
            for (pr, &wt) in p[i * n * d..(i + 1) * n * d].chunks_exact(d).zip(al.iter()) {
                for ((uu, gg), &x) in u.iter_mut().zip(g.iter_mut()).zip(pr) {
                    *uu += wt * x;
                    *gg += x;
                }
            }
            let inv = 1.0 / n as f32;
            g.iter_mut().for_each(|x| *x *= inv);
        });
    (out, t)
}

/// Gradients `(dp, dw, dbv)` from the packed output gradient `dout`.
///
/// Per position: `dalpha_n += p_n . du`, `de_n = alpha_n (dalpha_n - sum_m alpha_m dalpha_m)`,
/// `ds_n = de_n v * (1 - t_n^2)`, `dp_n = alpha_n du + dg / N + W^T ds_n`; then
/// `dW = sum_n ds_n p_n^T`, `db = sum_n ds_n`, `dv = sum_n de_n t_n`.
fn backward(
    dm: Dims,
    p: &[f32],
    w: &[f32],
    bv: &[f32],
    tanh: &[f32],
    out: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { b, n, d, a } = dm;
    let v = &bv[a..];
    let (alpha, dug) = (&out[b * 2 * d..], &dout[..b * 2 * d]);
    let dalpha_in = &dout[b * 2 * d..];
    let mut dp = vec![0f32; b * n * d];
    let mut ds = vec![0f32; b * n * a];
    // Per image: `[db ; dv]`, summed over images afterwards.
    let mut partial = vec![0f32; b * 2 * a];
    dp.par_chunks_mut(n * d)
        .zip(ds.par_chunks_mut(n * a))
        .zip(partial.par_chunks_mut(2 * a))
        .enumerate()
        .for_each(|(i, ((dpb, dsb), part))| {
            let pb = &p[i * n * d..(i + 1) * n * d];
            let tb = &tanh[i * n * a..(i + 1) * n * a];
            let al = &alpha[i * n..(i + 1) * n];
            let (du, dg) = dug[i * 2 * d..(i + 1) * 2 * d].split_at(d);
            let mut dal: Vec<f32> = dalpha_in[i * n..(i + 1) * n].to_vec();
            for (x, pr) in dal.iter_mut().zip(pb.chunks_exact(d)) {
                *x += pr.iter().zip(du).map(|(a, b)| a * b).sum::<f32>();
            }
            let c: f32 = al.iter().zip(&dal).map(|(a, b)| a * b).sum();
            let (db, dv) = part.split_at_mut(a);
            let inv = 1.0 / n as f32;
            let rows = dpb.chunks_exact_mut(d).zip(dsb.chunks_exact_mut(a));
            for (k, (dpr, dsr)) in rows.enumerate() {
                let de = al[k] * (dal[k] - c);
                let tr = &tb[k * a..(k + 1) * a];
                for j in 0..a {
                    let t = tr[j];
                    dv[j] += de * t;
                    let s = de * v[j] * (1.0 - t * t);
                    dsr[j] = s;
                    db[j] += s;
                }
                for ((x, &u), &g) in dpr.iter_mut().zip(du).zip(dg) {
                    *x = al[k] * u + g * inv;
                }
            }
        });
    let threads = gemm_threads();
    let dsm = Mat::row_major(&ds, b * n, a);
    gemm(&mut dp, true, dsm, Mat::row_major(w, a, d), threads);
    let mut dw = vec![0f32; a * d];
    gemm(
        &mut dw,
        false,
        dsm.t(),
        Mat::row_major(p, b * n, d),
        threads,
    );
    let mut dbv = vec![0f32; 2 * a];
    for part in partial.chunks_exact(2 * a) {
        dbv.iter_mut().zip(part).for_each(|(s, x)| *s += x);
    }
    (dp, dw, dbv)
}
