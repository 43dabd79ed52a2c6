//! Throughput of the full 2Att-2Mt model (the sizes of docs/ARCHITECTURE.md, ResNet-18 backbone).
//!
//! `cargo bench -p fer-model [-- --config a|b|all] [--steps N] [--cpu]`
//!
//! - (a) ResNet-18, 112 px, batch 32
//! - (b) ResNet-18, 224 px, batch 16
//!
//! Prints forward (eval mode) and forward+backward (train mode) images/second, the median over
//! the timed steps after a warm-up, and the process's peak RSS. Built with the `cuda` feature it
//! runs on the first GPU (unless `--cpu`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{ModelConfig, TwoAttTwoMt};
use fer_test_support::{median, peak_rss_kib};

struct Case {
    name: &'static str,
    size: usize,
    batch: usize,
}

const CASES: [Case; 2] = [
    Case {
        name: "a",
        size: 112,
        batch: 32,
    },
    Case {
        name: "b",
        size: 224,
        batch: 16,
    },
];

/// Times `step` (after `warmup` untimed calls) and returns the median seconds per call.
fn time_steps(
    dev: &Device,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    for _ in 0..warmup {
        step()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut times).expect("at least one timed step"))
}

fn run(case: &Case, dev: &Device, steps: usize) -> fer_model::Result<()> {
    let cfg = ModelConfig {
        // The model as the benchmark history measured it: inference has no auxiliary head.
        aux_head: false,
        ..ModelConfig::default()
    };
    let varmap = VarMap::new();
    let model = TwoAttTwoMt::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let x = Tensor::randn(0f32, 1.0, (case.batch, 3, case.size, case.size), dev)?;
    let r = Tensor::randn(0f32, 1.0, (case.batch, cfg.num_classes), dev)?;

    let fwd = time_steps(dev, 1, steps, || {
        let out = model.forward(&x, false).map_err(candle_core::Error::wrap)?;
        out.valence.to_device(&Device::Cpu)?;
        Ok(())
    })?;
    let fwd_bwd = time_steps(dev, 1, steps, || {
        let out = model.forward(&x, true).map_err(candle_core::Error::wrap)?;
        let logits = out.logits.expect("categorical model");
        let loss = ((logits * &r)?.sum_all()? + out.valence.sum_all()? + out.arousal.sum_all()?)?;
        let grads = loss.backward()?;
        drop(grads);
        Ok(())
    })?;
    let b = case.batch as f64;
    println!(
        "({}) resnet18 {} px batch {:>2} on {:?}: forward {:>7.1} img/s ({:.3} s/step), \
         forward+backward {:>7.1} img/s ({:.3} s/step), peak RSS {:.0} MiB",
        case.name,
        case.size,
        case.batch,
        dev.location(),
        b / fwd,
        fwd,
        b / fwd_bwd,
        fwd_bwd,
        peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0),
    );
    Ok(())
}

fn main() -> fer_model::Result<()> {
    // The tests' `poison` feature reaches this build through the dev-dependencies; the
    // benchmark measures production kernels, which leave fresh outputs unfilled.
    fer_kernels::set_poison(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut which = "all".to_string();
    let mut steps = 5usize;
    let mut cpu = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--config" => {
                i += 1;
                which = args.get(i).cloned().unwrap_or_default();
            }
            "--steps" => {
                i += 1;
                steps = args.get(i).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
            }
            "--cpu" => cpu = true,
            // cargo passes `--bench`; other harness flags are ignored too.
            _ => {}
        }
        i += 1;
    }
    let dev = if cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0)?
    };
    let selected: Vec<&Case> = CASES
        .iter()
        .filter(|c| which == "all" || c.name == which)
        .collect();
    if selected.is_empty() {
        eprintln!("unknown --config {which:?}: expected a, b or all");
        std::process::exit(2);
    }
    println!(
        "2Att-2Mt (default config) throughput, median of {steps} steps after 1 warm-up; {} CPU threads",
        cpu_threads()
    );
    for case in selected {
        run(case, &dev, steps)?;
    }
    Ok(())
}

fn cpu_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
