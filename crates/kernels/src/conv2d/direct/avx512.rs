//! The AVX-512 inner loops of the direct 3x3 conv (see the parent module for the layout).
//!
//! Both loops read shifted windows of zero-padded planes straight from memory: no column
//! matrix is built and no operand is packed beyond the weights' `[K, 8]` panels.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4,
    _mm512_shuffle_ps, _mm512_storeu_ps, _mm512_unpackhi_ps, _mm512_unpacklo_ps,
};

/// Output channels per forward block: eight broadcast weights against `NV` vectors of
/// positions keep `8 * NV` accumulators in registers (24 of the 32 at `NV = 3`).
pub(super) const MR: usize = 8;
/// Floats per vector.
pub(super) const LANES: usize = 16;

/// `out[r * ld + i] (+)= sum_k w[k][r] * x[offs[k] + i]` for `r < 8`, `i < 16 * NV`: eight
/// output rows (`ld` apart) of a conv over padded planes whose taps sit at `offs` from `x`;
/// added to what `out` holds when `accumulate`.
///
/// # Safety
/// The CPU has AVX-512F; `w` holds `offs.len() * 8` floats; `x` is readable at
/// `offs[k] .. offs[k] + 16 * NV` for every `k`; `out` is writable (and readable, when
/// `accumulate`) at `r * ld .. r * ld + 16 * NV` for `r < 8`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward_block<const NV: usize>(
    w: *const f32,
    x: *const f32,
    offs: &[usize],
    out: *mut f32,
    ld: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            let src = out.add(r * ld);
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(src.add(LANES * v));
            }
        }
    }
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
        let dst = out.add(r * ld);
        for (v, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.add(LANES * v), *a);
        }
    }
}

/// [`forward_block`] for `nv` (1 to 3) vectors of positions.
///
/// # Safety
/// As [`forward_block`] with `NV = nv`.
pub(super) unsafe fn forward_block_nv(
    nv: usize,
    w: *const f32,
    x: *const f32,
    offs: &[usize],
    out: *mut f32,
    ld: usize,
    accumulate: bool,
) {
    match nv {
        3 => forward_block::<3>(w, x, offs, out, ld, accumulate),
        2 => forward_block::<2>(w, x, offs, out, ld, accumulate),
        _ => forward_block::<1>(w, x, offs, out, ld, accumulate),
    }
}

/// Adds to `dw[m][ki * 3 + kj]` the sum over positions `i < 16 * vecs` of
/// `dy[m * dy_ld + i] * x[rows[ki] + cols[kj] + i]`: the weight gradient of `MO` output
/// channels against the nine taps of one input channel (at stride 1 `rows = [0, wp, 2 * wp]`
/// and `cols = [0, 1, 2]`; at stride 2 they reach into the channel's phase planes).
///
/// # Safety
/// The CPU has AVX-512F; every address named above is readable.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_block<const MO: usize>(
    dy: *const f32,
    dy_ld: usize,
    x: *const f32,
    (rows, cols): ([usize; 3], [usize; 3]),
    vecs: usize,
    dw: &mut [[f32; 9]; MO],
) {
    let mut acc: [[__m512; 9]; MO] = [[_mm512_setzero_ps(); 9]; MO];
    // One pointer per kernel row and one per kernel column: with a pointer per tap the loop
    // ran out of general registers and spilled the accumulators.
    let rows = rows.map(|r| x.add(r));
    for i in 0..vecs {
        let p = i * LANES;
        let mut d = [_mm512_setzero_ps(); MO];
        for (m, d) in d.iter_mut().enumerate() {
            *d = _mm512_loadu_ps(dy.add(m * dy_ld + p));
        }
        for (ki, row) in rows.iter().enumerate() {
            for (kj, col) in cols.iter().enumerate() {
                let xv = _mm512_loadu_ps(row.add(p + col));
                for (acc, d) in acc.iter_mut().zip(&d) {
                    acc[ki * 3 + kj] = _mm512_fmadd_ps(*d, xv, acc[ki * 3 + kj]);
                }
            }
        }
    }
    finish(&acc, dw);
}

/// Adds to `dw[m][ki * 3 + kj]` the sum over groups `j < groups`, positions `(oy, ox)` of a
/// `h x w` map and lanes `l` of `dy[m * dy_ld + j * step + ((oy + 1) * wp + ox + 1) * 16 + l] *
/// x[j * step + rows[ki] + cols[kj] + (oy * wp + ox) * 16 + l]`: [`weight_block`] over padded
/// planes that hold one position of sixteen images per vector, `step` apart per sixteen images
/// (at stride 1 `rows = [0, 16 * wp, 32 * wp]`, `cols = [0, 16, 32]`).
///
/// # Safety
/// The CPU has AVX-512F; every address named above is readable.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn lanes_weight_block<const MO: usize>(
    dy: *const f32,
    dy_ld: usize,
    x: *const f32,
    (rows, cols): ([usize; 3], [usize; 3]),
    step: usize,
    groups: usize,
    (h, w, wp): (usize, usize, usize),
    dw: &mut [[f32; 9]; MO],
) {
    let mut acc: [[__m512; 9]; MO] = [[_mm512_setzero_ps(); 9]; MO];
    let row = wp * LANES;
    for j in 0..groups {
        let (dy, x) = (dy.add(j * step), x.add(j * step));
        for oy in 0..h {
            let xr = x.add(oy * row);
            let rows = rows.map(|r| xr.add(r));
            let dyr = dy.add((oy + 1) * row + LANES);
            for ox in 0..w {
                let p = ox * LANES;
                let mut d = [_mm512_setzero_ps(); MO];
                for (m, d) in d.iter_mut().enumerate() {
                    *d = _mm512_loadu_ps(dyr.add(m * dy_ld + p));
                }
                for (ki, row) in rows.iter().enumerate() {
                    for (kj, col) in cols.iter().enumerate() {
                        let xv = _mm512_loadu_ps(row.add(p + col));
                        for (acc, d) in acc.iter_mut().zip(&d) {
                            acc[ki * 3 + kj] = _mm512_fmadd_ps(*d, xv, acc[ki * 3 + kj]);
                        }
                    }
                }
            }
        }
    }
    finish(&acc, dw);
}

/// Adds the lane sums of the accumulators to `dw`.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish<const MO: usize>(acc: &[[__m512; 9]; MO], dw: &mut [[f32; 9]; MO]) {
    // Stored first and reduced from memory: reducing the registers straight after the loop
    // made the allocator spill the accumulators inside it.
    let mut lanes = [[0f32; LANES]; 32];
    for (m, acc) in acc.iter().enumerate() {
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(lanes[m * 9 + t].as_mut_ptr(), *a);
        }
    }
    let mut sums = [0f32; 32];
    for (rows, out) in lanes
        .chunks_exact(16)
        .zip(sums.chunks_exact_mut(16))
        .take((MO * 9).div_ceil(16))
    {
        row_sums(rows, out);
    }
    for (m, dw) in dw.iter_mut().enumerate() {
        for (d, s) in dw.iter_mut().zip(&sums[m * 9..]) {
            *d += *s;
        }
    }
}

/// `out[i] = sum(rows[i])` for sixteen rows of sixteen floats: a transposing tree of 15 vector
/// adds (a horizontal sum per row would take 16 dependent scalar adds, which cost a third of a
/// weight-gradient call at 12x12 maps).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn row_sums(rows: &[[f32; LANES]], out: &mut [f32]) {
    assert!(rows.len() >= 16 && out.len() >= 16);
    // The tree leaves row `4 * b + a` in lane `4 * a + b`: feed it the rows transposed so the
    // sums come out in order.
    let v: [__m512; 16] =
        std::array::from_fn(|i| _mm512_loadu_ps(rows[4 * (i % 4) + i / 4].as_ptr()));
    // Halves of 128-bit quarters: pairs of rows into one vector of two half-summed rows...
    let a: [__m512; 8] = std::array::from_fn(|i| {
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
        )
    });
    // ...then one row per quarter, four floats each...
    let b: [__m512; 4] = std::array::from_fn(|i| {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    });
    // ...then within quarters, two floats and one.
    let pairs = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
            _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
        )
    };
    let (c0, c1) = (pairs(b[0], b[1]), pairs(b[2], b[3]));
    _mm512_storeu_ps(out.as_mut_ptr(), pairs(c0, c1));
}

/// `rows` transposed in place: afterwards `rows[i]` holds element `i` of each input row, in
/// row order (three rounds of shuffles: within 128-bit quarters, then quarters of pairs).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose(rows: &mut [__m512; 16]) {
    let r = *rows;
    // Pairs of rows, elements of each quarter interleaved: (a0 b0 a1 b1), (a2 b2 a3 b3).
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // Fours of rows: (a0 b0 c0 d0), (a1 b1 c1 d1), (a2 ..), (a3 ..) in each quarter.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (base, k) = (i & !3, i % 4);
        let (a, b) = (t[base + k / 2], t[base + 2 + k / 2]);
        if k % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // Eights of rows: quarters 0 and 2 (elements 0-3, 8-11 of a column) or 1 and 3.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (half, k) = (i / 8, i % 8);
        let (a, b) = (u[half * 8 + k % 4], u[half * 8 + 4 + k % 4]);
        if k < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
    // All sixteen: column `c` from eights `c % 8` of both halves.
    *rows = std::array::from_fn(|c| {
        let (a, b) = (v[c % 8], v[8 + c % 8]);
        if c < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
}

/// Writes sixteen rows of `n = to.len() <= 16` floats, `src[j * ld .. j * ld + n]` for
/// `j < 16`, as `n` vectors of sixteen: vector `i` (`[src[0 * ld + i], .., src[15 * ld + i]]`)
/// to `dst + to[i]`.
///
/// # Safety
/// The CPU has AVX-512F; `src` is readable at `j * ld .. j * ld + n` and `dst` writable at
/// `to[i] .. to[i] + 16` for `i < n`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gather_columns(src: *const f32, ld: usize, to: &[usize], dst: *mut f32) {
    let mask: __mmask16 = ((1u32 << to.len().min(LANES)) - 1) as __mmask16;
    let mut rows: [__m512; 16] =
        std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, src.add(j * ld)));
    transpose(&mut rows);
    for (v, &to) in rows.iter().zip(to) {
        _mm512_storeu_ps(dst.add(to), *v);
    }
}

/// The inverse of [`gather_columns`]: `n <= 16` vectors of sixteen at `src + i * 16` written
/// as sixteen rows, `dst[j * ld + i]` = element `j` of vector `i`.
///
/// # Safety
/// The CPU has AVX-512F; `src` is readable at `0 .. 16 * n` and `dst` writable at
/// `j * ld .. j * ld + n` for `j < 16`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scatter_columns(src: *const f32, n: usize, dst: *mut f32, ld: usize) {
    let mask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
    let mut rows: [__m512; 16] = std::array::from_fn(|i| {
        if i < n {
            _mm512_loadu_ps(src.add(i * LANES))
        } else {
            _mm512_setzero_ps()
        }
    });
    transpose(&mut rows);
    for (j, v) in rows.iter().enumerate() {
        _mm512_mask_storeu_ps(dst.add(j * ld), mask, *v);
    }
}
