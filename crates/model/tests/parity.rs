//! The Rust model against the PyTorch reference (tests/reference/model), case by case, in
//! float32 and float64: outputs in eval and train mode, BatchNorm running statistics after the
//! train forward, and the gradients of a few named weights of a fixed scalar. The comparison
//! itself is `fer_model::parity`, which `trainer gpu-check` runs on a GPU.
//!
//! The tests run with fresh kernel outputs poisoned (fer-kernels' `poison` feature, on in this
//! crate's dev-dependencies): an element a kernel does not write is NaN and fails the
//! comparison, instead of passing as recycled memory.

mod common;

use candle_core::{DType, Device};
use common::fixture_path;
use fer_model::parity::{compare, CASES};

fn run_case(case: &str) {
    assert!(CASES.contains(&case), "{case} is not in parity::CASES");
    for dtype in [DType::F32, DType::F64] {
        let path = fixture_path(&format!("{case}.safetensors"));
        let rows = compare(&path, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| !r.ok())
            .map(|r| format!("{}: relative error {:e} > {:e}", r.what, r.rel_err, r.tol))
            .collect();
        assert!(bad.is_empty(), "{case} {dtype:?}:\n{}", bad.join("\n"));
    }
}

#[test]
fn resnet18_lstm_with_aux_head() {
    run_case("r18_w0625_lstm_aux");
}

#[test]
fn resnet18_small_stem_gru_seven_classes_partial_taps() {
    run_case("r18_w0625_small_gru_k7");
}

#[test]
fn no_att1_global_pool() {
    run_case("r18_w0625_small_s2_no_att1");
}

#[test]
fn no_att2_mean_over_layers() {
    run_case("r18_w0625_small_s2_no_att2");
}

#[test]
fn va_only() {
    run_case("r18_w0625_small_s2_va_only");
}

#[test]
fn resnet50_bottleneck() {
    run_case("r50_w0625_lstm");
}

#[test]
fn resnet34_gru_skipping_a_stage() {
    run_case("r34_w0625_gru");
}

#[test]
fn torchvision_resnet18_module_full_width() {
    run_case("r18_torchvision_layer1");
}

/// Every case `trainer gpu-check` runs has a test here and a file.
#[test]
fn every_listed_case_has_a_fixture() {
    for case in CASES {
        assert!(
            fixture_path(&format!("{case}.safetensors")).is_file(),
            "{case}"
        );
    }
}

/// A fixture whose numbers are off fails in the rows concerned, not elsewhere.
#[test]
fn a_perturbed_reference_is_caught() {
    let case = CASES[1];
    let fx =
        fer_model::parity::Fixture::load(fixture_path(&format!("{case}.safetensors"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perturbed.safetensors");
    let mut tensors = fx.tensors.clone();
    let key = "eval.logits";
    let t = &tensors[key];
    tensors.insert(key.into(), (t * 1.01).unwrap());
    let bytes = std::fs::read(fixture_path(&format!("{case}.safetensors"))).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let tensors: Vec<_> = tensors.iter().collect();
    safetensors::serialize_to_file(tensors, meta.metadata().clone(), &path).unwrap();
    let rows = compare(&path, DType::F32, &Device::Cpu).unwrap();
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.what.as_str())
        .collect();
    assert_eq!(bad, vec![key]);
}
