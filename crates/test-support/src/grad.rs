//! Gradients checked against central finite differences.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::close::rel_err;

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn with_value(t: &Tensor, i: usize, v: f64) -> Tensor {
    let mut data = flat(t);
    data[i] = v;
    Tensor::from_vec(data, t.shape(), t.device()).unwrap()
}

/// Central finite differences (f64, step 1e-6) of `loss(vb, x)` against autograd, for the input
/// and every weight element of `varmap` (f64 on the CPU; the block is rebuilt from the VarMap at
/// each call). Returns the largest `max|fd - ad| / max(max|ad|, 1e-6)` over all tensors, and
/// panics if a weight's exceeds 1e-5 or has no gradient.
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

/// Checks autograd gradients of f32 inputs against central differences, element by element:
/// `inputs[k][i]` is moved by `±eps` (in f32, as the kernel sees it) and `loss` (summed in f64
/// by the caller, so the difference of two nearby losses keeps its digits) evaluated at both;
/// panics unless `|fd - grads[k][i]| < tol` everywhere, naming `what`, the input and the index.
pub fn check_central_differences<L>(
    what: &str,
    inputs: &[Vec<f32>],
    grads: &[Vec<f32>],
    eps: f32,
    tol: f64,
    loss: L,
) where
    L: Fn(&[Vec<f32>]) -> f64,
{
    assert_eq!(inputs.len(), grads.len(), "{what}: one gradient per input");
    for (k, g) in grads.iter().enumerate() {
        assert_eq!(g.len(), inputs[k].len(), "{what}: gradient {k} length");
        for i in 0..inputs[k].len() {
            let (mut p, mut m) = (inputs.to_vec(), inputs.to_vec());
            p[k][i] += eps;
            m[k][i] -= eps;
            let fd = (loss(&p) - loss(&m)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < tol,
                "{what} input {k} index {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `sum(x^2 * w)` has the hand-derived gradients `2 x w` and `x^2`.
    fn square_loss(vb: VarBuilder, x: &Tensor) -> Result<Tensor> {
        let w = vb.get_with_hints(3, "w", candle_nn::Init::Const(0.5))?;
        (x.sqr()? * w)?.sum_all()
    }

    #[test]
    fn finite_differences_agree_with_a_correct_gradient() {
        let varmap = VarMap::new();
        let x = Tensor::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
        let e = finite_difference_error(&varmap, &x, square_loss);
        assert!(e < 1e-8, "{e:e}");
    }

    #[test]
    fn central_differences_catch_a_wrong_gradient() {
        let x = vec![vec![1.0f32, -2.0], vec![3.0f32]];
        // loss = sum(x0^2) * x1: gradients 2 x0 x1 and sum(x0^2).
        let loss = |v: &[Vec<f32>]| -> f64 {
            v[0].iter().map(|a| (*a as f64).powi(2)).sum::<f64>() * v[1][0] as f64
        };
        let right = vec![vec![6.0f32, -12.0], vec![5.0f32]];
        check_central_differences("right", &x, &right, 1e-2, 1e-3, loss);
        let wrong = vec![vec![6.0f32, -12.0], vec![4.9f32]];
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_central_differences("wrong", &x, &wrong, 1e-2, 1e-3, loss)
        }))
        .unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("wrong input 1 index 0:"), "{msg}");
    }
}
