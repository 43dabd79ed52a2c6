//! Checkpoint round trips (weights, running stats, config, trainer tensors and metadata) and the
//! errors for files that do not fit.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::checkpoint::{self, CONFIG_KEY};
use fer_model::{ModelConfig, RnnKind, Stem, TwoAttTwoMt};

fn small_config() -> ModelConfig {
    let mut c = ModelConfig::default();
    c.backbone.width = 0.0625;
    c.backbone.stem = Stem::Small;
    c.backbone.stem_stride = 2;
    c.attention.d = 8;
    c.attention.a = 4;
    c.rnn.hidden = 4;
    c.att2_width = 4;
    c.cat_hidden = 8;
    c.va_hidden = 8;
    c.aux_head = true;
    c
}

fn build(cfg: &ModelConfig) -> (VarMap, TwoAttTwoMt) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = TwoAttTwoMt::new(cfg, vb).unwrap();
    (varmap, model)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn snapshot(varmap: &VarMap) -> BTreeMap<String, Vec<f32>> {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), values(v.as_tensor())))
        .collect()
}

#[test]
fn round_trip_restores_everything() {
    let cfg = small_config();
    let (varmap, model) = build(&cfg);
    let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
    // A train-mode pass moves the running stats away from their initial 0/1.
    model.forward(&x, true).unwrap();
    let before = model.forward(&x, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs/a/ckpt.safetensors");
    let momentum = Tensor::arange(0f32, 6.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let extra = vec![(
        "train.sgd.momentum.cat_out.weight".to_string(),
        momentum.t().unwrap(),
    )];
    let meta: BTreeMap<String, String> = [("epoch", "3"), ("rng", "12345:67")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    checkpoint::save(&path, &varmap, &cfg, &extra, &meta).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp file left behind");

    let ck = checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(ck.config, cfg);
    assert_eq!(ck.meta, meta);
    let train: Vec<_> = ck.train_tensors().collect();
    assert_eq!(train.len(), 1);
    assert_eq!(train[0].0, "train.sgd.momentum.cat_out.weight");
    assert_eq!(train[0].1.dims(), &[3, 2]);
    assert_eq!(values(train[0].1), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(ck.model_tensors().count(), varmap.all_vars().len());

    let (varmap2, model2) = ck.build(&Device::Cpu).unwrap();
    assert_eq!(snapshot(&varmap2), snapshot(&varmap));
    let after = model2.forward(&x, false).unwrap();
    assert_eq!(values(&after.valence), values(&before.valence));
    assert_eq!(
        values(after.logits.as_ref().unwrap()),
        values(before.logits.as_ref().unwrap())
    );

    // Overwriting an existing checkpoint works and still leaves one file.
    checkpoint::save(&path, &varmap, &cfg, &[], &BTreeMap::new()).unwrap();
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
    assert_eq!(
        checkpoint::load(&path, &Device::Cpu)
            .unwrap()
            .train_tensors()
            .count(),
        0
    );
}

#[test]
fn another_config_is_refused_by_name_and_nothing_changes() {
    let cfg = small_config();
    let (varmap, _) = build(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    checkpoint::save(&path, &varmap, &cfg, &[], &BTreeMap::new()).unwrap();
    let ck = checkpoint::load(&path, &Device::Cpu).unwrap();

    // GRU instead of LSTM: same names, fewer gate rows.
    let mut gru = cfg.clone();
    gru.rnn.kind = RnnKind::Gru;
    let (vm, _) = build(&gru);
    let before = snapshot(&vm);
    let e = ck.load_into(&vm).unwrap_err().to_string();
    assert!(e.contains("a.safetensors"), "{e}");
    assert!(
        e.contains("shape mismatches") && e.contains("rnn.weight_hh_l0"),
        "{e}"
    );
    assert!(e.contains("[16, 4]") && e.contains("[12, 4]"), "{e}");
    assert_eq!(snapshot(&vm), before, "a failed load changed the model");

    // No aux head, no att2: names missing from the model.
    let mut plain = cfg.clone();
    plain.aux_head = false;
    let (vm, _) = build(&plain);
    let e = ck.load_into(&vm).unwrap_err().to_string();
    assert!(
        e.contains("2 unexpected (aux_head.bias, aux_head.weight)"),
        "{e}"
    );

    // A deeper tap list: names the checkpoint lacks.
    let mut one_tap = cfg.clone();
    one_tap.backbone.taps = vec!["layer2".into()];
    let (vm, _) = build(&one_tap);
    let e = ck.load_into(&vm).unwrap_err().to_string();
    // att1.1 and att1.2 (7 names each), layer3 and layer4 (25 each): 64 names.
    assert!(e.contains("64 unexpected (att1.1.fuse.bias"), "{e}");
    assert!(
        e.contains("aux_head.weight: file [8, 32] vs model [8, 8]"),
        "{e}"
    );
}

#[test]
fn save_rejects_reserved_names() {
    let cfg = small_config();
    let (varmap, _) = build(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let e = checkpoint::save(
        &path,
        &varmap,
        &cfg,
        &[("opt.m".into(), t.clone())],
        &BTreeMap::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("opt.m") && e.contains("train."), "{e}");
    let meta = BTreeMap::from([(CONFIG_KEY.to_string(), "x".to_string())]);
    let e = checkpoint::save(&path, &varmap, &cfg, &[], &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reserved"), "{e}");
    let dup = [
        ("train.a".to_string(), t.clone()),
        ("train.a".to_string(), t),
    ];
    let e = checkpoint::save(&path, &varmap, &cfg, &dup, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    assert!(!path.exists());
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let e = checkpoint::load(&missing, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let e = checkpoint::load(&garbage, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("garbage.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );

    // A valid safetensors file without the config: weights alone are not a checkpoint.
    let bare = dir.path().join("bare.safetensors");
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    t.save_safetensors("w", &bare).unwrap();
    let e = checkpoint::load(&bare, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bare.safetensors") && e.contains("not a model checkpoint"),
        "{e}"
    );
}
