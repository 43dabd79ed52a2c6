use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Communicator, Error, Result};

/// A communicator whose collectives (and shutdown) must complete within `timeout`, or the process
/// aborts with a message saying which collective stalled.
///
/// Why: Open MPI ends the job promptly when a rank *dies* (the launcher sees the process exit
/// without finalising MPI and kills the others), but not when a rank *stalls* — stuck in I/O,
/// in an endless loop, or waiting in a different collective — nor when a rank finalises MPI
/// while the others wait in a collective (finalisation waits for every rank). Those wait for
/// ever. A watchdog turns them into the first case: the waiting rank aborts, and the launcher
/// ends the rest.
///
/// Only the time inside a collective counts, not the computation between two of them. Pick a
/// timeout well above the slowest legitimate collective, including the first one (connection
/// set-up) and any rank's slow work before the next one (rank 0 writing a checkpoint while the
/// others wait in a barrier).
///
/// The check runs on its own thread, which never calls into MPI: it writes the message to stderr
/// and calls [`std::process::abort`], whatever the MPI library's thread support.
pub struct Watchdog<C: Communicator> {
    // Taken in `drop`, so that the backend's shutdown runs under the watch too.
    inner: Option<C>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    timeout: Duration,
    who: String,
}

#[derive(Default)]
struct State {
    armed: Option<Armed>,
    stop: bool,
}

#[derive(Clone, Copy)]
struct Armed {
    op: &'static str,
    len: Option<usize>,
    since: Instant,
}

impl<C: Communicator> Watchdog<C> {
    /// Wraps `inner`; starts the watchdog thread.
    pub fn new(inner: C, timeout: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            timeout,
            who: format!(
                "rank {} of {} ({})",
                inner.rank(),
                inner.size(),
                inner.backend()
            ),
        });
        let thread = std::thread::Builder::new()
            .name("fer-dist-watchdog".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || watch(&shared)
            })
            .map_err(Error::WatchdogThread)?;
        Ok(Self {
            inner: Some(inner),
            shared,
            thread: Some(thread),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The wrapped communicator, for backend-specific calls (which the watchdog does not time).
    pub fn inner(&self) -> &C {
        self.inner.as_ref().expect("present until drop")
    }

    fn watched<R>(&self, op: &'static str, len: Option<usize>, f: impl FnOnce(&C) -> R) -> R {
        let _armed = Arm::new(&self.shared, op, len);
        f(self.inner())
    }
}

/// Armed from creation until dropped, so that an early return or a panic disarms too.
struct Arm<'a>(&'a Shared);

impl<'a> Arm<'a> {
    fn new(shared: &'a Shared, op: &'static str, len: Option<usize>) -> Self {
        shared.lock().armed = Some(Armed {
            op,
            len,
            since: Instant::now(),
        });
        shared.wake.notify_all();
        Arm(shared)
    }
}

impl Drop for Arm<'_> {
    fn drop(&mut self) {
        self.0.lock().armed = None;
        // The thread is woken at its deadline anyway; waking it now would only cost a switch.
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn watch(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        state = match state.armed {
            None => shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(armed) => {
                let waited = armed.since.elapsed();
                if waited >= shared.timeout {
                    expire(shared, armed, waited);
                }
                shared
                    .wake
                    .wait_timeout(state, shared.timeout - waited)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

fn expire(shared: &Shared, armed: Armed, waited: Duration) -> ! {
    let what = match armed.len {
        Some(len) => format!("{} of {len} float(s)", armed.op),
        None => armed.op.to_owned(),
    };
    crate::report(&format!(
        "fer-dist: {}: {what} has not completed after {:.1} s (timeout {:.1} s): another rank has \
         probably died, stalled, skipped this collective or returned early. Aborting this rank so \
         that the launcher ends the whole job.",
        shared.who,
        waited.as_secs_f64(),
        shared.timeout.as_secs_f64()
    ));
    std::process::abort()
}

impl<C: Communicator> Communicator for Watchdog<C> {
    fn rank(&self) -> usize {
        self.inner().rank()
    }

    fn size(&self) -> usize {
        self.inner().size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let len = buf.len();
        self.watched("all_reduce_sum", Some(len), |c| c.all_reduce_sum(buf))
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let len = buf.len();
        self.watched("broadcast", Some(len), |c| c.broadcast(buf, root))
    }

    fn barrier(&self) -> Result<()> {
        self.watched("barrier", None, |c| c.barrier())
    }

    fn backend(&self) -> &'static str {
        self.inner().backend()
    }

    fn local_rank(&self) -> usize {
        self.inner().local_rank()
    }

    fn abort(&self, code: i32) -> ! {
        self.inner().abort(code)
    }
}

impl<C: Communicator> Drop for Watchdog<C> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // MPI_Finalize waits for every rank: a rank that left early hangs here otherwise.
            let _armed = Arm::new(
                &self.shared,
                "shutdown (MPI_Finalize waits for every rank)",
                None,
            );
            drop(inner);
        }
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
