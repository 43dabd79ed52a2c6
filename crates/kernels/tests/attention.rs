//! `fer_kernels::position_attention` (the fused op) against the same maths written with candle's
//! generic ops (values and autograd gradients) and against finite differences.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{max_abs, uniform, values};
use fer_test_support::check_central_differences;

/// Reference: candle's ops, written here independently of the crate's own fallback.
fn reference(p: &Tensor, w: &Tensor, b: &Tensor, v: &Tensor) -> (Tensor, Tensor, Tensor) {
    let s = p
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap()
        .tanh()
        .unwrap();
    let e = s.broadcast_mul(v).unwrap().sum(D::Minus1).unwrap();
    let alpha = candle_nn::ops::softmax(&e, 1).unwrap();
    let u = alpha
        .unsqueeze(2)
        .unwrap()
        .broadcast_mul(p)
        .unwrap()
        .sum(1)
        .unwrap();
    let g = p.mean(1).unwrap();
    (u, g, alpha)
}

struct Case {
    b: usize,
    n: usize,
    d: usize,
    a: usize,
}

const CASES: &[Case] = &[
    Case {
        b: 1,
        n: 1,
        d: 3,
        a: 2,
    },
    Case {
        b: 5,
        n: 1,
        d: 4,
        a: 3,
    },
    Case {
        b: 1,
        n: 7,
        d: 5,
        a: 4,
    },
    Case {
        b: 5,
        n: 13,
        d: 6,
        a: 3,
    },
    Case {
        b: 1,
        n: 49,
        d: 256,
        a: 128,
    },
    Case {
        b: 5,
        n: 49,
        d: 16,
        a: 8,
    },
    Case {
        b: 5,
        n: 196,
        d: 256,
        a: 128,
    },
    Case {
        b: 1,
        n: 196,
        d: 32,
        a: 16,
    },
];

/// Runs the loss `sum(u * ru) + sum(g * rg) + sum(alpha * ra)` through one path and returns the
/// three outputs and the four gradients.
fn run(fused: bool, vars: &[&Var; 4], probes: &[Tensor; 3]) -> (Vec<Tensor>, Vec<Tensor>) {
    let [p, w, b, v] = vars;
    let (u, g, alpha) = if fused {
        let out = fer_kernels::position_attention(p, w, b, v).unwrap();
        let ug = Tensor::cat(&[&out.u, &out.g], 1).unwrap();
        assert!(max_abs(&(ug - &out.ug).unwrap()) == 0.0, "ug is [u ; g]");
        (out.u, out.g, out.alpha)
    } else {
        reference(p, w, b, v)
    };
    let loss = [&u, &g, &alpha]
        .iter()
        .zip(probes)
        .map(|(o, r)| (*o * r).unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars.iter().map(|x| grads.get(x).unwrap().clone()).collect();
    (vec![u, g, alpha], gs)
}

#[test]
fn matches_generic_ops_in_values_and_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &Case { b, n, d, a } in CASES {
        let bound = 1.0 / (d as f32).sqrt();
        let p = Var::from_tensor(&uniform(&mut rng, &[b, n, d], -2.0, 2.0)).unwrap();
        let w = Var::from_tensor(&uniform(&mut rng, &[a, d], -bound, bound)).unwrap();
        let bi = Var::from_tensor(&uniform(&mut rng, &[a], -bound, bound)).unwrap();
        let v = Var::from_tensor(&uniform(&mut rng, &[a], -1.0, 1.0)).unwrap();
        let probes = [
            uniform(&mut rng, &[b, d], -1.0, 1.0),
            uniform(&mut rng, &[b, d], -1.0, 1.0),
            uniform(&mut rng, &[b, n], -1.0, 1.0),
        ];
        let vars = [&p, &w, &bi, &v];
        let (out, grads) = run(true, &vars, &probes);
        let (want, want_grads) = run(false, &vars, &probes);
        let what = format!("B {b} N {n} d {d} a {a}");
        for ((name, x), e) in ["u", "g", "alpha"].iter().zip(&out).zip(&want) {
            let err = max_abs(&(x - e).unwrap());
            assert!(err < 1e-5 * max_abs(e).max(1.0), "{name} {what}: {err:e}");
        }
        for ((name, x), e) in ["dp", "dw", "db", "dv"].iter().zip(&grads).zip(&want_grads) {
            let err = max_abs(&(x - e).unwrap());
            assert!(err < 1e-4 * max_abs(e).max(1.0), "{name} {what}: {err:e}");
        }
        let sums = values(&out[2].sum(1).unwrap());
        assert!(
            sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
            "{what}: {sums:?}"
        );
    }
}

#[test]
fn the_candle_fallback_matches_the_reference_in_f64() {
    // The crate's own candle path (kernels off) against the reference, in f64.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let f64s = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    let p = f64s(uniform(&mut rng, &[3, 9, 6], -1.0, 1.0));
    let w = f64s(uniform(&mut rng, &[4, 6], -0.5, 0.5));
    let b = f64s(uniform(&mut rng, &[4], -0.5, 0.5));
    let v = f64s(uniform(&mut rng, &[4], -1.0, 1.0));
    let out = fer_kernels::position_attention(&p, &w, &b, &v).unwrap();
    let (u, g, alpha) = reference(&p, &w, &b, &v);
    for (x, e) in [(&out.u, &u), (&out.g, &g), (&out.alpha, &alpha)] {
        assert!(max_abs(&(x - e).unwrap().to_dtype(DType::F32).unwrap()) < 1e-6);
    }
}

#[test]
fn gradients_match_finite_differences() {
    // f32 forward, f64 sums, steps large enough that rounding stays well under the tolerance.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (b, n, d, a) = (2, 5, 4, 3);
    let init = [
        values(&uniform(&mut rng, &[b, n, d], -1.5, 1.5)),
        values(&uniform(&mut rng, &[a, d], -0.8, 0.8)),
        values(&uniform(&mut rng, &[a], -0.5, 0.5)),
        values(&uniform(&mut rng, &[a], -1.5, 1.5)),
    ];
    let shapes: [&[usize]; 4] = [&[b, n, d], &[a, d], &[a], &[a]];
    let probes = [
        values(&uniform(&mut rng, &[b, d], -1.0, 1.0)),
        values(&uniform(&mut rng, &[b, d], -1.0, 1.0)),
        values(&uniform(&mut rng, &[b, n], -1.0, 1.0)),
    ];
    let tensors = |xs: &[Vec<f32>]| -> Vec<Tensor> {
        xs.iter()
            .zip(shapes)
            .map(|(x, s)| Tensor::from_slice(x, s, &Device::Cpu).unwrap())
            .collect()
    };
    let loss = |ts: &[Tensor]| -> f64 {
        let out = fer_kernels::position_attention(&ts[0], &ts[1], &ts[2], &ts[3]).unwrap();
        [&out.u, &out.g, &out.alpha]
            .iter()
            .zip(&probes)
            .map(|(o, r)| {
                values(o)
                    .iter()
                    .zip(r)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum::<f64>()
            })
            .sum()
    };
    let vars: Vec<Var> = tensors(&init)
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = fer_kernels::position_attention(&ts[0], &ts[1], &ts[2], &ts[3]).unwrap();
    let mut l = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (o, r) in [&out.u, &out.g, &out.alpha].iter().zip(&probes) {
        let r = Tensor::from_slice(r, o.shape(), &Device::Cpu).unwrap();
        l = (l + (*o * r).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = l.backward().unwrap();
    let grads: Vec<Vec<f32>> = vars
        .iter()
        .map(|var| values(grads.get(var).unwrap()))
        .collect();
    check_central_differences("position_attention", &init, &grads, 1e-2, 2e-3, |xs| {
        loss(&tensors(xs))
    });
}

#[test]
fn large_scores_do_not_overflow() {
    // Scores of +-1e4: exp without the max shift would be inf / NaN.
    let (b, n, d, a) = (2, 6, 3, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let p = Var::from_tensor(&uniform(&mut rng, &[b, n, d], -1.0, 1.0)).unwrap();
    let w = Tensor::ones((a, d), DType::F32, &Device::Cpu).unwrap();
    let bias = Tensor::zeros(a, DType::F32, &Device::Cpu).unwrap();
    let v = Tensor::full(5e3f32, a, &Device::Cpu).unwrap();
    let out = fer_kernels::position_attention(&p, &w, &bias, &v).unwrap();
    let alpha = values(&out.alpha);
    assert!(alpha.iter().all(|x| x.is_finite() && *x >= 0.0));
    for row in alpha.chunks(n) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    let grads = out.u.sum_all().unwrap().backward().unwrap();
    assert!(values(grads.get(&p).unwrap()).iter().all(|x| x.is_finite()));
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let cases = [
        (z(&[2, 3]), z(&[4, 3]), z(&[4]), z(&[4])),
        (z(&[2, 5, 3]), z(&[4, 2]), z(&[4]), z(&[4])),
        (z(&[2, 5, 3]), z(&[4, 3]), z(&[3]), z(&[4])),
        (z(&[2, 5, 3]), z(&[4, 3]), z(&[4]), z(&[1, 4])),
        (z(&[2, 0, 3]), z(&[4, 3]), z(&[4]), z(&[4])),
    ];
    for (p, w, b, v) in cases {
        let err = fer_kernels::position_attention(&p, &w, &b, &v).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("position_attention"), "{msg}");
        assert!(msg.contains(&format!("{:?}", p.dims())), "{msg}");
    }
}
