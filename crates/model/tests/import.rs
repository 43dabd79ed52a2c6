//! Import of torchvision state dicts: names and shapes recorded from torchvision itself
//! (fixtures/torchvision_names.json), a real `torch.save` file (fixtures/tiny_resnet.pth), and
//! wrong files.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::fixture_path;
use fer_model::import::{import_torchvision, read_state_dict};
use fer_model::{BackboneConfig, ModelConfig, ResNet, Stem};

/// `(name, shape)` of torchvision's `resnet{depth}(weights=None).state_dict()`.
fn torchvision_names(depth: usize) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture_path("torchvision_names.json")).unwrap();
    let all: BTreeMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    all[&format!("resnet{depth}")].clone()
}

fn backbone(cfg: &BackboneConfig) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ResNet::new(cfg, vb.pp("backbone")).unwrap();
    varmap
}

fn var_values(varmap: &VarMap, name: &str) -> Vec<f32> {
    varmap.data().lock().unwrap()[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn backbone_names_and_shapes_are_torchvisions() {
    for depth in [18, 50] {
        let varmap = backbone(&BackboneConfig {
            depth,
            ..Default::default()
        });
        let ours: BTreeMap<String, Vec<usize>> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| {
                (
                    n.strip_prefix("backbone.").unwrap().to_string(),
                    v.dims().to_vec(),
                )
            })
            .collect();
        let theirs: BTreeMap<String, Vec<usize>> = torchvision_names(depth)
            .into_iter()
            .filter(|(n, _)| !n.ends_with("num_batches_tracked") && !n.starts_with("fc."))
            .collect();
        assert_eq!(ours, theirs, "resnet{depth}");
    }
}

/// Writes a state dict with torchvision's names and shapes and random values, as fp16 to keep
/// the temp file small, into `dir`.
fn write_fake_torchvision(
    depth: usize,
    dir: &std::path::Path,
) -> (std::path::PathBuf, BTreeMap<String, Tensor>) {
    let mut tensors = BTreeMap::new();
    for (name, shape) in torchvision_names(depth) {
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::new(&[7i64], &Device::Cpu)
                .unwrap()
                .squeeze(0)
                .unwrap()
        } else {
            Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap()
        };
        tensors.insert(name, t);
    }
    let path = dir.join(format!("resnet{depth}.safetensors"));
    let map: std::collections::HashMap<_, _> = tensors.clone().into_iter().collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    (path, tensors)
}

#[test]
fn imports_a_torchvision_resnet18_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = write_fake_torchvision(18, dir.path());
    let mut cfg = ModelConfig::default();
    cfg.backbone.taps = vec!["layer2".into(), "layer3".into()];
    let varmap = VarMap::new();
    fer_model::TwoAttTwoMt::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let head_before = var_values(&varmap, "att1.0.proj.weight");

    let report = import_torchvision(&path, &varmap).unwrap();
    // layer4 is not built with these taps; fc and the counters are never used.
    assert!(report.skipped.contains(&"fc.weight".to_string()));
    assert!(report
        .skipped
        .contains(&"bn1.num_batches_tracked".to_string()));
    assert!(report.skipped.iter().any(|n| n.starts_with("layer4.")));
    assert!(!report
        .skipped
        .iter()
        .any(|n| n.starts_with("layer3.") && !n.ends_with("tracked")));
    assert_eq!(report.loaded.len() + report.skipped.len(), tensors.len());
    for name in [
        "conv1.weight",
        "layer1.0.bn1.running_var",
        "layer3.0.downsample.0.weight",
    ] {
        let want: Vec<f32> = tensors[name]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            var_values(&varmap, &format!("backbone.{name}")),
            want,
            "{name}"
        );
    }
    // Only the backbone is touched.
    assert_eq!(var_values(&varmap, "att1.0.proj.weight"), head_before);
}

#[test]
fn another_architecture_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_fake_torchvision(50, dir.path());
    let varmap = backbone(&BackboneConfig::default());
    let before = var_values(&varmap, "backbone.conv1.weight");
    let e = import_torchvision(&path, &varmap).unwrap_err().to_string();
    assert!(e.contains("resnet50.safetensors"), "{e}");
    assert!(e.contains("unexpected") && e.contains("conv3"), "{e}");
    assert!(
        e.contains("shape mismatches") && e.contains("layer1.0.conv1.weight"),
        "{e}"
    );
    assert_eq!(var_values(&varmap, "backbone.conv1.weight"), before);
}

fn tiny_backbone() -> VarMap {
    backbone(&BackboneConfig {
        depth: 18,
        width: 0.0625,
        stem: Stem::Small,
        stem_stride: 1,
        taps: vec!["layer2".into()],
    })
}

#[test]
fn imports_a_real_torch_save_file() {
    for file in ["tiny_resnet.pth", "tiny_resnet_nested.pth"] {
        check_tiny_import(file);
    }
}

fn check_tiny_import(file: &str) {
    let varmap = tiny_backbone();
    let report = import_torchvision(fixture_path(file), &varmap).unwrap();
    let mut skipped = report.skipped.clone();
    skipped.retain(|n| !n.ends_with("num_batches_tracked"));
    skipped.sort();
    assert_eq!(skipped, ["fc.bias", "fc.weight"]);
    // The same tensors, written by safetensors.torch instead of the pickle path.
    let want =
        candle_core::safetensors::load(fixture_path("tiny_resnet.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(report.loaded.len(), want.len());
    assert_eq!(report.loaded.len(), varmap.all_vars().len());
    for (name, t) in &want {
        let w: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            var_values(&varmap, &format!("backbone.{name}")),
            w,
            "{name}"
        );
    }
}

#[test]
fn wrong_files_are_clear_errors() {
    let varmap = tiny_backbone();
    let e = import_torchvision(fixture_path("not_a_state_dict.pth"), &varmap)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not_a_state_dict.pth") && e.contains("not a state dict"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("weights.pth");
    std::fs::write(&text, "hello").unwrap();
    let e = import_torchvision(&text, &varmap).unwrap_err().to_string();
    assert!(e.contains("weights.pth") && e.contains("torch.save"), "{e}");

    let st = dir.path().join("weights.safetensors");
    std::fs::write(&st, "hello").unwrap();
    let e = read_state_dict(&st).unwrap_err().to_string();
    assert!(
        e.contains("weights.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    // A state dict of something else entirely: nothing matches.
    let other = dir.path().join("other.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    t.save_safetensors("encoder.weight", &other).unwrap();
    let e = import_torchvision(&other, &varmap).unwrap_err().to_string();
    assert!(
        e.contains("encoder.weight") && e.contains("is this a torchvision ResNet"),
        "{e}"
    );

    let e = import_torchvision(dir.path().join("nope.pth"), &varmap)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.pth"), "{e}");
}
