//! The optimizer updates as in-place passes over CPU f32 buffers, and the gradient norm read
//! straight from them.
//!
//! Written with tensor ops, one AdamW update is a dozen ops per variable, each allocating and
//! filling a fresh tensor the size of the variable: for ResNet-18 that is over a gigabyte of
//! memory traffic and page faults per step. Here each update is two or three passes that write
//! into the existing buffers. Every formula repeats the tensor-op path's f32 arithmetic in the
//! same order (candle's `affine(mul, add)` is `x * mul + add` with both cast to f32), so both
//! paths give the same bits and the PyTorch replay tests cover this one.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk: small variables (biases) stay on one thread.
const CHUNK: usize = 1 << 15;

/// Whether the in-place passes apply: every tensor a contiguous f32 CPU tensor.
pub(crate) fn usable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// A contiguous f32 storage's data, or an error naming the update it was for.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> candle_core::Result<&'a [f32]> {
    fer_kernels::storage::slice(s, l).map_err(|e| e.context(name.to_string()))
}

fn slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    name: &str,
) -> candle_core::Result<&'a mut [f32]> {
    fer_kernels::storage::slice_mut(s, l).map_err(|e| e.context(name.to_string()))
}

fn check_len(name: &str, dst: usize, srcs: &[usize]) -> candle_core::Result<()> {
    if srcs.iter().any(|&n| n != dst) {
        bail!("{name}: {dst} elements to update but sources of {srcs:?}")
    }
    Ok(())
}

/// The sum of squares of a contiguous CPU f32 tensor, accumulated in f64 straight from its
/// buffer (`None` for any other tensor): the tensor route converts the whole gradient to f64
/// first, an allocation per variable and step.
pub(crate) fn sum_sq(t: &Tensor) -> Option<f64> {
    if !usable(&[t]) {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let data = slice(cpu, layout, "gradient").ok()?;
    // Chunk sums added in chunk order: the same bits whichever thread ran which chunk.
    let partial: Vec<f64> = data
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        .collect();
    Some(partial.iter().sum())
}

/// The destination and one source of an in-place op as equally long f32 slices.
fn operands2<'a>(
    op: &str,
    (s1, l1): (&'a mut CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a mut [f32], &'a [f32])> {
    let (d, a) = (slice_mut(s1, l1, op)?, slice(s2, l2, op)?);
    check_len(op, d.len(), &[a.len()])?;
    Ok((d, a))
}

/// The destination and two sources of an in-place op as equally long f32 slices.
fn operands3<'a>(
    op: &str,
    (s1, l1): (&'a mut CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a mut [f32], &'a [f32], &'a [f32])> {
    let (d, a, b) = (
        slice_mut(s1, l1, op)?,
        slice(s2, l2, op)?,
        slice(s3, l3, op)?,
    );
    check_len(op, d.len(), &[a.len(), b.len()])?;
    Ok((d, a, b))
}

/// `dst[i] = f(dst[i], a[i])`, chunked over the rayon pool.
fn zip1(dst: &mut [f32], a: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(d, a)| d.iter_mut().zip(a).for_each(|(d, &a)| *d = f(*d, a)));
}

/// `dst[i] = f(dst[i], a[i], b[i])`, chunked over the rayon pool.
fn zip2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((d, a), b)| {
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = f(*d, a, b);
            }
        });
}

/// Adam moment: `m = m * beta + g * (1 - beta)`, or with `g * g` for the second moment.
pub(crate) struct Moment {
    pub beta: f64,
    pub square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g) = operands2(self.name(), (s1, l1), (s2, l2))?;
        let (beta, rest) = (self.beta as f32, (1.0 - self.beta) as f32);
        if self.square {
            zip1(m, g, |m, g| m * beta + (g * g) * rest);
        } else {
            zip1(m, g, |m, g| m * beta + g * rest);
        }
        Ok(())
    }
}

/// AdamW's parameter update from the moments:
/// `p = p * decay - (m * step) / (sqrt(v) * inv_sqrt_bc2 + eps)`.
pub(crate) struct AdamwApply {
    pub decay: f64,
    pub step: f64,
    pub inv_sqrt_bc2: f64,
    pub eps: f64,
}

impl InplaceOp3 for AdamwApply {
    fn name(&self) -> &'static str {
        "adamw-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, m, v) = operands3(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        let (decay, step) = (self.decay as f32, self.step as f32);
        let (scale, eps) = (self.inv_sqrt_bc2 as f32, self.eps as f32);
        zip2(p, m, v, |p, m, v| {
            p * decay - (m * step) / (v.sqrt() * scale + eps)
        });
        Ok(())
    }
}

/// SGD's momentum buffer: `d = d * momentum + (g + p * wd)`; without momentum (or on the
/// first step, where PyTorch starts the buffer at the gradient) `d = g + p * wd`.
pub(crate) struct SgdBuffer {
    pub momentum: Option<f64>,
    pub weight_decay: f64,
}

impl InplaceOp3 for SgdBuffer {
    fn name(&self) -> &'static str {
        "sgd-buffer"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (d, g, p) = operands3(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        let wd = self.weight_decay as f32;
        // The tensor path adds no decay term when the decay is 0; adding p * 0 could turn an
        // infinite parameter into NaN where that path would not.
        let decayed = move |g: f32, p: f32| if wd != 0.0 { g + p * wd } else { g };
        match self.momentum {
            Some(mom) => {
                let mom = mom as f32;
                zip2(d, g, p, |d, g, p| d * mom + decayed(g, p));
            }
            None => zip2(d, g, p, |_, g, p| decayed(g, p)),
        }
        Ok(())
    }
}

/// `p = p - d * lr`.
pub(crate) struct Descend {
    pub lr: f64,
}

impl InplaceOp2 for Descend {
    fn name(&self) -> &'static str {
        "descend"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (p, d) = operands2(self.name(), (s1, l1), (s2, l2))?;
        let lr = self.lr as f32;
        zip1(p, d, |p, d| p - d * lr);
        Ok(())
    }
}
