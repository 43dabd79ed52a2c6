//! PyTorch reference fixtures: loading them and checking a block against them.
//!
//! A fixture is a safetensors file (float64, written by a crate's `tests/reference/*/gen.py`)
//! holding `param.<name>` weights, the `input`, each output `out.<k>` with the `probe.<k>` it is
//! weighted by in the loss `sum_k sum(out.k * probe.k)`, and that loss's gradients `grad.input`
//! and `grad.param.<name>`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::close::assert_close;

pub type Fixture = HashMap<String, Tensor>;

/// Loads `<dir>/<name>.safetensors` onto the CPU.
pub fn load_fixture(dir: &Path, name: &str) -> Fixture {
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
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

/// The variable names of `varmap`, sorted.
pub fn var_names(varmap: &VarMap) -> Vec<String> {
    let mut n: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    n.sort();
    n
}

/// Runs `forward` (which builds the block from `vb`, sized after the fixture, and returns named
/// outputs) on the weights and input of fixture `case` in `dir`, then compares the outputs and
/// all gradients with PyTorch's within `tol` (relative, see [`crate::Tolerance`]).
pub fn check_parity<F>(dir: &Path, case: &str, dtype: DType, tol: f64, forward: F)
where
    F: Fn(&Fixture, VarBuilder, &Tensor) -> Result<Vec<(&'static str, Tensor)>>,
{
    let fx = load_fixture(dir, case);
    let varmap = varmap_from_fixture(&fx, dtype);
    let before = var_names(&varmap);
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let x = Var::from_tensor(&fx["input"].to_dtype(dtype).unwrap()).unwrap();
    let outs = forward(&fx, vb, x.as_tensor()).unwrap();
    // The block must have created no weight beyond the fixture's: the names are the contract.
    assert_eq!(
        var_names(&varmap),
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
