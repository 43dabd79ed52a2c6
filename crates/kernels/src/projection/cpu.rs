//! The CPU kernel: per image one GEMM on the map as a transposed view, forward and backward.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Dims;
use crate::support::matmul::{gemm, Mat};
use crate::support::storage::{slice, with_data};

pub(super) struct Projection(pub Dims);

impl CustomOp3 for Projection {
    fn name(&self) -> &'static str {
        "fer-position-projection"
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
        let Dims { b, n, d, .. } = self.0;
        let p = forward(self.0, slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        Ok((CpuStorage::F32(p), Shape::from((b, n, d))))
    }

    fn bwd(
        &self,
        f: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dp: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.0;
        let (df, dw, db) = with_data(dp, |dp| {
            let df = with_data(w, |w| Ok(input_grad(dm, dp, w)))?;
            let dw = with_data(f, |f| Ok(weight_grad(dm, f, dp)))?;
            Ok((df, dw, bias_grad(dm, dp)))
        })?;
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(df, f.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, bias.shape(), dev)?),
        ))
    }
}

/// Runs `f(image, out)` over `out`'s per-image chunks of `len` floats: images in parallel with
/// one-thread GEMMs when there are enough of them, else one after the other with parallel ones.
fn per_image(out: &mut [f32], len: usize, b: usize, f: impl Fn(usize, &mut [f32], usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    if b >= threads {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, o)| f(i, o, 1));
    } else {
        for (i, o) in out.chunks_mut(len).enumerate() {
            f(i, o, threads);
        }
    }
}

/// `p_b [N, d] = f_b^T w^T + bias`, with `f_b [C, N]` read as a transposed view.
fn forward(dm: Dims, f: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let Dims { b, c, n, d } = dm;
    let mut p = vec![0f32; b * n * d];
    let wt = Mat::row_major(w, d, c).t();
    per_image(&mut p, n * d, b, |i, pb, threads| {
        for row in pb.chunks_exact_mut(d) {
            row.copy_from_slice(bias);
        }
        let fb = Mat::row_major(&f[i * c * n..(i + 1) * c * n], c, n).t();
        gemm(pb, true, fb, wt, threads);
    });
    p
}

/// `df_b [C, N] = w^T dp_b^T`: written in the map's own layout.
fn input_grad(dm: Dims, dp: &[f32], w: &[f32]) -> Vec<f32> {
    let Dims { b, c, n, d } = dm;
    let mut df = vec![0f32; b * c * n];
    let wt = Mat::row_major(w, d, c).t();
    per_image(&mut df, c * n, b, |i, dfb, threads| {
        let dpb = Mat::row_major(&dp[i * n * d..(i + 1) * n * d], n, d).t();
        gemm(dfb, false, wt, dpb, threads);
    });
    df
}

/// `dw [d, C] = sum_b dp_b^T f_b^T`, summed over per-thread partials in a fixed order.
fn weight_grad(dm: Dims, f: &[f32], dp: &[f32]) -> Vec<f32> {
    let Dims { b, c, n, d } = dm;
    if b == 0 {
        return vec![0f32; d * c];
    }
    let threads = rayon::current_num_threads().max(1);
    let groups = threads.min(b);
    let per = b.div_ceil(groups);
    let gemm_threads = if groups < threads { threads } else { 1 };
    let partials: Vec<Vec<f32>> = (0..b.div_ceil(per))
        .into_par_iter()
        .map(|g| {
            let mut dw = vec![0f32; d * c];
            for i in g * per..((g + 1) * per).min(b) {
                let dpb = Mat::row_major(&dp[i * n * d..(i + 1) * n * d], n, d).t();
                let fb = Mat::row_major(&f[i * c * n..(i + 1) * c * n], c, n).t();
                gemm(&mut dw, i > g * per, dpb, fb, gemm_threads);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; d * c];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(s, x)| *s += x);
    }
    dw
}

/// `dbias = sum over images and positions of dp`.
fn bias_grad(dm: Dims, dp: &[f32]) -> Vec<f32> {
    let mut db = vec![0f32; dm.d];
    for row in dp.chunks_exact(dm.d) {
        db.iter_mut().zip(row).for_each(|(s, x)| *s += x);
    }
    db
}
