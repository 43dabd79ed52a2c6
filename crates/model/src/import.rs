//! Import of torchvision ResNet weights (`.pth` state dicts or `.safetensors`) into the backbone.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::fit::{check_fit, set_vars};
use crate::{Error, Result};

/// Where the backbone's variables live in the model's VarMap.
pub const BACKBONE_PREFIX: &str = "backbone.";

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Backbone variables that received weights from the file.
    pub loaded: Vec<String>,
    /// File entries deliberately left out: `num_batches_tracked`, the classifier `fc.*`, and the
    /// stages deeper than the deepest tap (the model does not build them).
    pub skipped: Vec<String>,
}

/// Reads every tensor of a torchvision state dict: safetensors by extension, otherwise a
/// PyTorch zip pickle (`torch.save`), where the dict may also sit under `state_dict` or `model`.
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let err = |msg: String| Error::Import {
        path: path.to_path_buf(),
        msg,
    };
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| err(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect()
    } else {
        let mut found = candle_core::pickle::read_all(path).map_err(|e| {
            err(format!(
                "not a PyTorch state dict saved with torch.save (zip format): {e}"
            ))
        })?;
        // A training checkpoint nests the dict; a missing key just means "not this layout".
        for key in ["state_dict", "model"] {
            if !found.is_empty() {
                break;
            }
            found = candle_core::pickle::read_all_with_key(path, Some(key)).unwrap_or_default();
        }
        found
    };
    if tensors.is_empty() {
        return Err(err("holds no tensors: not a state dict".into()));
    }
    Ok(tensors.into_iter().collect())
}

/// Loads a torchvision ResNet state dict (`conv1.weight`, `layer1.0.bn1.running_mean`, ...)
/// into the `backbone.*` variables of `varmap`. Every backbone variable must be filled with a
/// tensor of the same shape, and every file entry must be used or deliberately skipped (see
/// [`ImportReport::skipped`]); otherwise nothing is changed and the error lists the first
/// missing, unexpected and mismatched names.
pub fn import_torchvision(path: impl AsRef<Path>, varmap: &VarMap) -> Result<ImportReport> {
    let path = path.as_ref();
    let file = read_state_dict(path)?;
    let built_stages: Vec<String> = {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        (1..=4)
            .map(|s| format!("layer{s}."))
            .filter(|stage| {
                let prefix = format!("{BACKBONE_PREFIX}{stage}");
                data.keys().any(|k| k.starts_with(&prefix))
            })
            .collect()
    };
    let mut report = ImportReport::default();
    let mut given = BTreeMap::new();
    for (name, t) in file {
        // Weights saved from `nn.DataParallel` carry a `module.` prefix.
        let key = name.strip_prefix("module.").unwrap_or(&name);
        let unused_stage = (1..=4)
            .map(|s| format!("layer{s}."))
            .find(|s| key.starts_with(s.as_str()))
            .is_some_and(|s| !built_stages.contains(&s));
        if key.ends_with("num_batches_tracked") || key.starts_with("fc.") || unused_stage {
            report.skipped.push(name);
            continue;
        }
        given.insert(format!("{BACKBONE_PREFIX}{key}"), t);
    }
    let fit = check_fit(varmap, &given, |n| n.starts_with(BACKBONE_PREFIX));
    if !fit.is_clean() {
        let hint = if fit.missing.len() == count_backbone(varmap) {
            " (no backbone weight found: is this a torchvision ResNet state dict?)"
        } else {
            ""
        };
        return Err(Error::Import {
            path: path.to_path_buf(),
            msg: format!(
                "does not fit this ResNet backbone: {}{hint}",
                fit.describe()
            ),
        });
    }
    set_vars(varmap, &given)?;
    report.loaded = given.into_keys().collect();
    Ok(report)
}

fn count_backbone(varmap: &VarMap) -> usize {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    data.keys()
        .filter(|k| k.starts_with(BACKBONE_PREFIX))
        .count()
}
