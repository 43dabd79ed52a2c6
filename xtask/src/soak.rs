//! `cargo xtask soak`: a tiny run on synthetic faces, SIGKILLed at seeded random moments and
//! resumed with `--resume` each time, must end bit-identical to an uninterrupted run of the
//! same seed (every tensor of every checkpoint, metrics.json and metrics.jsonl without their
//! timings). The engine is `trainer::soak`; the trainer's test `soak` runs a short version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fer_data::prepare::{prepare, PrepareConfig, Source};
use fer_data::synth::{generate, Layout, SynthConfig};
use trainer::soak::{soak, SoakConfig};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Kills that must land before the run may finish.
    #[arg(long, default_value_t = 24)]
    kills: usize,
    /// Seed of the kill moments (the run's own seed is the config's).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of each of the two stages.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Synthetic training faces (a quarter of them become val).
    #[arg(long, default_value_t = 128)]
    train: usize,
    /// Compute threads of the trainer.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Work folder [default: target/soak/seed-<seed>-<unix time>].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A `trainer` binary to soak instead of the release build (built first when left out).
    #[arg(long)]
    trainer: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the release `trainer` and returns its path, as cargo reports it.
fn build_trainer(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "-p", "trainer", "--bin", "trainer"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building the trainer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "trainer")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo build reported no trainer executable")
}

/// The tests' tiny set, larger: synthetic faces at 40 px, prepared at 32 px.
fn data(dir: &Path, train: usize) -> anyhow::Result<PathBuf> {
    let raw = dir.join("raw");
    generate(
        &raw,
        &SynthConfig {
            train,
            val: 32,
            image_size: 40,
            seed: 3,
            layout: Layout::AffectNet,
            ..SynthConfig::default()
        },
    )?;
    let prepared = dir.join("prepared");
    prepare(
        &Source::AffectNet { root: raw },
        &prepared,
        &PrepareConfig {
            size: 32,
            threads: 1,
            val_fraction: 0.25,
            ..PrepareConfig::default()
        },
    )?;
    Ok(prepared)
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let root = repo_root();
    let dir = args.dir.unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        root.join(format!("target/soak/seed-{}-{secs}", args.seed))
    });
    let trainer = match args.trainer {
        Some(t) => t,
        None => build_trainer(&root)?,
    };
    let data = data(&dir, args.train)?;
    let cfg = SoakConfig {
        trainer,
        data,
        config: root.join("crates/trainer/tests/fixtures/tiny.toml"),
        extra: vec!["--epochs".into(), args.epochs.to_string()],
        threads: args.threads,
        dir: dir.clone(),
        kills: args.kills,
        seed: args.seed,
    };
    println!(
        "soak: {} kills, seed {}, {} epochs per stage, {} training faces, in {}",
        args.kills,
        args.seed,
        args.epochs,
        args.train,
        dir.display()
    );
    let report = soak(&cfg)?;
    print!("{}", report.summary());
    if !report.identical() {
        bail!("the killed and resumed run differs from the uninterrupted one");
    }
    Ok(())
}
