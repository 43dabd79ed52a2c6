//! `fer_kernels::batch_norm_eval` against the same formula in f64 with candle's own ops
//! (values and autograd gradients), with and without the ReLU.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{f64_var, uniform, values, TOL};
use fer_test_support::assert_close;

/// `relu?((x - mean) / sqrt(var + eps) * gamma + beta)` in candle ops, statistics constant.
fn reference(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    relu: bool,
) -> Tensor {
    let c = x.dim(1).unwrap();
    let s = |t: &Tensor| t.reshape((1, c, 1, 1)).unwrap();
    let y = x
        .broadcast_sub(&s(mean))
        .unwrap()
        .broadcast_div(&s(&(var + 1e-5).unwrap().sqrt().unwrap()))
        .unwrap()
        .broadcast_mul(&s(g))
        .unwrap()
        .broadcast_add(&s(b))
        .unwrap();
    if relu {
        y.relu().unwrap()
    } else {
        y
    }
}

#[test]
fn matches_candle_ops_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for &[b, c, h, w] in &[[2, 3, 5, 7], [1, 4, 1, 1], [3, 6, 4, 4]] {
        for relu in [false, true] {
            let x = Var::from_tensor(&uniform(&mut rng, &[b, c, h, w], -2.0, 2.0)).unwrap();
            let g = Var::from_tensor(&uniform(&mut rng, &[c], 0.5, 1.5)).unwrap();
            let be = Var::from_tensor(&uniform(&mut rng, &[c], -0.5, 0.5)).unwrap();
            let mean = uniform(&mut rng, &[c], -0.5, 0.5);
            let var = uniform(&mut rng, &[c], 0.2, 2.0);
            let r = uniform(&mut rng, &[b, c, h, w], -1.0, 1.0);
            let y = fer_kernels::batch_norm_eval(&x, &g, &be, &mean, &var, 1e-5, relu).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();

            let (x64, g64, b64) = (f64_var(&x), f64_var(&g), f64_var(&be));
            let (m64, v64) = (
                mean.to_dtype(DType::F64).unwrap(),
                var.to_dtype(DType::F64).unwrap(),
            );
            let want = reference(&x64, &g64, &b64, &m64, &v64, relu);
            let r64 = r.to_dtype(DType::F64).unwrap();
            let wgrads = (&want * &r64)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let case = format!("{b}x{c}x{h}x{w} relu {relu}");
            assert_close(&format!("{case} y"), &y, &want, TOL);
            for (name, ours, theirs) in [
                ("dx", x.as_tensor(), x64.as_tensor()),
                ("dgamma", g.as_tensor(), g64.as_tensor()),
                ("dbeta", be.as_tensor(), b64.as_tensor()),
            ] {
                let got = grads.get(ours).unwrap();
                assert_close(
                    &format!("{case} {name}"),
                    got,
                    wgrads.get(theirs).unwrap(),
                    TOL,
                );
            }
        }
    }
}

#[test]
fn nan_survives_the_relu_and_bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[[[f32::NAN, -1.0]]]], &dev).unwrap(); // [1, 1, 1, 2]
    let one = Tensor::ones(1, DType::F32, &dev).unwrap();
    let zero = Tensor::zeros(1, DType::F32, &dev).unwrap();
    let y = fer_kernels::batch_norm_eval(&x, &one, &zero, &zero, &one, 1e-5, true).unwrap();
    let y = values(&y);
    assert!(y[0].is_nan() && y[1] == 0.0, "{y:?}");
    let two = Tensor::ones(2, DType::F32, &dev).unwrap();
    let err = fer_kernels::batch_norm_eval(&x, &one, &zero, &two, &one, 1e-5, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch_norm_eval") && err.contains("running mean"),
        "{err}"
    );
}
