//! Matching a set of named tensors against the variables of a [`VarMap`].

use std::collections::BTreeMap;

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::Result;

/// How far a set of tensors is from the variables it should fill.
#[derive(Debug, Default)]
pub(crate) struct Fit {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, shape given, shape expected)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

/// How many names of each kind an error message lists.
const SHOWN: usize = 5;

fn first(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(", ...");
    }
    s
}

impl Fit {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing ({})",
                self.missing.len(),
                first(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected ({})",
                self.unexpected.len(),
                first(&self.unexpected)
            ));
        }
        if !self.mismatched.is_empty() {
            let shown: Vec<String> = self
                .mismatched
                .iter()
                .take(SHOWN)
                .map(|(n, got, want)| format!("{n}: file {got:?} vs model {want:?}"))
                .collect();
            let more = if self.mismatched.len() > SHOWN {
                ", ..."
            } else {
                ""
            };
            parts.push(format!(
                "{} shape mismatches ({}{more})",
                self.mismatched.len(),
                shown.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// Compares `given` with the variables of `varmap` whose names satisfy `in_scope`.
pub(crate) fn check_fit(
    varmap: &VarMap,
    given: &BTreeMap<String, Tensor>,
    in_scope: impl Fn(&str) -> bool,
) -> Fit {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut fit = Fit::default();
    let mut wanted: Vec<&String> = data.keys().filter(|n| in_scope(n)).collect();
    wanted.sort();
    for name in wanted {
        if !given.contains_key(name) {
            fit.missing.push(name.clone());
        }
    }
    for (name, t) in given {
        match data.get(name) {
            Some(var) if var.dims() != t.dims() => {
                fit.mismatched
                    .push((name.clone(), t.dims().to_vec(), var.dims().to_vec()))
            }
            Some(_) => {}
            None => fit.unexpected.push(name.clone()),
        }
    }
    fit
}

/// Copies `given` into the variables of the same name (converted to their device and dtype).
/// Call only after [`check_fit`] came back clean.
pub(crate) fn set_vars(varmap: &VarMap, given: &BTreeMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    for (name, t) in given {
        if let Some(var) = data.get(name) {
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}
