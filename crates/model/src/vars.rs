//! Which variables of a [`VarMap`] an optimiser may touch.

use candle_core::Var;
use candle_nn::VarMap;

/// True for BatchNorm running statistics: updated by the forward pass, never by gradients.
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The variables an optimiser should update, sorted by name so runs are reproducible:
/// everything except the BatchNorm running statistics.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_running_stat(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
