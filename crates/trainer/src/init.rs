//! Seeded weight initialisation.
//!
//! candle draws initial weights from the device's random generator, which on the CPU cannot be
//! seeded, so two runs with the same seed would start from different weights. This backend for
//! `VarBuilder` creates each missing variable from its own ChaCha stream, keyed by the run seed
//! and the variable's name, with the distribution the model asked for (the `Init` hint); the
//! result does not depend on the order in which the model creates its variables.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `VarMap` whose new variables come from seeded generators.
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// A `VarBuilder` writing into `varmap`, initialising from `seed`.
    pub fn builder(
        varmap: &VarMap,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(SeededVarMap {
            varmap: varmap.clone(),
            seed,
        });
        VarBuilder::from_backend(backend, dtype, device.clone())
    }
}

/// FNV-1a of the name, mixed with the seed: a stable stream id per variable.
fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Draws `n` values from `init` (fan computed from `shape` as candle does).
pub fn sample(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |lo: f64, up: f64, rng: &mut ChaCha8Rng| -> Vec<f64> {
        (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect()
    };
    let normal = |mean: f64, std: f64, rng: &mut ChaCha8Rng| -> Vec<f64> {
        // Box-Muller; 1 - u keeps the logarithm finite.
        (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    };
    match init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => uniform(lo, up, rng),
        Init::Randn { mean, stdev } => normal(mean, stdev, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(-b, b, rng)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std, rng),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("VarMap lock poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "variable {name} exists with shape {:?}, requested {:?}",
                    v.shape(),
                    s
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(self.seed, name));
        let values = sample(h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("the seeded initialiser needs a shape for {name}")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64, order: &[&str]) -> VarMap {
        let vm = VarMap::new();
        let vb = SeededVarMap::builder(&vm, seed, DType::F32, &Device::Cpu);
        for n in order {
            vb.get_with_hints((3, 4), n, Init::Uniform { lo: -1.0, up: 1.0 })
                .unwrap();
        }
        vm
    }

    fn values(vm: &VarMap, n: &str) -> Vec<f32> {
        vm.data().lock().unwrap()[n]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_whatever_the_order() {
        let a = build(5, &["x", "y"]);
        let b = build(5, &["y", "x"]);
        assert_eq!(values(&a, "x"), values(&b, "x"));
        assert_ne!(values(&a, "x"), values(&a, "y"));
        let c = build(6, &["x"]);
        assert_ne!(values(&a, "x"), values(&c, "x"));
        assert!(values(&a, "x").iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn distributions_have_the_requested_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = Shape::from((200, 100));
        let v = sample(
            Init::Randn {
                mean: 0.5,
                stdev: 2.0,
            },
            &s,
            &mut rng,
        );
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        // 20000 draws: standard error of the mean 0.014, of the variance ~0.04.
        assert!((mean - 0.5).abs() < 0.06, "{mean}");
        assert!((var - 4.0).abs() < 0.2, "{var}");
        let u = sample(Init::Uniform { lo: -0.1, up: 0.3 }, &s, &mut rng);
        let um = u.iter().sum::<f64>() / n;
        assert!((um - 0.1).abs() < 0.005, "{um}");
        assert!(u.iter().all(|x| (-0.1..0.3).contains(x)));
        assert_eq!(sample(Init::Const(0.25), &s, &mut rng), vec![0.25; 20000]);
    }
}
