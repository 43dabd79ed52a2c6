//! An exponential moving average of the model's variables (weights and BatchNorm running
//! statistics), the model that validation, the best checkpoints and the final evaluation use
//! when `ema_decay` is set.
//!
//! After optimizer step `t` of a stage (0-based) the average moves by `1 - d_t` towards the current values, with
//! `d_t = min(decay, (1 + t) / (10 + t))`: early in a stage the average follows the weights
//! closely (a fixed 0.999 would remember the random initialisation for thousands of steps), later
//! it spans roughly the last `1 / (1 - decay)` steps.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Init, VarMap};
//! use trainer::ema::Ema;
//!
//! let varmap = VarMap::new();
//! let w = varmap.get(2, "w", Init::Const(1.0), DType::F32, &Device::Cpu).unwrap();
//! let mut ema = Ema::new(&varmap, 0.999).unwrap();
//! varmap.data().lock().unwrap()["w"].set(&Tensor::new(&[3f32, 3.0], &Device::Cpu).unwrap()).unwrap();
//! ema.update(0).unwrap(); // d_0 = 0.1: 0.1 * 1 + 0.9 * 3
//! ema.swap(&varmap).unwrap(); // the model now holds the average
//! let avg = varmap.data().lock().unwrap()["w"].to_vec1::<f32>().unwrap();
//! assert!((avg[0] - 2.8).abs() < 1e-6);
//! # drop(w);
//! ```

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::optim_cpu;
use crate::{Error, Result};

/// Names of the average's tensors in a checkpoint start with this (after the checkpoint's
/// reserved training prefix).
pub const PREFIX: &str = "ema.";

/// The average of one stage: its update number is the stage's step count, which the training
/// state keeps, so the average holds none of its own.
pub struct Ema {
    decay: f64,
    /// Each variable beside its average, in name order.
    entries: Vec<(String, Var, Tensor)>,
}

impl Ema {
    /// Starts the average at the variables' current values.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::Config(format!(
                "ema_decay must be in [0, 1), got {decay}"
            )));
        }
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut entries = data
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.clone(), v.as_tensor().copy()?.detach())))
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema { decay, entries })
    }

    /// The weight of the old average in update number `t`.
    pub fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// Moves the average towards the variables' current values after optimizer step `step`
    /// (0-based, counted within the stage).
    pub fn update(&mut self, step: usize) -> Result<()> {
        let d = self.decay_at(step as u64);
        for (_, var, avg) in &mut self.entries {
            let w = var.as_detached_tensor();
            if optim_cpu::usable(&[avg, &w]) {
                // avg * d + w * (1 - d), in place: the same formula as Adam's first moment.
                avg.inplace_op2(
                    &w,
                    &optim_cpu::Moment {
                        beta: d,
                        square: false,
                    },
                )?;
            } else {
                *avg = (avg.affine(d, 0.0)? + w.affine(1.0 - d, 0.0)?)?.detach();
            }
        }
        Ok(())
    }

    /// Exchanges the variables' values with the average's: called once to evaluate (or save)
    /// the average, once more to go on training. Whatever changes the variables in between
    /// (averaging running statistics over ranks) ends up in the average.
    pub fn swap(&mut self, varmap: &VarMap) -> Result<()> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, var, avg) in &mut self.entries {
            if !data
                .get(name)
                .is_some_and(|v| v.as_tensor().id() == var.as_tensor().id())
            {
                return Err(Error::Config(format!(
                    "the moving average was built for another model (variable {name})"
                )));
            }
            let current = var.as_tensor().copy()?.detach();
            var.set(avg)?;
            *avg = current;
        }
        Ok(())
    }

    /// The average's tensors for a checkpoint, named `ema.<variable>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, _, avg)| (format!("{PREFIX}{n}"), avg.clone()))
            .collect()
    }

    /// Restores what [`Ema::state_tensors`] saved (the names as written there, `ema.` first);
    /// every variable must be there, with its shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut loaded = Vec::with_capacity(self.entries.len());
        for (name, var, _) in &self.entries {
            let t = tensors.get(&format!("{PREFIX}{name}")).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "the checkpoint has no moving average for {name}: it was written without \
                     ema_decay"
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
                    "moving average of {name}: shape {:?} in the checkpoint, {:?} in the model",
                    t.dims(),
                    var.dims()
                )));
            }
            let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
            loaded.push(t.copy()?.detach());
        }
        for ((_, _, avg), t) in self.entries.iter_mut().zip(loaded) {
            *avg = t;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Init;

    fn set(varmap: &VarMap, name: &str, v: &[f32]) {
        let t = Tensor::new(v, &Device::Cpu).unwrap();
        varmap.data().lock().unwrap()[name].set(&t).unwrap();
    }

    fn get(varmap: &VarMap, name: &str) -> Vec<f32> {
        varmap.data().lock().unwrap()[name].to_vec1().unwrap()
    }

    fn model() -> VarMap {
        let varmap = VarMap::new();
        varmap
            .get(3, "a", Init::Const(1.0), DType::F32, &Device::Cpu)
            .unwrap();
        varmap
            .get(
                2,
                "b.running_mean",
                Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        varmap
    }

    /// Hand-derived: decay 0.5 caps d_t from t = 8 on ((1 + 8) / 18 = 0.5).
    #[test]
    fn follows_the_warmed_up_decay_by_hand() {
        let varmap = model();
        let mut ema = Ema::new(&varmap, 0.5).unwrap();
        assert_eq!(ema.decay_at(0), 0.1);
        assert_eq!(ema.decay_at(1), 2.0 / 11.0);
        assert_eq!(ema.decay_at(8), 0.5);
        assert_eq!(ema.decay_at(100), 0.5);
        // The values after each update, a = 1 at the start.
        let mut expect = 1.0f64;
        for (t, w) in [3.0, -1.0, 5.0].into_iter().enumerate() {
            set(&varmap, "a", &[w as f32; 3]);
            ema.update(t).unwrap();
            let d = ema.decay_at(t as u64);
            expect = expect * d + w * (1.0 - d);
        }
        // 0.1 + 2.7 = 2.8; 2.8 * 2/11 - 9/11 = -0.3091; then d = 3/12.
        assert!((expect - (-0.309_090_9 * 0.25 + 5.0 * 0.75)).abs() < 1e-6);
        ema.swap(&varmap).unwrap();
        for x in get(&varmap, "a") {
            assert!((f64::from(x) - expect).abs() < 1e-5, "{x} vs {expect}");
        }
        // Swapping back restores the trained values exactly.
        ema.swap(&varmap).unwrap();
        assert_eq!(get(&varmap, "a"), vec![5.0; 3]);
    }

    #[test]
    fn running_statistics_are_averaged_too() {
        let varmap = model();
        let mut ema = Ema::new(&varmap, 0.9).unwrap();
        set(&varmap, "b.running_mean", &[10.0, 20.0]);
        ema.update(0).unwrap();
        ema.swap(&varmap).unwrap();
        assert_eq!(get(&varmap, "b.running_mean"), vec![9.0, 18.0]);
    }

    #[test]
    fn state_round_trips_and_checks_shapes() {
        let varmap = model();
        let mut ema = Ema::new(&varmap, 0.9).unwrap();
        set(&varmap, "a", &[2.0, 4.0, 6.0]);
        ema.update(0).unwrap();
        ema.update(1).unwrap();
        let saved: HashMap<String, Tensor> = ema.state_tensors().into_iter().collect();

        let mut other = Ema::new(&varmap, 0.9).unwrap();
        other.load_state(&saved).unwrap();
        other.update(2).unwrap();
        ema.update(2).unwrap();
        other.swap(&varmap).unwrap();
        let a = get(&varmap, "a");
        other.swap(&varmap).unwrap();
        ema.swap(&varmap).unwrap();
        assert_eq!(
            a,
            get(&varmap, "a"),
            "a restored average continues identically"
        );
        ema.swap(&varmap).unwrap();

        let mut bad = saved.clone();
        bad.insert(
            "ema.a".into(),
            Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = other.load_state(&bad).unwrap_err().to_string();
        assert!(e.contains("shape [4]"), "{e}");
        let mut none = saved;
        none.remove("ema.b.running_mean");
        let e = other.load_state(&none).unwrap_err().to_string();
        assert!(e.contains("without ema_decay"), "{e}");
    }

    #[test]
    fn rejects_a_decay_outside_zero_to_one() {
        for d in [1.0, -0.1, f64::NAN] {
            assert!(Ema::new(&model(), d).is_err(), "{d}");
        }
    }
}
