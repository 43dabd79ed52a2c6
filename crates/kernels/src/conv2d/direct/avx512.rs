//! The AVX-512 inner loops of the direct 3x3 conv (see the parent module for the layout).
//!
//! Both loops read shifted windows of zero-padded planes straight from memory: no column
//! matrix is built and no operand is packed beyond the weights' `[K, 8]` panels.

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Output channels per forward block: eight broadcast weights against `NV` vectors of
/// positions keep `8 * NV` accumulators in registers (24 of the 32 at `NV = 3`).
pub(super) const MR: usize = 8;
/// Floats per vector.
pub(super) const LANES: usize = 16;

/// `out[r][p0 + i] = sum_k w[k][r] * x[offs[k] + p0 + i]` for `r < 8`, `i < 16 * NV`:
/// eight output rows (`ld` apart) of a conv over padded planes whose taps sit at `offs`.
///
/// # Safety
/// The CPU has AVX-512F; `w` holds `offs.len() * 8` floats; `x` is readable at
/// `offs[k] + p0 .. offs[k] + p0 + 16 * NV` for every `k`; `out` is writable at
/// `r * ld + p0 .. r * ld + p0 + 16 * NV` for `r < 8`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward_block<const NV: usize>(
    w: *const f32,
    x: *const f32,
    offs: &[usize],
    p0: usize,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let x = x.add(p0);
    for (k, &off) in offs.iter().enumerate() {
        let src = x.add(off);
        let mut xv = [_mm512_setzero_ps(); NV];
        for (v, xv) in xv.iter_mut().enumerate() {
            *xv = _mm512_loadu_ps(src.add(LANES * v));
        }
        let wk = w.add(k * MR);
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*wk.add(r));
            for (a, xv) in acc.iter_mut().zip(&xv) {
                *a = _mm512_fmadd_ps(b, *xv, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let dst = out.add(r * ld + p0);
        for (v, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.add(LANES * v), *a);
        }
    }
}

/// Adds to `dw[m][ki * 3 + kj]` the sum over positions `i < 16 * vecs` of
/// `dy[m * dy_ld + i] * x[ki * wp + kj + i]`: the weight gradient of `MO` output channels
/// against the nine taps of one input channel.
///
/// # Safety
/// The CPU has AVX-512F; every address named above is readable.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_block<const MO: usize>(
    dy: *const f32,
    dy_ld: usize,
    x: *const f32,
    wp: usize,
    vecs: usize,
    dw: &mut [[f32; 9]; MO],
) {
    let mut acc: [[__m512; 9]; MO] = [[_mm512_setzero_ps(); 9]; MO];
    // One pointer per kernel row, the column as a constant displacement: with a pointer per
    // tap the loop ran out of general registers and spilled the accumulators.
    let rows = [x, x.add(wp), x.add(2 * wp)];
    for i in 0..vecs {
        let p = i * LANES;
        let mut d = [_mm512_setzero_ps(); MO];
        for (m, d) in d.iter_mut().enumerate() {
            *d = _mm512_loadu_ps(dy.add(m * dy_ld + p));
        }
        for (ki, row) in rows.iter().enumerate() {
            for kj in 0..3 {
                let xv = _mm512_loadu_ps(row.add(p + kj));
                for (acc, d) in acc.iter_mut().zip(&d) {
                    acc[ki * 3 + kj] = _mm512_fmadd_ps(*d, xv, acc[ki * 3 + kj]);
                }
            }
        }
    }
    // Stored first and reduced from memory: reducing the registers straight after the loop
    // made the allocator spill the accumulators inside it.
    let mut sums = [[[0f32; LANES]; 9]; MO];
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (s, a) in sums.iter_mut().zip(acc) {
            _mm512_storeu_ps(s.as_mut_ptr(), *a);
        }
    }
    for (dw, sums) in dw.iter_mut().zip(&sums) {
        for (d, s) in dw.iter_mut().zip(sums) {
            *d += s.iter().sum::<f32>();
        }
    }
}
