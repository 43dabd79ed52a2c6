//! Data-parallel training under `mpirun` (trainer built with `distributed`): two ranks with
//! half a batch each reach the weights of one process with the whole batch, and a rank that
//! dies ends the run with an error instead of a hang.
//!
//! Each rank's BatchNorm normalises by the statistics of its own half, as PyTorch's DDP does by
//! default; the one-process run that computes the same update therefore forwards the batch in
//! the same two halves (`data.micro_batches = 2`) and sums their weighted gradients, where the
//! ranks sum theirs through MPI. Without `mpirun` on the PATH the tests say they are skipped,
//! unless `FER_REQUIRE_MPI` is set (CI), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::*;

fn mpirun() -> Option<Command> {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("FER_REQUIRE_MPI").is_some() {
            panic!(
                "mpirun is not on the PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)"
            );
        }
        eprintln!("skipped: mpirun is not on the PATH");
        return None;
    }
    let mut cmd = Command::new("mpirun");
    // Open MPI refuses root without these, and a 2-core machine has fewer slots than ranks
    // when hyper-threads are not counted.
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"]);
    Some(cmd)
}

/// tiny.toml with another batch split, written next to the run.
fn config(dir: &Path, micro_batches: usize) -> PathBuf {
    let tiny = std::fs::read_to_string(TINY).unwrap();
    let cfg = tiny.replace(
        "batch_size = 16\n",
        &format!("batch_size = 16\nmicro_batches = {micro_batches}\n"),
    );
    assert_ne!(cfg, tiny);
    let path = dir.join(format!("micro{micro_batches}.toml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

fn train_args(config: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["--threads", "1", "train", "--data"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(tiny_affectnet().to_str().unwrap().into());
    a.extend(["--config".into(), config.to_str().unwrap().into()]);
    a.extend(["--out".into(), out.to_str().unwrap().into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("the command runs")
}

/// The trainable weights of a checkpoint (not BatchNorm's running statistics, which each rank
/// keeps for its own batches, nor optimizer state).
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ts = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut w: Vec<(String, Vec<f32>)> = ts
        .into_iter()
        .filter(|(n, _)| !fer_model::is_running_stat(n) && !n.starts_with("train."))
        .map(|(n, t)| {
            let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            (n, v.to_vec1().unwrap())
        })
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn two_ranks_with_half_batches_reach_the_weights_of_one_process() {
    let Some(mut mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // One epoch of stage 1: three steps of 16 images (48 training faces), the last checkpoint
    // holding the weights after them.
    let stop = ["--stop-after-epochs", "1"];
    let mut single = Command::new(env!("CARGO_BIN_EXE_trainer"));
    single.args(train_args(&config(dir.path(), 2), &one, &stop));
    ok(&run(single));
    mpi.arg(env!("CARGO_BIN_EXE_trainer"));
    mpi.args(train_args(&config(dir.path(), 1), &two, &stop));
    let out = run(mpi);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("data-parallel (mpi, 2 ranks): global batch 16"),
        "{log}"
    );

    let (a, b) = (
        weights(&one.join("last.safetensors")),
        weights(&two.join("last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    // Both sum the same two weighted half-batch gradients (x + y is x + y in either order);
    // what is left is rounding in the per-half scaling, ~1e-7 of a weight.
    let mut worst = (0f32, String::new());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let scale = x.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    eprintln!("largest relative difference {:.2e} in {}", worst.0, worst.1);
    assert!(
        worst.0 <= 1e-5,
        "largest relative difference {:.2e} in {}",
        worst.0,
        worst.1
    );
    // The step losses are the same sums, so the epoch's training loss agrees too.
    let (h1, h2) = (history_without_timings(&one), history_without_timings(&two));
    let (l1, l2) = (
        h1[0]["train_loss"].as_f64().unwrap(),
        h2[0]["train_loss"].as_f64().unwrap(),
    );
    assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "{l1} vs {l2}");
    // Rank 0 alone writes the run folder.
    assert!(two.join("metrics.jsonl").is_file());
}

/// `mpirun -np 2 trainer train` on the tiny set into `dir/run`, and that folder.
fn mpi_train(dir: &Path, extra: &[&str]) -> Option<(Command, PathBuf)> {
    let mut mpi = mpirun()?;
    let out = dir.join("run");
    mpi.arg(env!("CARGO_BIN_EXE_trainer"));
    mpi.args(train_args(&config(dir, 1), &out, extra));
    Some((mpi, out))
}

/// Starts `mpi` with its stderr captured.
fn spawn(mut mpi: Command) -> Child {
    mpi.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts")
}

/// Waits at most `limit` for `child` to fail; returns what it wrote to stderr.
fn fails_within(mut child: Child, limit: Duration, what: &str) -> String {
    let status = wait_or_fail(&mut child, limit, what);
    assert!(!status.success(), "{what}: exited successfully");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    stderr
}

/// Waits for `child` at most `limit`; kills it and fails when it is still running then.
fn wait_or_fail(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mpi, out)) = mpi_train(dir.path(), &["--epochs", "50"]) else {
        return;
    };
    let mut child = spawn(mpi);
    // Training has begun once rank 0 has written the run's config.
    let t0 = Instant::now();
    while !out.join("config.toml").is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let ranks = children(child.id());
    assert!(!ranks.is_empty(), "no rank processes under mpirun");
    let victim = *ranks.iter().max().unwrap();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let stderr = fails_within(
        child,
        Duration::from_secs(60),
        "mpirun after a rank was killed",
    );
    assert!(
        stderr.contains("signal 9") || stderr.contains("Killed"),
        "mpirun should say a rank was killed:\n{stderr}"
    );
}

#[test]
fn an_error_on_every_rank_ends_the_run_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mpi, _)) = mpi_train(dir.path(), &["--fault-nan-step", "1"]) else {
        return;
    };
    let stderr = fails_within(
        spawn(mpi),
        Duration::from_secs(120),
        "mpirun after a NaN loss",
    );
    // The loss is summed over the ranks, so both see the NaN at the same step and stop.
    assert!(stderr.contains("non-finite loss"), "{stderr}");
    assert!(stderr.contains("error on rank"), "{stderr}");
}

#[test]
fn a_resumed_data_parallel_run_matches_an_uninterrupted_one() {
    let Some(_) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let train = |out: &Path, extra: &[&str]| {
        let mut mpi = mpirun().unwrap();
        mpi.arg(env!("CARGO_BIN_EXE_trainer"));
        mpi.args(train_args(&cfg, out, extra));
        ok(&run(mpi));
    };
    let (full, cut) = (dir.path().join("full"), dir.path().join("cut"));
    train(&full, &[]);
    // Stopped after epoch 1 (inside stage 1) and after epoch 3 (inside stage 2), then finished.
    train(&cut, &["--stop-after-epochs", "1"]);
    train(&cut, &["--resume", "--stop-after-epochs", "2"]);
    train(&cut, &["--resume"]);
    let numbers = |p: &Path| {
        let mut m = read_json(&p.join("metrics.json"));
        m.as_object_mut().unwrap().remove("train_seconds");
        (m, history_without_timings(p))
    };
    let (m_full, h_full) = numbers(&full);
    assert_eq!(h_full.len(), 4);
    assert!(m_full["test"]["accuracy"].is_number());
    assert_eq!(numbers(&cut), (m_full, h_full));
}

#[test]
fn single_process_commands_refuse_a_launcher() {
    let Some(mut mpi) = mpirun() else { return };
    mpi.arg(env!("CARGO_BIN_EXE_trainer"));
    mpi.args(["eval", "--checkpoint", "none.safetensors", "--data", "none"]);
    let out = run(mpi);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trainer eval runs in one process, but a launcher started 2"),
        "{stderr}"
    );
}
