//! Checkpoints: one safetensors file holding the model's variables, the config (JSON, metadata
//! key `config`), and whatever a trainer adds: tensors named `train.*` (optimiser state) and
//! string metadata (epoch, step, RNG state).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use safetensors::SafeTensors;

use crate::config::ModelConfig;
use crate::fit::{check_fit, set_vars};
use crate::model::TwoAttTwoMt;
use crate::{Error, Result};

/// Metadata key of the model config (JSON).
pub const CONFIG_KEY: &str = "config";
/// Prefix that marks a tensor as trainer state rather than a model variable.
pub const TRAIN_PREFIX: &str = "train.";

/// Writes `varmap`'s variables, `config`, `extra_tensors` (each named `train.*`) and
/// `extra_meta` to `path`, atomically (temp file + rename).
pub fn save(
    path: impl AsRef<Path>,
    varmap: &VarMap,
    config: &ModelConfig,
    extra_tensors: &[(String, Tensor)],
    extra_meta: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    if extra_meta.contains_key(CONFIG_KEY) {
        return Err(err(format!(
            "extra metadata may not use the reserved key {CONFIG_KEY:?}"
        )));
    }
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            if name.starts_with(TRAIN_PREFIX) {
                return Err(err(format!(
                    "model variable {name:?} uses the reserved prefix {TRAIN_PREFIX:?}"
                )));
            }
            tensors.insert(name.clone(), to_host(var.as_tensor())?);
        }
    }
    for (name, t) in extra_tensors {
        if !name.starts_with(TRAIN_PREFIX) {
            return Err(err(format!(
                "extra tensor {name:?} must be named {TRAIN_PREFIX:?}* to keep it apart from model variables"
            )));
        }
        if tensors.insert(name.clone(), to_host(t)?).is_some() {
            return Err(err(format!("extra tensor {name:?} is given twice")));
        }
    }
    let mut meta: HashMap<String, String> = extra_meta.clone().into_iter().collect();
    let json = serde_json::to_string(config).map_err(|e| err(format!("config to JSON: {e}")))?;
    meta.insert(CONFIG_KEY.to_string(), json);
    let bytes = safetensors::serialize(tensors.iter(), Some(meta))
        .map_err(|e| err(format!("serialising: {e}")))?;
    fer_atomic::write(path, &bytes).map_err(|e| Error::io(&e.path, e.source))
}

/// Detached, contiguous, on the CPU: what the safetensors writer can read without failing.
fn to_host(t: &Tensor) -> Result<Tensor> {
    Ok(t.detach().to_device(&Device::Cpu)?.contiguous()?)
}

/// A checkpoint read back from disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it was read from (for error messages).
    pub path: PathBuf,
    pub config: ModelConfig,
    /// Every tensor in the file: model variables and `train.*` entries.
    pub tensors: BTreeMap<String, Tensor>,
    /// Metadata other than the config.
    pub meta: BTreeMap<String, String>,
}

/// Reads a checkpoint written by [`save`], placing its tensors on `device`.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Checkpoint> {
    let path = path.as_ref();
    let err = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let json = meta.remove(CONFIG_KEY).ok_or_else(|| {
        err(format!(
            "no {CONFIG_KEY:?} metadata: not a model checkpoint"
        ))
    })?;
    let config: ModelConfig =
        serde_json::from_str(&json).map_err(|e| err(format!("bad model config: {e}")))?;
    config
        .validate()
        .map_err(|e| err(format!("stored config: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| err(format!("reading tensors: {e}")))?
        .into_iter()
        .collect();
    Ok(Checkpoint {
        path: path.to_path_buf(),
        config,
        tensors,
        meta,
    })
}

impl Checkpoint {
    /// The model variables (everything not named `train.*`).
    pub fn model_tensors(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors
            .iter()
            .filter(|(n, _)| !n.starts_with(TRAIN_PREFIX))
    }

    /// The trainer's tensors, names kept with their `train.` prefix.
    pub fn train_tensors(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors
            .iter()
            .filter(|(n, _)| n.starts_with(TRAIN_PREFIX))
    }

    /// Copies the model variables into `varmap`. Every variable of `varmap` must be in the file
    /// with the same shape and the file may hold no other model tensor; otherwise nothing is
    /// changed and the error names the first missing, unexpected and mismatched entries.
    pub fn load_into(&self, varmap: &VarMap) -> Result<()> {
        let given: BTreeMap<String, Tensor> = self
            .model_tensors()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let fit = check_fit(varmap, &given, |_| true);
        if !fit.is_clean() {
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                msg: format!("does not fit the model: {}", fit.describe()),
            });
        }
        set_vars(varmap, &given)
    }

    /// Builds the model the checkpoint describes on `device` and loads its weights.
    pub fn build(&self, device: &Device) -> Result<(VarMap, TwoAttTwoMt)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
        let model = TwoAttTwoMt::new(&self.config, vb)?;
        self.load_into(&varmap)?;
        Ok((varmap, model))
    }
}
