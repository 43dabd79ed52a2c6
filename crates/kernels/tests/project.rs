//! `fer_kernels::position_projection` against the same maths in f64 with candle's own ops
//! (flatten, transpose, matmul, broadcast add and their autograd), and by finite differences.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{f64_var, uniform, values, TOL};
use fer_test_support::assert_close;

/// `p[b, n, :] = w f[b, :, n] + bias` in f64 through candle's generic ops.
fn reference(f: &Tensor, w: &Tensor, bias: &Tensor) -> Tensor {
    let (b, c, h, wd) = f.dims4().unwrap();
    f.flatten_from(2)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b * h * wd, c))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(bias)
        .unwrap()
        .reshape((b, h * wd, w.dim(0).unwrap()))
        .unwrap()
}

#[test]
fn output_and_gradients_match_candle_ops_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Batch 1, odd sizes, a single position, a single channel, more images than threads.
    for &(b, c, h, w, d) in &[
        (1, 3, 5, 7, 4),
        (2, 1, 1, 1, 3),
        (3, 8, 2, 3, 1),
        (5, 16, 7, 7, 12),
        (32, 9, 4, 4, 6),
    ] {
        let f = Var::from_tensor(&uniform(&mut rng, &[b, c, h, w], -1.0, 1.0)).unwrap();
        let wt = Var::from_tensor(&uniform(&mut rng, &[d, c], -0.5, 0.5)).unwrap();
        let bias = Var::from_tensor(&uniform(&mut rng, &[d], -0.5, 0.5)).unwrap();
        let r = uniform(&mut rng, &[b, h * w, d], -1.0, 1.0);
        let p = fer_kernels::position_projection(&f, &wt, &bias).unwrap();
        let grads = (&p * &r).unwrap().sum_all().unwrap().backward().unwrap();

        let (f64f, f64w, f64b) = (f64_var(&f), f64_var(&wt), f64_var(&bias));
        let want = reference(&f64f, &f64w, &f64b);
        let r64 = r.to_dtype(DType::F64).unwrap();
        let wgrads = (&want * &r64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let case = format!("{b}x{c}x{h}x{w} -> {d}");
        assert_close(&format!("{case} p"), &p, &want, TOL);
        for (name, ours, theirs) in [
            ("df", f.as_tensor(), f64f.as_tensor()),
            ("dw", wt.as_tensor(), f64w.as_tensor()),
            ("dbias", bias.as_tensor(), f64b.as_tensor()),
        ] {
            let g = grads.get(ours).unwrap();
            assert_close(
                &format!("{case} {name}"),
                g,
                wgrads.get(theirs).unwrap(),
                TOL,
            );
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let f = Var::from_tensor(&uniform(&mut rng, &[2, 3, 2, 3], -1.0, 1.0)).unwrap();
    let wt = Var::from_tensor(&uniform(&mut rng, &[4, 3], -0.5, 0.5)).unwrap();
    let bias = Var::from_tensor(&uniform(&mut rng, &[4], -0.5, 0.5)).unwrap();
    let r = uniform(&mut rng, &[2, 6, 4], -1.0, 1.0);
    let loss = |f: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        let p = fer_kernels::position_projection(f, w, b).unwrap();
        (p * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let p = fer_kernels::position_projection(&f, &wt, &bias).unwrap();
    let grads = (p * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-2f32;
    for which in 0..3 {
        let v = [&f, &wt, &bias][which];
        let base = values(v);
        let g = values(grads.get(v).unwrap());
        for i in 0..base.len() {
            let bump = |delta: f32| {
                let mut t = base.clone();
                t[i] += delta;
                let t = Tensor::from_vec(t, v.dims(), &Device::Cpu).unwrap();
                match which {
                    0 => loss(&t, &wt, &bias),
                    1 => loss(&f, &t, &bias),
                    _ => loss(&f, &wt, &t),
                }
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 1e-3,
                "arg {which}[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let dev = Device::Cpu;
    let f = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
    let err = fer_kernels::position_projection(&f, &w, &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("position_projection"), "{err}");
    let empty = Tensor::zeros((2, 4, 0, 4), DType::F32, &dev).unwrap();
    assert!(fer_kernels::position_projection(&empty, &w, &b).is_err());
}
