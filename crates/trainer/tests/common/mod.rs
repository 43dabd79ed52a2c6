//! Shared helpers of the end-to-end tests: tiny synthetic sets and running the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fer_data::prepare::{prepare, PrepareConfig, Source};
use fer_data::synth::{generate, Layout, SynthConfig};

pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny.toml");

pub fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("the trainer binary runs")
}

/// `trainer train --data <data> --config tests/fixtures/tiny.toml --out <out> <extra>`.
pub fn train_tiny(data: &Path, out: &Path, extra: &[&str]) -> Output {
    train_with(data, TINY, out, extra)
}

/// `trainer train --data <data> --config <config> --out <out> <extra>`.
pub fn train_with(data: &Path, config: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        config,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    trainer(&args)
}

/// metrics.jsonl of a run without its timings: what two runs of one seed must share.
pub fn history_without_timings(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_second");
            v
        })
        .collect()
}

pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "trainer failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn err(out: &Output) -> String {
    assert!(!out.status.success(), "trainer should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn build(dir: &Path, layout: Layout) -> PathBuf {
    let raw = dir.join("raw");
    generate(
        &raw,
        &SynthConfig {
            train: 64,
            val: 32,
            image_size: 40,
            seed: 3,
            layout,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    let source = match layout {
        Layout::AffectNet => Source::AffectNet { root: raw.clone() },
        Layout::Folder => Source::Folder { root: raw.clone() },
    };
    let out = dir.join("prepared");
    prepare(
        &source,
        &out,
        &PrepareConfig {
            size: 32,
            threads: 1,
            // A quarter of 64 training faces: enough val faces to pick epochs on.
            val_fraction: 0.25,
            ..PrepareConfig::default()
        },
    )
    .unwrap();
    out
}

/// A tiny prepared AffectNet-layout synthetic set, built once per test binary.
pub fn tiny_affectnet() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = build(d.path(), Layout::AffectNet);
        (d, p)
    })
    .1
}

/// A tiny prepared image-folder set (classes only, no valence/arousal).
pub fn tiny_folder() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = build(d.path(), Layout::Folder);
        (d, p)
    })
    .1
}

pub fn read_json(p: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
