//! The MPI backend under a real `mpirun -np 2`, through the `fer-dist-check` program.
//!
//! Skipped, with a message, where `mpirun` is not on PATH, unless `FER_REQUIRE_MPI=1`, which makes
//! a missing `mpirun` a failure (CI sets it).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CHECK: &str = env!("CARGO_BIN_EXE_fer-dist-check");

/// Past this, the job counts as hung: it is killed and the test fails.
const HANG: Duration = Duration::from_secs(60);

struct Job {
    status: ExitStatus,
    output: String,
    elapsed: Duration,
}

/// Runs `mpirun -np <np> fer-dist-check <mode>` with `env`; `None` when MPI is unavailable and
/// not required.
fn mpirun(np: usize, mode: &str, env: &[(&str, &str)]) -> Option<Job> {
    let Some(flags) = launcher_flags() else {
        if std::env::var("FER_REQUIRE_MPI").is_ok_and(|v| v == "1") {
            panic!("FER_REQUIRE_MPI=1 but `mpirun` is not on PATH");
        }
        eprintln!("skipped: `mpirun` is not on PATH (set FER_REQUIRE_MPI=1 to make this fail)");
        return None;
    };
    let mut cmd = Command::new("mpirun");
    cmd.args(flags)
        .args(["-np", &np.to_string(), CHECK, mode])
        // A harness run with `FER_DIST_*` of its own: only the given ones count.
        .env_remove("FER_DIST_BACKEND")
        .env_remove("FER_DIST_TIMEOUT_S")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a hung job can be killed with every rank in it.
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("starting mpirun");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // Read on threads: a job that fills a pipe would otherwise block and look hung.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            let output = format!("{}{}", out.join().unwrap(), err.join().unwrap());
            panic!(
                "mpirun -np {np} {mode} still running after {HANG:?}: killed. Output:\n{output}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        out.join().unwrap(),
        err.join().unwrap()
    );
    eprintln!("mpirun -np {np} {mode}: {status} after {elapsed:.2?}\n{output}");
    Some(Job {
        status,
        output,
        elapsed,
    })
}

/// The flags `mpirun` needs here, or `None` without `mpirun`. Open MPI refuses to run as root
/// without `--allow-run-as-root`, and to start more ranks than cores without `--oversubscribe`;
/// other launchers (MPICH's) take neither.
fn launcher_flags() -> Option<Vec<&'static str>> {
    let version = Command::new("mpirun").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&version.stdout) + String::from_utf8_lossy(&version.stderr);
    if text.contains("Open MPI") || text.contains("OpenRTE") {
        Some(vec!["--allow-run-as-root", "--oversubscribe"])
    } else {
        Some(Vec::new())
    }
}

#[test]
fn collectives_give_the_hand_computed_results() {
    let Some(job) = mpirun(2, "check", &[]) else {
        return;
    };
    assert!(job.status.success(), "{}", job.output);
    for rank in 0..2 {
        let line = format!("rank {rank} of 2 (mpi): all_reduce_sum, broadcast and barrier ok");
        assert!(job.output.contains(&line), "no {line:?} in\n{}", job.output);
        // Both ranks run on this one machine, so their local ranks are their ranks.
        let line = format!("rank {rank} of 2 (mpi): local rank {rank}");
        assert!(job.output.contains(&line), "no {line:?} in\n{}", job.output);
    }
}

/// A rank that dies before a collective, the others waiting in it: mpirun ends the job and says
/// which rank died.
#[test]
fn a_dead_rank_ends_the_job() {
    for (mode, says) in [
        ("die-abort", "exited on signal 6"),
        ("die-exit", "Exit code:    3"),
    ] {
        let Some(job) = mpirun(2, mode, &[]) else {
            return;
        };
        assert!(!job.status.success(), "{mode}: {}", job.output);
        assert!(job
            .output
            .contains("rank 0 of 2 (mpi): entering all_reduce_sum"));
        if launcher_is_open_mpi() {
            assert!(
                job.output.contains(says),
                "{mode}: no {says:?} in\n{}",
                job.output
            );
        }
        eprintln!("{mode}: the job ended {:.2?} after launch", job.elapsed);
    }
}

/// A panic unwinds through the communicator's drop, which aborts the job rather than finalising
/// MPI (finalisation would wait for the rank waiting in the collective).
#[test]
fn a_panicking_rank_ends_the_job() {
    let Some(job) = mpirun(2, "panic", &[]) else {
        return;
    };
    assert!(!job.status.success(), "{}", job.output);
    assert!(
        job.output
            .contains("rank 1 of 2 panicked; aborting the MPI job"),
        "{}",
        job.output
    );
}

/// A rank that stalls never ends the job on its own: the watchdog of the rank waiting in the
/// collective does.
#[test]
fn the_watchdog_ends_a_job_with_a_stalled_rank() {
    let Some(job) = mpirun(2, "stall", &[("FER_DIST_TIMEOUT_S", "3")]) else {
        return;
    };
    assert!(!job.status.success(), "{}", job.output);
    assert!(
        job.output
            .contains("rank 0 of 2 (mpi): all_reduce_sum of 1000 float(s) has not completed after"),
        "{}",
        job.output
    );
    assert!(job.elapsed >= Duration::from_secs(3), "{:?}", job.elapsed);
}

/// A rank that returns from main finalises MPI, which waits for the rank in the collective,
/// which waits for it: both watchdogs fire.
#[test]
fn the_watchdog_ends_a_job_with_a_rank_that_returned() {
    let Some(job) = mpirun(2, "return-error", &[("FER_DIST_TIMEOUT_S", "3")]) else {
        return;
    };
    assert!(!job.status.success(), "{}", job.output);
    assert!(
        job.output.contains("has not completed after"),
        "{}",
        job.output
    );
}

#[test]
fn one_rank_under_mpirun_is_an_mpi_world_of_one() {
    let Some(job) = mpirun(1, "check", &[]) else {
        return;
    };
    assert!(job.status.success(), "{}", job.output);
    assert!(job
        .output
        .contains("rank 0 of 1 (mpi): all_reduce_sum, broadcast and barrier ok"));
}

/// Built with `mpi`, a plain run still needs no launcher.
#[test]
fn a_plain_run_is_a_world_of_one() {
    let out = Command::new(CHECK)
        .arg("check")
        .env_remove("FER_DIST_BACKEND")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("PMI_SIZE")
        .env_remove("PMIX_RANK")
        .output()
        .expect("running fer-dist-check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rank 0 of 1 (single): all_reduce_sum, broadcast and barrier ok"));
}

fn launcher_is_open_mpi() -> bool {
    launcher_flags().is_some_and(|flags| !flags.is_empty())
}
