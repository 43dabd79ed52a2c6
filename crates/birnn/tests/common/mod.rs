//! Shared test helpers: fixture loading, relative errors, gradient plumbing.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

pub type Fixture = HashMap<String, Tensor>;

/// Loads `tests/fixtures/<name>.safetensors` (float64, written by `tests/reference/*/gen.py`).
pub fn load_fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
}

/// `max |a - b| / max(max |b|, 1e-6)`: the error relative to the reference's largest magnitude
/// (elementwise relative errors blow up on entries that are zero up to rounding).
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let g: Vec<f64> = g.to_vec1().unwrap();
    let w: Vec<f64> = w.to_vec1().unwrap();
    assert!(g.iter().all(|x| x.is_finite()), "non-finite values");
    let diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = w.iter().map(|b| b.abs()).fold(1e-6, f64::max);
    diff / scale
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let e = rel_err(got, want);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// A VarMap holding the fixture's `param.*` tensors, converted to `dtype`.
pub fn varmap_from_fixture(fx: &Fixture, dtype: DType) -> VarMap {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, t) in fx {
            if let Some(name) = k.strip_prefix("param.") {
                let var = Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
                data.insert(name.to_string(), var);
            }
        }
    }
    varmap
}

pub fn names(varmap: &VarMap) -> Vec<String> {
    let mut n: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    n.sort();
    n
}

/// Runs `forward` (which builds the block from `vb`, sized after the fixture, and returns named
/// outputs) on the fixture's
/// weights and input, then compares outputs and all gradients with PyTorch's.
pub fn check_parity<F>(case: &str, dtype: DType, tol: f64, forward: F)
where
    F: Fn(&Fixture, VarBuilder, &Tensor) -> Result<Vec<(&'static str, Tensor)>>,
{
    let fx = load_fixture(case);
    let varmap = varmap_from_fixture(&fx, dtype);
    let before = names(&varmap);
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let x = Var::from_tensor(&fx["input"].to_dtype(dtype).unwrap()).unwrap();
    let outs = forward(&fx, vb, x.as_tensor()).unwrap();
    // The block must have created no weight beyond the fixture's: the names are the contract.
    assert_eq!(
        names(&varmap),
        before,
        "{case}: weight names differ from PyTorch's"
    );

    let mut loss = Tensor::zeros((), dtype, &Device::Cpu).unwrap();
    for (k, out) in &outs {
        assert_close(
            &format!("{case} {dtype:?} out.{k}"),
            out,
            &fx[&format!("out.{k}")],
            tol,
        );
        let probe = fx[&format!("probe.{k}")].to_dtype(dtype).unwrap();
        loss = (loss + (out * probe).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let gx = grads.get(x.as_tensor()).expect("no gradient for the input");
    assert_close(
        &format!("{case} {dtype:?} grad.input"),
        gx,
        &fx["grad.input"],
        tol,
    );
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let want = &fx[&format!("grad.param.{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        assert_close(&format!("{case} {dtype:?} grad.{name}"), got, want, tol);
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn with_value(t: &Tensor, i: usize, v: f64) -> Tensor {
    let mut data = flat(t);
    data[i] = v;
    Tensor::from_vec(data, t.shape(), t.device()).unwrap()
}

/// Central finite differences (f64) of `loss(vb, x)` against autograd, for the input and every
/// weight element. Returns the largest `max|fd - ad| / max(max|ad|, 1e-6)` over all tensors.
pub fn finite_difference_error<F>(varmap: &VarMap, x: &Tensor, loss: F) -> f64
where
    F: Fn(VarBuilder, &Tensor) -> Result<Tensor>,
{
    const EPS: f64 = 1e-6;
    let vb = || VarBuilder::from_varmap(varmap, DType::F64, &Device::Cpu);
    let xv = Var::from_tensor(x).unwrap();
    let grads: GradStore = loss(vb(), xv.as_tensor()).unwrap().backward().unwrap();
    let eval = |x: &Tensor| -> f64 { loss(vb(), x).unwrap().to_scalar().unwrap() };

    let mut worst: f64 = 0.0;
    // The input.
    let ad = grads.get(xv.as_tensor()).expect("no input gradient");
    let fd: Vec<f64> = (0..x.elem_count())
        .map(|i| {
            let v = flat(x)[i];
            (eval(&with_value(x, i, v + EPS)) - eval(&with_value(x, i, v - EPS))) / (2.0 * EPS)
        })
        .collect();
    worst = worst.max(rel_err(
        &Tensor::from_vec(fd, x.shape(), x.device()).unwrap(),
        ad,
    ));
    // Every weight, perturbed in place (the block is rebuilt from the VarMap at each call).
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, var) in vars {
        let ad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .clone();
        let orig = var.as_tensor().copy().unwrap();
        let mut fd = Vec::with_capacity(orig.elem_count());
        for i in 0..orig.elem_count() {
            let v = flat(&orig)[i];
            var.set(&with_value(&orig, i, v + EPS)).unwrap();
            let up = eval(x);
            var.set(&with_value(&orig, i, v - EPS)).unwrap();
            let down = eval(x);
            fd.push((up - down) / (2.0 * EPS));
        }
        var.set(&orig).unwrap();
        let e = rel_err(
            &Tensor::from_vec(fd, orig.shape(), x.device()).unwrap(),
            &ad,
        );
        assert!(e < 1e-5, "{name}: finite differences disagree ({e:e})");
        worst = worst.max(e);
    }
    worst
}

/// Names of the variables of `varmap` whose gradient is missing or all zero.
pub fn weights_without_gradient(varmap: &VarMap, grads: &GradStore) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let nonzero = grads
            .get(var.as_tensor())
            .map(|g| {
                let m: f64 = g
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                m > 0.0
            })
            .unwrap_or(false);
        if !nonzero {
            missing.push(name.clone());
        }
    }
    missing
}
