//! `fer_kernels::conv_bn_train` against the two ops it fuses (`conv2d` then
//! `batch_norm_train`, each tested on its own against candle and finite differences), and by
//! finite differences.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{uniform, values};

/// The largest absolute difference, relative to the largest value of `want` (at least 1).
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The gradients of `sum(fused * r)` and `sum(apart * r)` in `x`, `w`, `gamma` and `beta`
/// agree to 1e-5 of their size.
fn same_gradients(case: &str, fused: &Tensor, apart: &Tensor, r: &Tensor, vars: [&Var; 4]) {
    let gf = (fused * r).unwrap().sum_all().unwrap().backward().unwrap();
    let ga = (apart * r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in ["x", "w", "gamma", "beta"].into_iter().zip(vars) {
        let (f, a) = (gf.get(v).unwrap(), ga.get(v).unwrap());
        assert!(rel_diff(f, a) < 1e-5, "{case} d{name}: {}", rel_diff(f, a));
    }
}

#[test]
fn matches_conv_then_batch_norm() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // (b, c, h, w, o, k, stride, pad, relu): odd sizes, strides 1 and 2, batch 1, the stem.
    for &(b, c, h, w, o, k, s, p, relu) in &[
        (2, 3, 9, 7, 4, 3, 1, 1, true),
        (1, 5, 8, 8, 6, 3, 2, 1, false),
        (3, 4, 5, 6, 8, 1, 2, 0, false),
        (2, 3, 15, 15, 4, 7, 2, 3, true),
        (4, 6, 4, 4, 5, 3, 1, 1, true),
        (3, 8, 12, 10, 16, 3, 1, 1, true),
        (32, 8, 4, 5, 8, 3, 1, 1, false),
    ] {
        let x = Var::from_tensor(&uniform(&mut rng, &[b, c, h, w], -1.0, 1.0)).unwrap();
        let wt = Var::from_tensor(&uniform(&mut rng, &[o, c, k, k], -0.5, 0.5)).unwrap();
        let gamma = Var::from_tensor(&uniform(&mut rng, &[o], 0.5, 1.5)).unwrap();
        let beta = Var::from_tensor(&uniform(&mut rng, &[o], -0.5, 0.5)).unwrap();
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let r = uniform(&mut rng, &[b, o, ho, wo], -1.0, 1.0);

        let (fused, fstats) =
            fer_kernels::conv_bn_train(&x, &wt, s, p, &gamma, &beta, 1e-5, relu).unwrap();
        let y = fer_kernels::conv2d(&x, &wt, s, p).unwrap();
        let (apart, astats) = fer_kernels::batch_norm_train(&y, &gamma, &beta, 1e-5, relu).unwrap();
        let case = format!("{b}x{c}x{h}x{w} k{k} s{s} p{p} relu {relu}");
        assert!(rel_diff(&fused, &apart) < 1e-6, "{case} output");
        assert!(rel_diff(&fstats.mean, &astats.mean) < 1e-6, "{case} mean");
        assert!(rel_diff(&fstats.var, &astats.var) < 1e-6, "{case} var");

        same_gradients(&case, &fused, &apart, &r, [&x, &wt, &gamma, &beta]);
    }
}

#[test]
fn gradients_match_finite_differences_and_skip_an_untracked_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x0 = uniform(&mut rng, &[2, 2, 7, 7], -1.0, 1.0);
    let w0 = uniform(&mut rng, &[3, 2, 3, 3], -0.5, 0.5);
    let gamma = Var::from_tensor(&uniform(&mut rng, &[3], 0.5, 1.5)).unwrap();
    let beta = Var::from_tensor(&uniform(&mut rng, &[3], -0.5, 0.5)).unwrap();
    let r = uniform(&mut rng, &[2, 3, 4, 4], -1.0, 1.0);
    // No ReLU here: its kinks are not differentiable; the ReLU mask is checked against the
    // unfused ops above.
    let loss = |x: &Tensor, w: &Tensor, g: &Tensor, b: &Tensor| -> Tensor {
        let (y, _) = fer_kernels::conv_bn_train(x, w, 2, 1, g, b, 1e-5, false).unwrap();
        (y * &r).unwrap().sum_all().unwrap()
    };
    // The finite-difference side sums in f64.
    let loss64 = |x: &Tensor, w: &Tensor, g: &Tensor, b: &Tensor| -> f64 {
        let (y, _) = fer_kernels::conv_bn_train(x, w, 2, 1, g, b, 1e-5, false).unwrap();
        values(&y)
            .iter()
            .zip(values(&r))
            .map(|(a, b)| *a as f64 * b as f64)
            .sum()
    };
    let (x, w) = (
        Var::from_tensor(&x0).unwrap(),
        Var::from_tensor(&w0).unwrap(),
    );
    let grads = loss(&x, &w, &gamma, &beta).backward().unwrap();
    let args = [&x0, &w0, gamma.as_tensor(), beta.as_tensor()];
    let grad_of = [&x, &w, &gamma, &beta];
    let eps = 1e-3f32;
    for which in 0..4 {
        let base = values(args[which]);
        let g = values(grads.get(grad_of[which]).unwrap());
        for i in 0..base.len() {
            let at = |delta: f32| -> f64 {
                let mut t = base.clone();
                t[i] += delta;
                let t = Tensor::from_vec(t, args[which].dims(), &Device::Cpu).unwrap();
                let mut a = args.map(|a| a.clone());
                a[which] = t;
                loss64(&a[0], &a[1], &a[2], &a[3])
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let tol = 5e-3 * fd.abs().max(1.0);
            assert!(
                (fd - g[i] as f64).abs() < tol,
                "arg {which}[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
    // The image batch (not a variable, not computed from one) gets no gradient; the weight's
    // is unchanged.
    let untracked = loss(&x0, &w, &gamma, &beta).backward().unwrap();
    assert!(untracked.get(&x0).is_none());
    assert_eq!(
        values(untracked.get(&w).unwrap()),
        values(grads.get(&w).unwrap())
    );
}

#[test]
fn pooled_stem_matches_conv_bn_then_max_pool() {
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    for &(b, c, h, w, o, k, s, p) in &[
        (2, 3, 15, 15, 4, 7, 2, 3),
        (1, 2, 9, 6, 3, 3, 1, 1),
        (3, 3, 12, 11, 5, 7, 2, 3),
    ] {
        let x = Var::from_tensor(&uniform(&mut rng, &[b, c, h, w], -1.0, 1.0)).unwrap();
        let wt = Var::from_tensor(&uniform(&mut rng, &[o, c, k, k], -0.5, 0.5)).unwrap();
        let gamma = Var::from_tensor(&uniform(&mut rng, &[o], 0.5, 1.5)).unwrap();
        let beta = Var::from_tensor(&uniform(&mut rng, &[o], -0.5, 0.5)).unwrap();
        let (fused, fstats) =
            fer_kernels::conv_bn_relu_pool_train(&x, &wt, s, p, &gamma, &beta, 1e-5).unwrap();
        let (z, astats) =
            fer_kernels::conv_bn_train(&x, &wt, s, p, &gamma, &beta, 1e-5, true).unwrap();
        let apart = fer_kernels::max_pool_3x3_s2(&z).unwrap();
        let case = format!("{b}x{c}x{h}x{w} k{k} s{s} p{p}");
        assert_eq!(fused.dims(), apart.dims(), "{case}");
        assert!(rel_diff(&fused, &apart) < 1e-6, "{case} output");
        assert!(rel_diff(&fstats.var, &astats.var) < 1e-6, "{case} var");
        let r = uniform(&mut rng, fused.dims(), -1.0, 1.0);
        same_gradients(&case, &fused, &apart, &r, [&x, &wt, &gamma, &beta]);
    }
}
