//! `fer_kernels::conv2d` against candle's own conv2d (forward and autograd gradients) and
//! against finite differences.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{max_abs, uniform, values};
use fer_test_support::{assert_close, Tolerance};

fn randn(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    uniform(rng, dims, -1.0, 1.0)
}

/// Within 1e-5 of the reference's largest magnitude, at least 1.
const TOL: Tolerance = Tolerance::rel(1e-5).floor(1.0);

/// (batch, c_in, h, w, c_out, k, stride, padding)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (1, 1, 5, 5, 1, 3, 1, 1),
    (2, 3, 7, 9, 4, 3, 1, 1),
    (3, 4, 9, 7, 5, 3, 2, 1),
    (2, 3, 15, 13, 6, 7, 2, 3),
    (4, 6, 6, 6, 8, 1, 1, 0),
    (3, 5, 7, 7, 4, 1, 2, 0),
    (1, 8, 3, 3, 16, 3, 1, 1),
    (2, 2, 1, 1, 3, 3, 1, 1),
    // Many images of a tiny map: several images share one GEMM block.
    (37, 16, 3, 3, 8, 3, 1, 1),
    (64, 8, 6, 6, 4, 1, 2, 0),
    // Stride-1 3x3 convs of 10x10 maps and up with channels in eights: the direct kernels on
    // CPUs with AVX-512 (im2col + GEMM elsewhere).
    (3, 8, 12, 11, 16, 3, 1, 1),
    (5, 16, 24, 24, 8, 3, 1, 1),
    // Small maps of a batch in whole sixteens: sixteen images to a vector (AVX-512).
    (32, 8, 6, 6, 16, 3, 1, 1),
    (48, 16, 3, 3, 8, 3, 1, 1),
    // Stride-2 3x3 convs of even maps: the same kernels over the input's 2x2 phases, from
    // tall planes (>= 100 output positions) or sixteen images to a vector.
    (3, 8, 24, 20, 16, 3, 2, 1),
    (64, 8, 12, 12, 8, 3, 2, 1),
];

#[test]
fn forward_and_gradients_match_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(b, c, h, w, o, k, s, p) in CASES {
        let x = Var::from_tensor(&randn(&mut rng, &[b, c, h, w])).unwrap();
        let wt = Var::from_tensor(&randn(&mut rng, &[o, c, k, k])).unwrap();
        let r = randn(
            &mut rng,
            &[b, o, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1],
        );

        let ours = fer_kernels::conv2d(&x, &wt, s, p).unwrap();
        let theirs = x.conv2d(&wt, p, s, 1, 1).unwrap();
        let what = format!("b{b} c{c} {h}x{w} o{o} k{k} s{s} p{p}");
        assert_close(&format!("forward {what}"), &ours, &theirs, TOL);

        let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("dx", &x), ("dw", &wt)] {
            let a = g_ours.get(v).unwrap();
            let e = g_theirs.get(v).unwrap();
            assert_close(&format!("{name} {what}"), a, e, TOL);
        }
    }
}

/// Central differences of `sum(r * conv(x, w))`, accumulated in f64 over the f32 kernel: the
/// function is linear in each argument, so the quotient is exact up to rounding. The last case
/// has no other reference: candle 0.11's own conv2d backward returns an input gradient of the
/// wrong width there (6 instead of 5).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(b, c, h, w, o, k, s, p) in &[
        (2, 3, 6, 5, 4, 3, 2, 1),
        (1, 2, 5, 5, 3, 3, 1, 1),
        (3, 4, 4, 4, 2, 1, 2, 0),
        (5, 2, 4, 5, 3, 3, 2, 0),
        (2, 8, 10, 10, 8, 3, 1, 1),
    ] {
        let x = Var::from_tensor(&randn(&mut rng, &[b, c, h, w])).unwrap();
        let wt = Var::from_tensor(&randn(&mut rng, &[o, c, k, k])).unwrap();
        let r = randn(
            &mut rng,
            &[b, o, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1],
        );
        let f = |x: &Tensor, w: &Tensor| -> f64 {
            let y = fer_kernels::conv2d(x, w, s, p).unwrap();
            (y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let grads = (fer_kernels::conv2d(&x, &wt, s, p).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-2f32;
        for (which, v) in [(0, &x), (1, &wt)] {
            let g: Vec<f32> = values(grads.get(v).unwrap());
            let base: Vec<f32> = values(v);
            // A spread of coordinates, first and last included.
            for i in (0..base.len())
                .step_by((base.len() / 9).max(1))
                .chain([base.len() - 1])
            {
                let bump = |d: f32| {
                    let mut t = base.clone();
                    t[i] += d;
                    Tensor::from_vec(t, v.dims(), &Device::Cpu).unwrap()
                };
                let (plus, minus) = if which == 0 {
                    (f(&bump(eps), &wt), f(&bump(-eps), &wt))
                } else {
                    (f(&x, &bump(eps)), f(&x, &bump(-eps)))
                };
                let fd = (plus - minus) / (2.0 * eps as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 2e-3,
                    "arg {which} index {i}: fd {fd} vs {}",
                    g[i]
                );
            }
        }
    }
}

/// An input that nothing differentiates (the image batch at the stem) gets no gradient, and
/// the weight's gradient is the same as when the input is a variable.
#[test]
fn untracked_input_gets_no_gradient() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = randn(&mut rng, &[2, 3, 9, 9]);
    let wt = Var::from_tensor(&randn(&mut rng, &[4, 3, 7, 7])).unwrap();
    let r = randn(&mut rng, &[2, 4, 5, 5]);
    let loss = |x: &Tensor| {
        (fer_kernels::conv2d(x, &wt, 2, 3).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let plain = loss(&x).backward().unwrap();
    assert!(plain.get(&x).is_none());
    let xv = Var::from_tensor(&x).unwrap();
    let tracked = loss(&xv).backward().unwrap();
    assert_eq!(values(tracked.get(&xv).unwrap()).len(), 2 * 3 * 9 * 9);
    assert_eq!(
        values(plain.get(&wt).unwrap()),
        values(tracked.get(&wt).unwrap())
    );
}

#[test]
fn switch_falls_back_to_candle_and_rejects_bad_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = randn(&mut rng, &[2, 3, 5, 5]);
    let w = randn(&mut rng, &[4, 3, 3, 3]);
    let fast = fer_kernels::conv2d(&x, &w, 1, 1).unwrap();
    fer_kernels::set_enabled(false);
    assert!(!fer_kernels::enabled());
    let plain = fer_kernels::conv2d(&x, &w, 1, 1).unwrap();
    fer_kernels::set_enabled(true);
    assert_close("fused against candle", &fast, &plain, TOL);
    let bad = randn(&mut rng, &[4, 2, 3, 3]);
    let err = fer_kernels::conv2d(&x, &bad, 1, 1).unwrap_err().to_string();
    assert!(err.contains("do not fit"), "{err}");
}

#[test]
fn an_empty_batch_gives_an_empty_output_and_gradients() {
    let x =
        Var::from_tensor(&Tensor::zeros((0, 3, 5, 5), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let w = Var::from_tensor(&randn(&mut rng, &[4, 3, 3, 3])).unwrap();
    let y = fer_kernels::conv2d(&x, &w, 2, 1).unwrap();
    assert_eq!(y.dims(), [0, 4, 3, 3]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(&x).unwrap().dims(), [0, 3, 5, 5]);
    // No images, no weight gradient.
    assert_eq!(max_abs(grads.get(&w).unwrap()), 0.0);
}
