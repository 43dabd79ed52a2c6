//! `fer_kernels::batch_norm_train` against the same function written with candle's generic ops
//! (values, statistics, autograd gradients) and against finite differences.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{max_abs, uniform, values};
use fer_test_support::check_central_differences;

fn rand(rng: &mut ChaCha8Rng, dims: &[usize], lo: f32, hi: f32) -> Tensor {
    uniform(rng, dims, lo, hi)
}

/// Reference: candle ops on the NCHW tensor, statistics over dims 0, 2, 3.
fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> (Tensor, Tensor, Tensor) {
    let c = x.dim(1).unwrap();
    let mean = x.mean_keepdim((0, 2, 3)).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
    let y = xc
        .broadcast_div(&(&var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap();
    (y, mean.flatten_all().unwrap(), var.flatten_all().unwrap())
}

const SHAPES: &[[usize; 4]] = &[
    [1, 1, 3, 3],
    [2, 3, 5, 7],
    [5, 4, 1, 1],
    [1, 6, 9, 4],
    [16, 8, 3, 3],
    [3, 2, 12, 12],
];

#[test]
fn matches_generic_ops_in_values_statistics_and_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for relu in [false, true] {
        for &[b, c, h, w] in SHAPES {
            // An offset mean and spread, as activations have.
            let x = Var::from_tensor(&rand(&mut rng, &[b, c, h, w], -1.0, 3.0)).unwrap();
            let g = Var::from_tensor(&rand(&mut rng, &[c], 0.5, 1.5)).unwrap();
            let be = Var::from_tensor(&rand(&mut rng, &[c], -0.5, 0.5)).unwrap();
            let r = rand(&mut rng, &[b, c, h, w], -1.0, 1.0);
            let (y, stats) = fer_kernels::batch_norm_train(&x, &g, &be, 1e-5, relu).unwrap();
            let (ye, me, ve) = reference(&x, &g, &be, 1e-5);
            let ye = if relu { ye.relu().unwrap() } else { ye };
            let what = format!("{b}x{c}x{h}x{w} relu {relu}");
            assert!(max_abs(&(&y - &ye).unwrap()) < 1e-4, "y {what}");
            assert!(max_abs(&(&stats.mean - &me).unwrap()) < 1e-5, "mean {what}");
            assert!(max_abs(&(&stats.var - &ve).unwrap()) < 1e-5, "var {what}");
            if relu {
                // Both sides of the kink are exercised.
                let pos = values(&y).iter().filter(|v| **v > 0.0).count();
                assert!(
                    pos > 0 && pos < y.elem_count() || y.elem_count() == 1,
                    "{what}"
                );
            }
            let ga = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let ge = (ye * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &be)] {
                let (a, e) = (ga.get(v).unwrap(), ge.get(v).unwrap());
                let tol = 1e-4 * max_abs(e).max(1.0);
                assert!(
                    max_abs(&(a - e).unwrap()) < tol,
                    "{name} {what}: {:?} vs {:?}",
                    values(a),
                    values(e)
                );
            }
        }
    }
}

#[test]
fn input_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (b, c, h, w) = (3, 2, 3, 4);
    let x0: Vec<f32> = values(&rand(&mut rng, &[b, c, h, w], -1.0, 1.0));
    let g = rand(&mut rng, &[c], 0.5, 1.5);
    let be = rand(&mut rng, &[c], -0.5, 0.5);
    let r = rand(&mut rng, &[b, c, h, w], -1.0, 1.0);
    let f = |xv: &[f32]| -> f64 {
        let x = Tensor::from_slice(xv, (b, c, h, w), &Device::Cpu).unwrap();
        let (y, _) = fer_kernels::batch_norm_train(&x, &g, &be, 1e-5, false).unwrap();
        let y: Vec<f32> = values(&y);
        let r: Vec<f32> = values(&r);
        y.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let x = Var::from_slice(&x0, (b, c, h, w), &Device::Cpu).unwrap();
    let (y, _) = fer_kernels::batch_norm_train(&x, &g, &be, 1e-5, false).unwrap();
    let grad: Vec<f32> = values(
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&x)
            .unwrap(),
    );
    check_central_differences("batch_norm_train", &[x0], &[grad], 1e-2, 5e-3, |xs| {
        f(&xs[0])
    });
}

/// A NaN in one channel makes that channel's statistics and outputs NaN, with or without the
/// fused ReLU (which must not turn it into 0 and hide it), and leaves the other channels alone.
#[test]
fn nan_stays_in_its_channel_and_survives_the_relu() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut x = values(&rand(&mut rng, &[2, 3, 4, 4], -1.0, 1.0));
    x[5] = f32::NAN; // image 0, channel 0
    let x = Tensor::from_vec(x, (2, 3, 4, 4), &Device::Cpu).unwrap();
    let g = rand(&mut rng, &[3], 0.5, 1.5);
    let be = rand(&mut rng, &[3], -0.5, 0.5);
    for relu in [false, true] {
        let (y, stats) = fer_kernels::batch_norm_train(&x, &g, &be, 1e-5, relu).unwrap();
        let y = values(&y);
        for (i, v) in y.iter().enumerate() {
            let channel = (i / 16) % 3;
            assert_eq!(v.is_nan(), channel == 0, "relu {relu} index {i}: {v}");
        }
        assert!(values(&stats.mean)[0].is_nan());
    }
}
