//! `fer_kernels::lstm_cell` / `gru_cell` against the same step written with candle's generic ops
//! (values and autograd gradients) and against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ops::sigmoid;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{max_abs, uniform, values};
use fer_test_support::check_central_differences;

/// Reference LSTM step (PyTorch's equations, gate order i, f, g, o).
fn lstm_ref(gx: &Tensor, gh: &Tensor, c: &Tensor) -> Vec<Tensor> {
    let h = c.dim(1).unwrap();
    let pre = (gx + gh).unwrap();
    let gate = |k: usize| pre.narrow(1, k * h, h).unwrap();
    let (i, f) = (sigmoid(&gate(0)).unwrap(), sigmoid(&gate(1)).unwrap());
    let (g, o) = (gate(2).tanh().unwrap(), sigmoid(&gate(3)).unwrap());
    let c = ((f * c).unwrap() + (i * g).unwrap()).unwrap();
    vec![(o * c.tanh().unwrap()).unwrap(), c]
}

/// Reference GRU step (gate order r, z, n; `h' = (1 - z) n + z h`).
fn gru_ref(gx: &Tensor, gh: &Tensor, h: &Tensor) -> Vec<Tensor> {
    let hid = h.dim(1).unwrap();
    let gate = |t: &Tensor, k: usize| t.narrow(1, k * hid, hid).unwrap();
    let r = sigmoid(&(gate(gx, 0) + gate(gh, 0)).unwrap()).unwrap();
    let z = sigmoid(&(gate(gx, 1) + gate(gh, 1)).unwrap()).unwrap();
    let n = (gate(gx, 2) + (r * gate(gh, 2)).unwrap())
        .unwrap()
        .tanh()
        .unwrap();
    let one_minus_z = z.affine(-1.0, 1.0).unwrap();
    vec![((one_minus_z * n).unwrap() + (z * h).unwrap()).unwrap()]
}

fn lstm_fused(gx: &Tensor, gh: &Tensor, c: &Tensor) -> Vec<Tensor> {
    let (h, c) = fer_kernels::lstm_cell(gx, gh, c).unwrap();
    vec![h, c]
}

fn gru_fused(gx: &Tensor, gh: &Tensor, h: &Tensor) -> Vec<Tensor> {
    vec![fer_kernels::gru_cell(gx, gh, h).unwrap()]
}

type Step = fn(&Tensor, &Tensor, &Tensor) -> Vec<Tensor>;

/// Outputs and the gradients of `sum_k sum(out_k * probe_k)` in `(gx, gh, state)`.
fn run(step: Step, vars: &[Var; 3], probes: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
    let out = step(&vars[0], &vars[1], &vars[2]);
    let loss = out
        .iter()
        .zip(probes)
        .map(|(o, r)| (o * r).unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (out, gs)
}

fn inputs(rng: &mut ChaCha8Rng, b: usize, h: usize, gates: usize) -> [Var; 3] {
    [
        Var::from_tensor(&uniform(rng, &[b, gates * h], -3.0, 3.0)).unwrap(),
        Var::from_tensor(&uniform(rng, &[b, gates * h], -3.0, 3.0)).unwrap(),
        Var::from_tensor(&uniform(rng, &[b, h], -2.0, 2.0)).unwrap(),
    ]
}

const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 5), (3, 7), (32, 128), (5, 64), (64, 200)];

fn compare(name: &str, gates: usize, outs: usize, fused: Step, reference: Step) {
    let mut rng = ChaCha8Rng::seed_from_u64(gates as u64);
    for &(b, h) in SHAPES {
        let vars = inputs(&mut rng, b, h, gates);
        let probes: Vec<Tensor> = (0..outs)
            .map(|_| uniform(&mut rng, &[b, h], -1.0, 1.0))
            .collect();
        let (out, grads) = run(fused, &vars, &probes);
        let (want, want_grads) = run(reference, &vars, &probes);
        for (k, (x, e)) in out.iter().zip(&want).enumerate() {
            let err = max_abs(&(x - e).unwrap());
            assert!(
                err < 1e-6 * max_abs(e).max(1.0),
                "{name} B {b} h {h} output {k}: {err:e}"
            );
        }
        for (k, (x, e)) in grads.iter().zip(&want_grads).enumerate() {
            let err = max_abs(&(x - e).unwrap());
            assert!(
                err < 1e-6 * max_abs(e).max(1.0),
                "{name} B {b} h {h} grad {k}: {err:e}"
            );
        }
    }
}

#[test]
fn lstm_matches_generic_ops_in_values_and_gradients() {
    compare("lstm", 4, 2, lstm_fused, lstm_ref);
}

#[test]
fn gru_matches_generic_ops_in_values_and_gradients() {
    compare("gru", 3, 1, gru_fused, gru_ref);
}

#[test]
fn the_candle_fallback_matches_the_reference_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let f64s = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    for (gates, fused, reference) in [
        (4, lstm_fused as Step, lstm_ref as Step),
        (3, gru_fused, gru_ref),
    ] {
        let (b, h) = (3, 5);
        let gx = f64s(uniform(&mut rng, &[b, gates * h], -2.0, 2.0));
        let gh = f64s(uniform(&mut rng, &[b, gates * h], -2.0, 2.0));
        let s = f64s(uniform(&mut rng, &[b, h], -1.0, 1.0));
        for (x, e) in fused(&gx, &gh, &s).iter().zip(reference(&gx, &gh, &s)) {
            assert_eq!(x.dtype(), DType::F64);
            let err = max_abs(&(x - e).unwrap().to_dtype(DType::F32).unwrap());
            assert!(err < 1e-12, "{err:e}");
        }
    }
}

/// Central differences of the probed loss in every input element of the fused step.
fn finite_differences(gates: usize, outs: usize, fused: Step) {
    let mut rng = ChaCha8Rng::seed_from_u64(30 + gates as u64);
    let (b, h) = (2, 3);
    let vars = inputs(&mut rng, b, h, gates);
    let probes: Vec<Tensor> = (0..outs)
        .map(|_| uniform(&mut rng, &[b, h], -1.0, 1.0))
        .collect();
    let (_, grads) = run(fused, &vars, &probes);
    let init: Vec<Vec<f32>> = vars.iter().map(|v| values(v)).collect();
    let shapes: Vec<Vec<usize>> = vars.iter().map(|v| v.dims().to_vec()).collect();
    let loss = |xs: &[Vec<f32>]| -> f64 {
        let t: Vec<Tensor> = xs
            .iter()
            .zip(&shapes)
            .map(|(x, s)| Tensor::from_slice(x, s.as_slice(), &Device::Cpu).unwrap())
            .collect();
        fused(&t[0], &t[1], &t[2])
            .iter()
            .zip(&probes)
            .map(|(o, r)| {
                values(o)
                    .iter()
                    .zip(values(r))
                    .map(|(a, b)| *a as f64 * b as f64)
                    .sum::<f64>()
            })
            .sum()
    };
    let grads: Vec<Vec<f32>> = grads.iter().map(values).collect();
    let what = format!("gates {gates}");
    check_central_differences(&what, &init, &grads, 1e-2, 1e-3, loss);
}

#[test]
fn lstm_gradients_match_finite_differences() {
    finite_differences(4, 2, lstm_fused);
}

#[test]
fn gru_gradients_match_finite_differences() {
    finite_differences(3, 1, gru_fused);
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let lstm = fer_kernels::lstm_cell(&z(&[2, 12]), &z(&[2, 8]), &z(&[2, 3])).unwrap_err();
    assert!(lstm.to_string().contains("lstm_cell"), "{lstm}");
    let gru = fer_kernels::gru_cell(&z(&[2, 9]), &z(&[2, 9]), &z(&[2, 3, 1])).unwrap_err();
    assert!(gru.to_string().contains("gru_cell"), "{gru}");
    assert!(gru.to_string().contains("[2, 3, 1]"), "{gru}");
}
