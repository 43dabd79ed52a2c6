//! `cargo xtask bench-train`: images/second of a stage-2 training step and of inference, and the
//! peak RSS, for five model configs; optionally next to the PyTorch reference of the same model
//! (the script gets the config's `ModelConfig` as JSON).
//!
//! Each config runs in a child process (this executable with the hidden `--child` flag), so its
//! peak RSS (`VmHWM`) is its own. The child prints one JSON line, the parent the table. The
//! measurement itself is `trainer::bench`, shared with `trainer gpu-check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use candle_core::Device;
use serde::Serialize;
use trainer::bench::{measure_in, Case, Speed, CASES, WARMUP};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    A,
    B,
    C,
    D,
    E,
    All,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kernels {
    /// Our custom CPU kernels (fer-kernels).
    Fer,
    /// Plain candle ops.
    Candle,
}

impl Kernels {
    fn name(self) -> &'static str {
        match self {
            Kernels::Fer => "fer",
            Kernels::Candle => "candle",
        }
    }
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// a: ResNet-18 at 112 px, batch 32; b: ResNet-18 at 224 px, batch 16; c: ResNet-50 at
    /// 224 px, batch 8 (a-c: the default model without its auxiliary head); d: the model of
    /// configs/fer2013-cpu.toml at 48 px, batch 64; e: the model of configs/default-cpu.toml at
    /// 48 px, batch 64 (d, e: with their auxiliary head).
    #[arg(long, value_enum, default_value_t = Which::All)]
    config: Which,
    /// Timed steps (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Compute threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Print one JSON array instead of the table.
    #[arg(long)]
    json: bool,
    /// Kernel set, passed to the children as FER_KERNELS.
    #[arg(long, value_enum, default_value_t = Kernels::Fer)]
    kernels: Kernels,
    /// Also time the PyTorch reference (tests/reference/bench/bench_pytorch.py).
    #[arg(long)]
    vs_pytorch: bool,
    /// Measure the one config in this process and print its JSON line (how the table's rows are
    /// made, each in a fresh process). Under `mpirun` (built with `--features distributed`) the
    /// process is one rank of a data-parallel step: rank 0 prints the global images/s and the
    /// all-reduce's share of a step.
    #[arg(long)]
    child: bool,
}

/// PyTorch's numbers and the ratios ours / PyTorch.
#[derive(Debug, Serialize)]
struct Versus {
    pytorch_train_img_s: f64,
    pytorch_infer_img_s: f64,
    pytorch_peak_rss_mib: f64,
    train_ratio: f64,
    infer_ratio: f64,
}

impl Versus {
    fn new(ours: &Speed, torch: &Speed) -> Self {
        Self {
            pytorch_train_img_s: torch.train_img_s,
            pytorch_infer_img_s: torch.infer_img_s,
            pytorch_peak_rss_mib: torch.peak_rss_mib,
            train_ratio: ours.train_img_s / torch.train_img_s,
            infer_ratio: ours.infer_img_s / torch.infer_img_s,
        }
    }
}

/// One object of the `--json` array.
#[derive(Debug, Serialize)]
struct Row {
    config: &'static str,
    #[serde(flatten)]
    ours: Speed,
    #[serde(flatten)]
    torch: Option<Versus>,
}

pub fn run(args: BenchTrainArgs) -> anyhow::Result<()> {
    let threads = threads_or_cores(args.threads);
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| args.config == Which::All || Some(c.name) == which_name(args.config))
        .collect();
    if args.child {
        let [case] = cases[..] else {
            bail!("--child needs one --config (a to e)")
        };
        start_like_the_trainer(threads)?;
        let world = trainer::world::World::from_env()?;
        let speed = measure_in(&world, case, args.steps as usize, &Device::Cpu)?;
        if world.is_root() {
            println!("{}", serde_json::to_string(&speed)?);
        }
        return Ok(());
    }

    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if !args.json {
        print_header(threads, args.kernels, args.steps);
    }
    let torch_ok = args.vs_pytorch && pytorch_available(&say);
    let mut rows = vec![];
    for case in cases {
        let ours = run_ours(case, &args, threads)?;
        let torch = if torch_ok {
            match run_pytorch(case, args.steps, threads) {
                Ok(t) => Some(t),
                Err(e) => {
                    say(format!(
                        "PyTorch reference failed on config {}: {e:#}",
                        case.name
                    ));
                    None
                }
            }
        } else {
            None
        };
        let row = Row {
            config: case.name,
            torch: torch.as_ref().map(|t| Versus::new(&ours, t)),
            ours,
        };
        if !args.json {
            print_row(case, &row);
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn which_name(w: Which) -> Option<&'static str> {
    match w {
        Which::A => Some("a"),
        Which::B => Some("b"),
        Which::C => Some("c"),
        Which::D => Some("d"),
        Which::E => Some("e"),
        Which::All => None,
    }
}

fn print_header(threads: usize, kernels: Kernels, steps: u64) {
    let profile = match env!("XTASK_PROFILE") {
        "debug" => "dev",
        p => p,
    };
    println!(
        "bench-train: {threads} threads, kernels {}, build profile {profile} (xtask opt-level {}), \
         {WARMUP} warm-up + {steps} timed steps, median",
        kernels.name(),
        env!("XTASK_OPT_LEVEL"),
    );
    if cfg!(debug_assertions) {
        println!(
            "warning: built with debug assertions (dev profile): workspace crates that do not \
             turn them off in Cargo.toml run their debug checks; \
             `cargo xtask bench-train` (release) runs none"
        );
    }
}

/// Width of the label column: the longest label, "(e) default R18 x0.25 48 px, batch 64", and
/// a space.
const LABEL_WIDTH: usize = 38;

fn print_row(case: &Case, row: &Row) {
    let label = case.label();
    let line = |who: &str, s: &Speed| {
        println!(
            "{who:LABEL_WIDTH$} train {:8.2} img/s   infer {:8.2} img/s   peak RSS {:6.0} MiB",
            s.train_img_s, s.infer_img_s, s.peak_rss_mib
        )
    };
    line(&label, &row.ours);
    if let Some(v) = &row.torch {
        let torch = Speed {
            train_img_s: v.pytorch_train_img_s,
            infer_img_s: v.pytorch_infer_img_s,
            peak_rss_mib: v.pytorch_peak_rss_mib,
            ranks: None,
            allreduce_share: None,
            allreduce_mib: None,
            allreduce_seconds: None,
        };
        line("    PyTorch", &torch);
        println!(
            "{:LABEL_WIDTH$} train {:8.2}x        infer {:8.2}x",
            "    ours / PyTorch", v.train_ratio, v.infer_ratio
        );
    }
}

/// Runs one config in a child process of this executable.
fn run_ours(case: &Case, args: &BenchTrainArgs, threads: usize) -> anyhow::Result<Speed> {
    let exe = std::env::current_exe().context("locating the xtask executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench-train", "--child", "--config", case.name])
        .args(["--steps", &args.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .env("FER_KERNELS", args.kernels.name())
        .env("RAYON_NUM_THREADS", threads.to_string());
    let out = child_json(cmd).with_context(|| format!("benchmarking config {}", case.name))?;
    Ok(serde_json::from_str(&out)?)
}

/// `--threads`, or one per core.
pub(crate) fn threads_or_cores(threads: Option<u64>) -> usize {
    match threads {
        Some(t) => t as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The allocator settings and compute threads the trainer binary starts with, so that what this
/// process measures is the trainer's.
pub(crate) fn start_like_the_trainer(threads: usize) -> anyhow::Result<()> {
    trainer::threads::candle_ops_on_calling_thread();
    trainer::alloc::keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up the rayon thread pool")
}

/// A PyTorch reference script of `tests/reference/bench/`.
pub(crate) fn reference_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/bench")
        .join(name)
}

/// Whether `python3` can import torch; says why not when it cannot.
pub(crate) fn pytorch_available(say: &dyn Fn(String)) -> bool {
    let out = Command::new("python3")
        .args(["-c", "import torch"])
        .stdin(Stdio::null())
        .output();
    let why = match out {
        Err(e) => format!("python3 could not be run ({e})"),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err
                .lines()
                .last()
                .unwrap_or("no message")
                .trim()
                .to_string();
            format!("`import torch` failed in python3 ({last})")
        }
        Ok(_) => return true,
    };
    say(format!(
        "--vs-pytorch: skipped, {why}; the Rust benchmark runs alone"
    ));
    false
}

/// Runs the PyTorch reference on one config in a fresh Python process; it builds the same model
/// from the case's `ModelConfig` JSON.
fn run_pytorch(case: &Case, steps: u64, threads: usize) -> anyhow::Result<Speed> {
    let model = serde_json::to_string(&case.model())?;
    let mut cmd = Command::new("python3");
    cmd.arg(reference_script("bench_pytorch.py"))
        .args(["--model-json", &model])
        .args(["--size", &case.size.to_string()])
        .args(["--batch", &case.batch.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string());
    Ok(serde_json::from_str(&child_json(cmd)?)?)
}

/// Runs a command whose last stdout line is a JSON object; its stderr goes to ours.
pub(crate) fn child_json(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{:?} exited with {}", cmd.get_program(), out.status);
    }
    let stdout = String::from_utf8(out.stdout)?;
    match stdout.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => Ok(l.to_string()),
        None => bail!("{:?} printed no result", cmd.get_program()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_row_has_the_documented_keys() {
        let ours: Speed = serde_json::from_str(
            r#"{"train_img_s": 10.0, "infer_img_s": 40.0, "peak_rss_mib": 900.5}"#,
        )
        .unwrap();
        // The PyTorch script prints extra keys; they are ignored.
        let torch: Speed = serde_json::from_str(
            r#"{"train_img_s": 20.0, "infer_img_s": 50.0, "peak_rss_mib": 700.0, "depth": 18}"#,
        )
        .unwrap();
        let plain = Row {
            config: "a",
            ours: ours.clone(),
            torch: None,
        };
        let v = serde_json::to_value(&plain).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(v["config"], "a");
        assert_eq!(v["peak_rss_mib"], 900.5);

        let vs = Row {
            config: "b",
            torch: Some(Versus::new(&ours, &torch)),
            ours,
        };
        let v = serde_json::to_value(&vs).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 9);
        assert_eq!(v["pytorch_train_img_s"], 20.0);
        assert_eq!(v["train_ratio"], 0.5);
        assert_eq!(v["infer_ratio"], 0.8);
        assert_eq!(v["pytorch_peak_rss_mib"], 700.0);
    }
}
