//! Data-parallel communication for the trainer: sum gradients across ranks, broadcast the initial
//! weights, wait for each other. Three backends behind one trait, [`Communicator`]:
//!
//! - [`Single`]: a world of one, every operation a no-op (always built);
//! - `Mpi` (feature `mpi`): MPI through rsmpi, one process per rank, started by `mpirun`;
//! - `Nccl` (feature `nccl`, implies `mpi`): NCCL between GPUs, one process per GPU, the NCCL
//!   unique id shared over MPI.
//!
//! [`from_env`] picks the backend from how the process was started, and [`Watchdog`] bounds how
//! long any collective may take. The crate's README has the launch commands and what happens
//! when a rank dies, stalls or panics.

mod error;
#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl_backend;
mod single;
mod watchdog;

pub use error::{Error, Result};
#[cfg(feature = "mpi")]
pub use mpi_backend::Mpi;
#[cfg(feature = "nccl")]
pub use nccl_backend::Nccl;
pub use single::Single;
pub use watchdog::Watchdog;

use std::time::Duration;

/// A group of ranks that run the same program on different data and meet in collectives.
///
/// Every rank must call the same collectives in the same order with buffers of the same length
/// (and, for [`broadcast`](Communicator::broadcast), the same root): a rank that skips one, or
/// calls it with a different length, leaves the others waiting or reading garbage. MPI cannot
/// tell the difference between a slow rank and a lost one; wrap the communicator in a
/// [`Watchdog`] to turn a stall into a clean abort.
///
/// `Send` but not `Sync`: a communicator may move to another thread, but collectives on one
/// communicator are never issued from two threads at once.
pub trait Communicator: Send {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// In place: every rank ends with the element-wise sum of `buf` over all ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// In place: every rank ends with `root`'s contents of `buf`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// `"single"`, `"mpi"` or `"nccl"`.
    fn backend(&self) -> &'static str;
    /// This rank's position among the ranks on its machine (`MPI_COMM_TYPE_SHARED`, found once
    /// at start-up): the GPU it computes on, as NCCL picks it.
    fn local_rank(&self) -> usize;
    /// Ends the whole job now, every rank, with exit status `code`.
    ///
    /// Call this instead of returning an error from `main` on one rank: a rank that finalises
    /// MPI normally while the others wait in a collective leaves them all waiting for ever (MPI's
    /// finalisation itself waits for every rank).
    fn abort(&self, code: i32) -> !;

    /// True on rank 0, the rank that writes checkpoints and logs.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

impl<C: Communicator + ?Sized> Communicator for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn local_rank(&self) -> usize {
        (**self).local_rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        (**self).all_reduce_sum(buf)
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        (**self).broadcast(buf, root)
    }
    fn barrier(&self) -> Result<()> {
        (**self).barrier()
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn abort(&self, code: i32) -> ! {
        (**self).abort(code)
    }
}

/// Overrides the backend choice of [`from_env`]: `single`, `mpi` or `nccl`.
pub const BACKEND_VAR: &str = "FER_DIST_BACKEND";
/// Seconds after which [`from_env`]'s [`Watchdog`] aborts a collective that has not completed.
pub const TIMEOUT_VAR: &str = "FER_DIST_TIMEOUT_S";

/// Variables that MPI launchers set in every process they start: Open MPI's mpirun, PMI
/// (MPICH's Hydra, Slurm's srun) and PMIx (Open MPI 5, srun --mpi=pmix).
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// The communicator this process was started for.
///
/// - `FER_DIST_BACKEND=single|mpi|nccl` chooses explicitly (`mpi` without a launcher is a world
///   of one MPI process).
/// - Otherwise MPI when the `mpi` feature is on and an MPI launcher started the process (it set
///   `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_RANK`), else [`Single`]: a plain run never needs
///   `mpirun`, whatever the features.
/// - A launcher that started more than one rank and a build without the `mpi` feature is an
///   error ([`Error::MpiNotBuilt`]) rather than N copies training alone.
/// - `FER_DIST_TIMEOUT_S=SECONDS` wraps the result in a [`Watchdog`].
pub fn from_env() -> Result<Box<dyn Communicator>> {
    let comm = match std::env::var(BACKEND_VAR) {
        Ok(name) => by_name(&name)?,
        Err(_) => match launch() {
            Some(started_by) => under_launcher(started_by)?,
            None => Box::new(Single),
        },
    };
    match timeout_from_env()? {
        Some(timeout) => Ok(Box::new(Watchdog::new(comm, timeout)?)),
        None => Ok(comm),
    }
}

fn by_name(name: &str) -> Result<Box<dyn Communicator>> {
    match name {
        "single" => Ok(Box::new(Single)),
        #[cfg(feature = "mpi")]
        "mpi" => Ok(Box::new(Mpi::init()?)),
        #[cfg(not(feature = "mpi"))]
        "mpi" => Err(Error::BackendNotBuilt("mpi")),
        #[cfg(feature = "nccl")]
        "nccl" => Ok(Box::new(Nccl::init()?)),
        #[cfg(not(feature = "nccl"))]
        "nccl" => Err(Error::BackendNotBuilt("nccl")),
        _ => Err(Error::Env {
            var: BACKEND_VAR,
            value: name.to_owned(),
            reason: "expected single, mpi or nccl",
        }),
    }
}

#[cfg(feature = "mpi")]
fn under_launcher(_: Launch) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn under_launcher(launch: Launch) -> Result<Box<dyn Communicator>> {
    if launch.several() {
        Err(Error::MpiNotBuilt {
            var: launch.var,
            value: launch.value,
        })
    } else {
        Ok(Box::new(Single))
    }
}

/// How an MPI launcher started this process: the first launcher variable set, with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub var: &'static str,
    pub value: String,
}

impl Launch {
    /// The number of processes started, where the variable tells it (`PMIX_RANK` does not).
    pub fn processes(&self) -> Option<usize> {
        match self.var {
            "PMIX_RANK" => None,
            _ => self.value.trim().parse().ok(),
        }
    }

    /// Whether the launcher started more than this process (for `PMIX_RANK` only a rank other
    /// than 0 proves it).
    pub fn several(&self) -> bool {
        match self.var {
            "PMIX_RANK" => self.value.trim() != "0",
            _ => self.value.trim() != "1",
        }
    }
}

/// The launcher that started this process, if an MPI launcher did.
pub fn launch() -> Option<Launch> {
    LAUNCHER_VARS.iter().find_map(|&var| {
        let value = std::env::var(var).ok()?;
        Some(Launch { var, value })
    })
}

fn timeout_from_env() -> Result<Option<Duration>> {
    let Ok(value) = std::env::var(TIMEOUT_VAR) else {
        return Ok(None);
    };
    parse_timeout(&value).map(Some).ok_or(Error::Env {
        var: TIMEOUT_VAR,
        value,
        reason: "expected a positive number of seconds",
    })
}

fn parse_timeout(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::try_from_secs_f64(secs).ok())
        .flatten()
}

/// Writes one line to stderr in a single write, so that the lines of ranks sharing the
/// launcher's stderr do not interleave mid-line.
fn report(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Checks a root rank against the world size.
fn check_root(op: &'static str, root: usize, size: usize) -> Result<()> {
    if root < size {
        Ok(())
    } else {
        Err(Error::InvalidRoot { op, root, size })
    }
}

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_timeout(" 30 "), Some(Duration::from_secs(30)));
        for bad in ["0", "-1", "nan", "inf", "", "ten", "1e300"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
