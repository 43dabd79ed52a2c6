//! Checks the communicator that `fer_dist::from_env` gives this process: `mpirun -np N
//! fer-dist-check` on a new cluster, and the integration tests. Exits 0 when every collective
//! gave the hand-computed result; any mismatch aborts the whole job.
//!
//! Other modes make rank 1 fail in a chosen way just before a collective, to show how the job
//! ends: `die-abort`, `die-exit` (exit status 3), `panic`, `stall` (sleeps), `return-error`
//! (returns an error from main, finalising MPI while the others wait). `info` only prints the
//! rank, size and backend.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fer_dist::{Communicator, Error};

const USAGE: &str =
    "usage: fer-dist-check [check|info|die-abort|die-exit|panic|stall|return-error]";

/// Lengths of the all-reduce checks: empty, one element, small, and several MB.
const LENGTHS: [usize; 4] = [0, 1, 1000, 3_000_000];

/// How long rank 0 dawdles before the barrier, and how much of it the others must wait.
const BARRIER_DELAY: Duration = Duration::from_millis(400);
const BARRIER_MIN_WAIT: Duration = Duration::from_millis(300);

/// A stalled rank sleeps this long at most, so that a broken watchdog cannot leave a process
/// behind for ever.
const STALL: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "check".into());
    let comm = match fer_dist::from_env() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("fer-dist-check: {e}");
            return ExitCode::from(2);
        }
    };
    let who = format!(
        "rank {} of {} ({})",
        comm.rank(),
        comm.size(),
        comm.backend()
    );
    say(&format!("fer-dist-check: {who}: {mode}"));
    match mode.as_str() {
        "info" => ExitCode::SUCCESS,
        "check" => {
            if let Err(failure) = check(&*comm) {
                eprintln!("fer-dist-check: {who}: FAILED: {failure}");
                comm.abort(1);
            }
            say(&format!(
                "fer-dist-check: {who}: all_reduce_sum, broadcast and barrier ok"
            ));
            say(&format!(
                "fer-dist-check: {who}: local rank {}",
                comm.local_rank()
            ));
            ExitCode::SUCCESS
        }
        "die-abort" | "die-exit" | "panic" | "stall" | "return-error" => {
            fail_before_collective(&*comm, &mode, &who)
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check(comm: &dyn Communicator) -> Result<(), String> {
    let (rank, size) = (comm.rank(), comm.size());
    // Integers small enough for f32 to hold exactly, so that the summation order cannot matter:
    // rank r contributes (r + 1) * (i % 1000 + 1); the sum is (i % 1000 + 1) * size(size+1)/2.
    let ranks_sum = (size * (size + 1) / 2) as f32;
    for len in LENGTHS {
        let mut buf: Vec<f32> = (0..len)
            .map(|i| ((rank + 1) * (i % 1000 + 1)) as f32)
            .collect();
        comm.all_reduce_sum(&mut buf).map_err(|e| e.to_string())?;
        if let Some((i, &got)) = buf
            .iter()
            .enumerate()
            .find(|&(i, &got)| got != (i % 1000 + 1) as f32 * ranks_sum)
        {
            return Err(format!(
                "all_reduce_sum of {len}: element {i} is {got}, expected {}",
                (i % 1000 + 1) as f32 * ranks_sum
            ));
        }
    }

    let root = if size > 1 { 1 } else { 0 };
    let mut buf: Vec<f32> = (0..1000).map(|i| (rank * 100_000 + i) as f32).collect();
    comm.broadcast(&mut buf, root).map_err(|e| e.to_string())?;
    if let Some((i, &got)) = buf
        .iter()
        .enumerate()
        .find(|&(i, &got)| got != (root * 100_000 + i) as f32)
    {
        return Err(format!(
            "broadcast from {root}: element {i} is {got}, expected {}",
            root * 100_000 + i
        ));
    }
    match comm.broadcast(&mut buf, size) {
        Err(Error::InvalidRoot { .. }) => {}
        other => return Err(format!("broadcast from root {size} gave {other:?}")),
    }

    if rank == 0 {
        std::thread::sleep(BARRIER_DELAY);
    }
    let started = Instant::now();
    comm.barrier().map_err(|e| e.to_string())?;
    let waited = started.elapsed();
    if rank != 0 && waited < BARRIER_MIN_WAIT {
        return Err(format!(
            "barrier returned after {waited:?}, before rank 0 reached it ({BARRIER_DELAY:?} late)"
        ));
    }
    Ok(())
}

fn fail_before_collective(comm: &dyn Communicator, mode: &str, who: &str) -> ExitCode {
    let mut buf = vec![1.0f32; 1000];
    if comm.rank() == 1 {
        say(&format!("fer-dist-check: {who}: failing ({mode})"));
        match mode {
            "die-abort" => std::process::abort(),
            "die-exit" => std::process::exit(3),
            "panic" => panic!("fer-dist-check: deliberate panic before a collective"),
            "stall" => std::thread::sleep(STALL),
            // Falls through to main's return, which drops the communicator normally.
            _ => return ExitCode::from(4),
        }
    }
    say(&format!("fer-dist-check: {who}: entering all_reduce_sum"));
    let result = comm.all_reduce_sum(&mut buf);
    say(&format!(
        "fer-dist-check: {who}: all_reduce_sum returned {result:?}"
    ));
    if result.is_err() {
        comm.abort(1);
    }
    ExitCode::SUCCESS
}

/// Prints and flushes at once: the launcher may kill this process before a buffer would be.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
