//! Helpers shared by the kernel tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A CPU tensor of uniform values in `lo..hi`.
pub fn uniform(rng: &mut ChaCha8Rng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// All values, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The largest absolute value.
pub fn max_abs(t: &Tensor) -> f32 {
    values(t).iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The largest absolute difference of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// A variable holding `t` in f64 (for references computed in double precision).
pub fn f64_var(t: &Tensor) -> Var {
    Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()
}

/// Every element of `got` within 1e-5 of `want`'s largest magnitude (at least 1e-3) of `want`,
/// which may be f64.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let (g, w) = (values(got), values(&want.to_dtype(DType::F32).unwrap()));
    let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "{what}[{i}]: {a} vs {b} (scale {scale})"
        );
    }
}
