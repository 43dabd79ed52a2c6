//! SGD with momentum and AdamW with parameter groups and savable state.
//!
//! candle's own optimizers have no momentum (SGD), decay every variable (AdamW), know no parameter
//! groups and cannot save their moments, so a resumed run would diverge from an uninterrupted one.
//! The update rules here follow PyTorch's `torch.optim.SGD` (dampening 0, nesterov off) and
//! `torch.optim.AdamW` exactly; the tests replay PyTorch runs from a committed fixture.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{optim_cpu, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

/// Optimizer settings. `lr` is the base rate the schedule scales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    /// SGD only.
    pub momentum: f64,
    /// Applied to weights of rank >= 2 only: biases and BatchNorm parameters are never decayed.
    pub weight_decay: f64,
    /// AdamW only.
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Multiplier of the learning rate for `backbone.*` (below 1 for a pretrained backbone).
    pub backbone_lr_scale: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            backbone_lr_scale: 1.0,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("optimizer: {m}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr must be > 0");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)");
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad("weight_decay must be >= 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must be in [0, 1)");
        }
        if self.eps.is_nan()
            || self.eps <= 0.0
            || self.backbone_lr_scale.is_nan()
            || self.backbone_lr_scale < 0.0
        {
            return bad("eps must be > 0 and backbone_lr_scale >= 0");
        }
        Ok(())
    }
}

/// Variables sharing a learning-rate multiplier and a weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub name: &'static str,
    pub lr_scale: f64,
    pub weight_decay: f64,
    pub params: Vec<(String, Var)>,
}

/// Splits named variables into up to four groups: backbone / rest x decayed / not decayed.
/// Rank <= 1 tensors (biases, BatchNorm weights) are not decayed, which is the usual practice
/// and what the name-based rule would pick anyway for this model.
pub fn param_groups(vars: Vec<(String, Var)>, cfg: &OptimizerConfig) -> Vec<ParamGroup> {
    let mut groups = vec![
        ("backbone.decay", cfg.backbone_lr_scale, cfg.weight_decay),
        ("backbone.no_decay", cfg.backbone_lr_scale, 0.0),
        ("head.decay", 1.0, cfg.weight_decay),
        ("head.no_decay", 1.0, 0.0),
    ]
    .into_iter()
    .map(|(name, lr_scale, weight_decay)| ParamGroup {
        name,
        lr_scale,
        weight_decay,
        params: vec![],
    })
    .collect::<Vec<_>>();
    for (name, var) in vars {
        let backbone = name.starts_with("backbone.");
        let decay = var.rank() >= 2;
        let i = 2 * usize::from(!backbone) + usize::from(!decay);
        groups[i].params.push((name, var));
    }
    groups.retain(|g| !g.params.is_empty());
    groups
}

#[derive(Debug, Clone)]
struct ParamState {
    step: u64,
    /// SGD: [momentum_buffer]; AdamW: [exp_avg, exp_avg_sq].
    slots: Vec<Tensor>,
}

/// An optimizer over parameter groups.
pub struct Optimizer {
    cfg: OptimizerConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<String, ParamState>,
}

const SGD_SLOTS: [&str; 1] = ["momentum_buffer"];
const ADAMW_SLOTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig, vars: Vec<(String, Var)>) -> Result<Self> {
        cfg.validate()?;
        let mut seen = std::collections::HashSet::new();
        for (n, _) in &vars {
            if !seen.insert(n.clone()) {
                return Err(Error::Config(format!(
                    "optimizer: variable {n} listed twice"
                )));
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            groups: param_groups(vars, cfg),
            state: HashMap::new(),
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Every optimised variable, for gradient clipping.
    pub fn vars(&self) -> Vec<Var> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
            .collect()
    }

    fn slot_names(&self) -> &'static [&'static str] {
        match self.cfg.kind {
            OptimizerKind::Sgd => &SGD_SLOTS,
            OptimizerKind::Adamw => &ADAMW_SLOTS,
        }
    }

    /// One update with base learning rate `lr` (each group scales it). Variables without a
    /// gradient are left alone, state included, as PyTorch does.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for group in &self.groups {
            let glr = lr * group.lr_scale;
            for (name, var) in &group.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                // Gradients can carry the op graph of the forward pass; a moment buffer built
                // from them would keep every past graph alive (memory grows without bound).
                let grad = grad.detach().to_dtype(var.dtype())?;
                let prev = self.state.remove(name);
                let next = match self.cfg.kind {
                    OptimizerKind::Sgd => {
                        sgd_update(var, &grad, prev, glr, group.weight_decay, self.cfg.momentum)?
                    }
                    OptimizerKind::Adamw => {
                        adamw_update(var, &grad, prev, glr, group.weight_decay, &self.cfg)?
                    }
                };
                self.state.insert(name.clone(), next);
            }
        }
        Ok(())
    }

    /// The state as named tensors: `optim.{slot}.{var}` and `optim.step.{var}` (i64 [1]).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let slots = self.slot_names();
        let states: BTreeMap<_, _> = self.state.iter().collect();
        let mut out = vec![];
        for (name, st) in states {
            let dev = st.slots[0].device();
            out.push((
                format!("optim.step.{name}"),
                Tensor::new(&[st.step as i64], dev)?,
            ));
            for (slot, t) in slots.iter().zip(&st.slots) {
                out.push((format!("optim.{slot}.{name}"), t.clone()));
            }
        }
        Ok(out)
    }

    /// Restores what [`Self::state_tensors`] saved (names without the trainer's prefix). Every
    /// tensor must belong to a known variable with its shape: a state from another model is an
    /// error, not a silent partial load.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let slots = self.slot_names();
        let mut vars: HashMap<&str, &Var> = HashMap::new();
        for g in &self.groups {
            for (n, v) in &g.params {
                vars.insert(n, v);
            }
        }
        let mut state = HashMap::new();
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix("optim.") else {
                continue;
            };
            if let Some(name) = rest.strip_prefix("step.") {
                if !vars.contains_key(name) {
                    return Err(Error::OptimizerState(format!(
                        "state for unknown variable {name}"
                    )));
                }
                let step = t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
                let step = *step
                    .first()
                    .ok_or_else(|| Error::OptimizerState(format!("{key}: empty step counter")))?;
                let var = vars[name];
                let mut st = ParamState {
                    step: step.max(0) as u64,
                    slots: vec![],
                };
                for slot in slots {
                    let k = format!("optim.{slot}.{name}");
                    let s = tensors.get(&k).ok_or_else(|| {
                        Error::OptimizerState(format!(
                            "missing {k} (was the checkpoint written by another optimizer?)"
                        ))
                    })?;
                    if s.dims() != var.dims() {
                        return Err(Error::OptimizerState(format!(
                            "{k} has shape {:?}, variable {name} has {:?}",
                            s.dims(),
                            var.dims()
                        )));
                    }
                    // A copy of its own: the CPU updates write into the slots in place.
                    st.slots
                        .push(s.to_dtype(var.dtype())?.to_device(var.device())?.copy()?);
                }
                state.insert(name.to_string(), st);
            } else if !slots.iter().any(|s| rest.starts_with(&format!("{s}."))) {
                return Err(Error::OptimizerState(format!(
                    "unexpected tensor {key} for a {:?} optimizer",
                    self.cfg.kind
                )));
            }
        }
        self.state = state;
        Ok(())
    }
}

fn sgd_update(
    var: &Var,
    grad: &Tensor,
    prev: Option<ParamState>,
    lr: f64,
    wd: f64,
    momentum: f64,
) -> Result<ParamState> {
    let p = var.as_tensor();
    let step = prev.as_ref().map_or(0, |st| st.step);
    // PyTorch starts the buffer at the first gradient itself (= momentum * 0 + g).
    let buffer = prev
        .filter(|_| momentum != 0.0)
        .map(|st| st.slots[0].clone());
    if optim_cpu::usable(&[p, grad]) && buffer.as_ref().is_none_or(|d| optim_cpu::usable(&[d])) {
        let (d, momentum) = match buffer {
            Some(d) => (d, Some(momentum)),
            None => (grad.zeros_like()?, None),
        };
        d.inplace_op3(
            grad,
            p,
            &optim_cpu::SgdBuffer {
                momentum,
                weight_decay: wd,
            },
        )?;
        p.inplace_op2(&d, &optim_cpu::Descend { lr })?;
        return Ok(ParamState {
            step: step + 1,
            slots: vec![d],
        });
    }
    let g = if wd != 0.0 {
        (grad + p.affine(wd, 0.0)?)?
    } else {
        grad.clone()
    };
    let d = match buffer {
        Some(d) => (d.affine(momentum, 0.0)? + g)?,
        None => g,
    };
    var.set(&(p - d.affine(lr, 0.0)?)?)?;
    Ok(ParamState {
        step: step + 1,
        slots: vec![d.detach()],
    })
}

fn adamw_update(
    var: &Var,
    grad: &Tensor,
    prev: Option<ParamState>,
    lr: f64,
    wd: f64,
    cfg: &OptimizerConfig,
) -> Result<ParamState> {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let (m, v, step) = match prev {
        Some(st) => (st.slots[0].clone(), st.slots[1].clone(), st.step),
        None => (grad.zeros_like()?, grad.zeros_like()?, 0),
    };
    let step = step + 1;
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    let p = var.as_tensor();
    if optim_cpu::usable(&[p, grad, &m, &v]) {
        m.inplace_op2(
            grad,
            &optim_cpu::Moment {
                beta: b1,
                square: false,
            },
        )?;
        v.inplace_op2(
            grad,
            &optim_cpu::Moment {
                beta: b2,
                square: true,
            },
        )?;
        let apply = optim_cpu::AdamwApply {
            decay: 1.0 - lr * wd,
            step: lr / bc1,
            inv_sqrt_bc2: 1.0 / bc2.sqrt(),
            eps: cfg.eps,
        };
        p.inplace_op3(&m, &v, &apply)?;
        return Ok(ParamState {
            step,
            slots: vec![m, v],
        });
    }
    let p = p.affine(1.0 - lr * wd, 0.0)?;
    let m = (m.affine(b1, 0.0)? + grad.affine(1.0 - b1, 0.0)?)?;
    let v = (v.affine(b2, 0.0)? + grad.sqr()?.affine(1.0 - b2, 0.0)?)?;
    let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), cfg.eps)?;
    let upd = (m.affine(lr / bc1, 0.0)? / denom)?;
    var.set(&(p - upd)?)?;
    Ok(ParamState {
        step,
        slots: vec![m.detach(), v.detach()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `[rows, cols]` values as a contiguous tensor and as a strided view of the same values
    /// (the transpose of a contiguous transpose), which the in-place CPU path refuses.
    fn both_layouts(rows: usize, cols: usize, seed: f32) -> (Tensor, Tensor) {
        let n = rows * cols;
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.618 + seed).sin() * 3.0).powi(3) * 1e-2)
            .collect();
        let t = Tensor::from_vec(vals, (rows, cols), &Device::Cpu).unwrap();
        let strided = t.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!strided.is_contiguous());
        (t, strided)
    }

    /// Three updates through the in-place CPU passes and through the tensor ops give the same
    /// bits, for both optimizers, with and without decay, across several parallel chunks.
    #[test]
    fn in_place_and_tensor_paths_agree_bit_for_bit() {
        let cfg = OptimizerConfig::default();
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            for wd in [0.0, 0.05] {
                let (rows, cols) = (300, 229);
                let p_fused = Var::from_tensor(&both_layouts(rows, cols, 0.3).0).unwrap();
                let p_plain = Var::from_tensor(&both_layouts(rows, cols, 0.3).0).unwrap();
                let (mut s_fused, mut s_plain) = (None, None);
                for k in 0..3 {
                    let (g, g_strided) = both_layouts(rows, cols, k as f32);
                    let lr = 0.1 / (k + 1) as f64;
                    let step = |var: &Var, g: &Tensor, prev| match kind {
                        OptimizerKind::Sgd => sgd_update(var, g, prev, lr, wd, 0.9),
                        OptimizerKind::Adamw => adamw_update(var, g, prev, lr, wd, &cfg),
                    };
                    s_fused = Some(step(&p_fused, &g, s_fused).unwrap());
                    s_plain = Some(step(&p_plain, &g_strided, s_plain).unwrap());
                }
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&p_fused), bits(&p_plain), "{kind:?} wd {wd}");
                let (a, b) = (s_fused.unwrap(), s_plain.unwrap());
                assert_eq!(a.step, 3);
                for (x, y) in a.slots.iter().zip(&b.slots) {
                    assert_eq!(bits(x), bits(y), "{kind:?} wd {wd} state");
                }
                let moved = (p_fused.as_tensor() - both_layouts(rows, cols, 0.3).0).unwrap();
                assert!(
                    moved
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        > 0.0
                );
            }
        }
    }
}
