//! A safe face over the `gemm` crate (the matrix kernel candle itself uses on CPU).

use gemm::Parallelism;

/// A read-only strided matrix view: element `(r, c)` lives at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix view out of bounds");
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view (no copy: gemm reads any strides).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = a * b` (or `dst += a * b` when `accumulate`), `dst` dense row-major `a.rows x b.cols`.
pub(crate) fn gemm(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, parallel: usize) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(dst.len() >= m * n, "destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if parallel > 1 {
        Parallelism::Rayon(parallel)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above (and in `row_major`) keep every index the kernel touches,
    // `(r, c) -> r * rs + c * cs` for r < rows, c < cols, inside the borrowed slices; `dst` is
    // exclusively borrowed and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, n, k);
        let mut got = vec![1.0; m * n];
        gemm(
            &mut got,
            false,
            Mat::row_major(&a, m, k),
            Mat::row_major(&b, k, n),
            1,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
        // a^T stored as [k, m] and transposed back must give the same product, added twice.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        gemm(
            &mut got,
            true,
            Mat::row_major(&at, k, m).t(),
            Mat::row_major(&b, k, n),
            2,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 2.0 * w).abs() < 1e-5);
        }
    }
}
