//! Loading the PyTorch fixtures written by `tests/reference/model/gen_fixtures.py`.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{ModelConfig, TwoAttTwoMt};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub struct Fixture {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(case: &str) -> Fixture {
        let path = fixture_path(&format!("{case}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let json = meta.metadata().as_ref().unwrap()["config"].clone();
        let config: ModelConfig = serde_json::from_str(&json).unwrap();
        config.validate().unwrap();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        Fixture { config, tensors }
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no {key}"))
    }

    pub fn opt(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Builds the Rust model and copies the fixture weights in, checking that the two sides
    /// name exactly the same variables.
    pub fn build(&self, dtype: DType) -> (VarMap, TwoAttTwoMt) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let model = TwoAttTwoMt::new(&self.config, vb).unwrap();
        let want: BTreeSet<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("w.").map(String::from))
            .collect();
        let data = varmap.data().lock().unwrap();
        let have: BTreeSet<String> = data.keys().cloned().collect();
        let only_rust: Vec<_> = have.difference(&want).collect();
        let only_torch: Vec<_> = want.difference(&have).collect();
        assert!(
            only_rust.is_empty() && only_torch.is_empty(),
            "variable names differ: only in Rust {only_rust:?}, only in PyTorch {only_torch:?}"
        );
        for (name, var) in data.iter() {
            let w = self.get(&format!("w.{name}")).to_dtype(dtype).unwrap();
            assert_eq!(w.dims(), var.dims(), "shape of {name}");
            var.set(&w).unwrap();
        }
        drop(data);
        (varmap, model)
    }
}

/// max |got - want| / max |want|: the error relative to the tensor's scale.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to_dtype(DType::F64).unwrap();
    let want = want.to_dtype(DType::F64).unwrap();
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (diff / scale.max(1e-12)) as f32
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}
