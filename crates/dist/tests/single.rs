//! A world of one, and the watchdog around it.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use fer_dist::{Communicator, Error, Result, Single, Watchdog};

fn assert_world_of_one(comm: &dyn Communicator) {
    assert_eq!(comm.rank(), 0);
    assert_eq!(comm.size(), 1);
    assert!(comm.is_root());
    assert_eq!(comm.backend(), "single");

    for len in [0, 1, 1000] {
        let mut buf: Vec<f32> = (0..len).map(|i| i as f32 - 0.5).collect();
        let before = buf.clone();
        comm.all_reduce_sum(&mut buf).unwrap();
        assert_eq!(
            buf, before,
            "the sum over one rank is the rank's own values"
        );
        comm.broadcast(&mut buf, 0).unwrap();
        assert_eq!(buf, before);
    }
    let err = comm.broadcast(&mut [1.0], 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidRoot {
                root: 1,
                size: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "broadcast: root rank 1 is outside the world of 1 rank(s)"
    );
    comm.barrier().unwrap();
}

#[test]
fn single_is_a_world_of_one() {
    assert_world_of_one(&Single);
    let boxed: Box<dyn Communicator> = Box::new(Single);
    assert_world_of_one(&boxed);
}

#[test]
fn the_watchdog_passes_collectives_through() {
    let started = Instant::now();
    let comm = Watchdog::new(Single, Duration::from_secs(5)).unwrap();
    assert_eq!(comm.timeout(), Duration::from_secs(5));
    assert_world_of_one(&comm);
    drop(comm);
    // Dropping stops the thread at once, not at the next deadline.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Only the time inside a collective counts: a long pause between two is fine.
#[test]
fn the_watchdog_ignores_time_between_collectives() {
    let comm = Watchdog::new(Single, Duration::from_millis(100)).unwrap();
    for _ in 0..3 {
        comm.barrier().unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A communicator whose barrier takes far too long, as when another rank never arrives.
struct Stalls;

impl Communicator for Stalls {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        std::thread::sleep(Duration::from_secs(30));
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "stalls"
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

const CHILD: &str = "FER_DIST_WATCHDOG_CHILD";

/// Run by `the_watchdog_aborts_a_stalled_collective` in a child process, which it aborts.
#[test]
fn watchdog_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let comm = Watchdog::new(Stalls, Duration::from_millis(300)).unwrap();
    comm.all_reduce_sum(&mut [0.0; 7]).unwrap();
    comm.barrier().unwrap();
    unreachable!("the watchdog should have aborted the process");
}

#[test]
fn the_watchdog_aborts_a_stalled_collective() {
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "watchdog_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {out:?}");
    assert!(
        stderr.contains(
            "fer-dist: rank 0 of 2 (stalls): barrier has not completed after 0.3 s (timeout 0.3 s)"
        ),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}
