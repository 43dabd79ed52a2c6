//! Helpers shared by the kernel tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use fer_test_support::Tolerance;
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

/// A variable holding `t` in f64 (for references computed in double precision).
pub fn f64_var(t: &Tensor) -> Var {
    Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()
}

/// The kernels' tolerance against a reference: every element within 1e-5 of the reference's
/// largest magnitude (at least 1e-3).
pub const TOL: Tolerance = Tolerance::rel(1e-5).floor(1e-3);
