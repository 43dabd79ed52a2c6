//! `trainer gpu-check`: what a CUDA build does on a GPU machine, in one command. It names the
//! GPU, then (a) runs every fer-kernels op there against the CPU, (b) runs the PyTorch parity
//! fixtures of the model there, (c) times the training benchmark there, and prints the
//! benchmark table last. Fails (after printing everything) if a check is out of tolerance.

use std::path::PathBuf;

use candle_core::{DType, Device};
use clap::Args;
use serde::Serialize;

use crate::bench::{self, Speed, CASES};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct GpuCheckCmd {
    /// The model's PyTorch parity fixtures (the parity check is skipped when missing).
    #[arg(long, default_value = "crates/model/tests/fixtures")]
    pub fixtures: PathBuf,
    /// Timed benchmark steps per config (after 2 warm-up steps); 0 skips the benchmark.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also write the benchmark rows as JSON here (for comparing with PyTorch).
    #[arg(long)]
    pub bench_json: Option<PathBuf>,
    /// Run everything on the CPU instead: tries the command on a machine without a GPU.
    #[arg(long)]
    pub cpu: bool,
}

/// One benchmark row of `--bench-json`.
#[derive(Debug, Serialize)]
struct BenchRow {
    config: &'static str,
    #[serde(flatten)]
    speed: Speed,
}

pub fn run(cmd: GpuCheckCmd) -> Result<()> {
    let dev = if cmd.cpu { Device::Cpu } else { cuda_device()? };
    let mut failures = vec![];

    println!("\n== fer-kernels ops on {} against the CPU", name(&dev));
    let rows = fer_kernels::check::compare_devices(&dev)?;
    for r in &rows {
        let ran = match r.backend {
            fer_kernels::Backend::Candle => "candle twin",
            _ => "our kernel",
        };
        println!(
            "{:34} {:12} {:11} {:>8.1e}  {}",
            r.op,
            r.output,
            ran,
            r.rel_err,
            verdict(r.ok())
        );
    }
    let bad = rows.iter().filter(|r| !r.ok()).count();
    if bad > 0 {
        failures.push(format!(
            "{bad} fer-kernels outputs over {:.0e}",
            fer_kernels::check::TOLERANCE
        ));
    }

    println!(
        "\n== model against PyTorch (float32, fixtures in {})",
        cmd.fixtures.display()
    );
    if cmd.fixtures.is_dir() {
        for case in fer_model::parity::CASES {
            let path = cmd.fixtures.join(format!("{case}.safetensors"));
            let rows = fer_model::parity::compare(&path, DType::F32, &dev)?;
            let worst = rows
                .iter()
                .max_by(|a, b| a.rel_err.total_cmp(&b.rel_err))
                .ok_or_else(|| Error::Data(format!("{}: nothing compared", path.display())))?;
            let bad = rows.iter().filter(|r| !r.ok()).count();
            println!(
                "{case:28} {:3} tensors, worst {:.1e} ({})  {}",
                rows.len(),
                worst.rel_err,
                worst.what,
                verdict(bad == 0)
            );
            if bad > 0 {
                failures.push(format!(
                    "parity {case}: {bad} tensors over {:.0e}",
                    worst.tol
                ));
            }
        }
    } else {
        println!("skipped: {} is not a folder", cmd.fixtures.display());
    }

    if cmd.steps > 0 {
        println!(
            "\n== training benchmark on {} ({} warm-up + {} timed steps, median)",
            name(&dev),
            bench::WARMUP,
            cmd.steps
        );
        let mut table = vec![];
        for case in &CASES {
            let speed = bench::measure(case, cmd.steps, &dev)?;
            table.push(BenchRow {
                config: case.name,
                speed,
            });
        }
        if let Some(path) = &cmd.bench_json {
            let json = serde_json::to_vec_pretty(&table).expect("plain rows serialise");
            fer_data::atomic::write_atomic(path, &json)?;
        }
        for (case, row) in CASES.iter().zip(&table) {
            println!(
                "{:37}   train {:8.1} img/s   infer {:8.1} img/s",
                case.label(),
                row.speed.train_img_s,
                row.speed.infer_img_s
            );
        }
    }

    if failures.is_empty() {
        println!("\ngpu-check: all checks passed");
        Ok(())
    } else {
        Err(Error::Data(format!(
            "gpu-check failed: {}",
            failures.join("; ")
        )))
    }
}

/// CUDA device 0, named, or an error that says which of the two is missing: CUDA in this
/// build, or a CUDA device on this machine.
fn cuda_device() -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(device_error(
            "this trainer was built without CUDA: build it with `cargo xtask build-cuda`".into(),
        ));
    }
    let dev = Device::new_cuda(0).map_err(|e| {
        device_error(format!(
            "no usable CUDA device ({e}); is the NVIDIA driver loaded, and are the CUDA 13 \
             libraries in LD_LIBRARY_PATH?"
        ))
    })?;
    println!("gpu-check: {}", describe(&dev));
    Ok(dev)
}

/// The trainer's error type has no device variant; candle's plain message is the closest.
fn device_error(msg: String) -> Error {
    Error::Candle(candle_core::Error::Msg(msg))
}

fn name(dev: &Device) -> &'static str {
    if dev.is_cuda() {
        "cuda:0"
    } else {
        "the CPU"
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAIL"
    }
}

#[cfg(feature = "cuda")]
fn describe(dev: &Device) -> String {
    let Device::Cuda(d) = dev else {
        return "not a CUDA device".into();
    };
    let stream = d.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().unwrap_or_else(|e| format!("unnamed ({e})"));
    let cap = ctx
        .compute_capability()
        .map_or("?".into(), |(a, b)| format!("{a}.{b}"));
    let mem = ctx.total_mem().map_or("?".into(), |m| {
        format!("{:.0}", m as f64 / (1u64 << 30) as f64)
    });
    format!("cuda:0 is {name}, compute capability {cap}, {mem} GiB")
}

#[cfg(not(feature = "cuda"))]
fn describe(_: &Device) -> String {
    unreachable!("cuda_device() returns early in builds without CUDA")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_run_passes_kernels_and_parity() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures");
        let cmd = GpuCheckCmd {
            fixtures,
            steps: 0,
            bench_json: None,
            cpu: true,
        };
        run(cmd).unwrap();
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn a_build_without_cuda_says_so() {
        let e = cuda_device().unwrap_err().to_string();
        assert!(e.contains("built without CUDA"), "{e}");
    }
}
