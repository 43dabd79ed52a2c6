use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use mpi::environment::Universe;
use mpi::ffi;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::AsRaw;
use mpi::Threading;

use crate::{check_root, Communicator, Error, Result};

extern "C" {
    // src/mpi_shim.c, compiled by build.rs against the same mpi.h as rsmpi.
    fn fer_dist_mpi_in_place() -> *mut c_void;
}

/// Set by the first [`Mpi::init`] and never cleared: MPI cannot be initialised again after
/// `MPI_Finalize`.
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The MPI world, through rsmpi: every process that `mpirun` started.
///
/// Collectives run on a private duplicate of `MPI_COMM_WORLD` whose error handler returns
/// errors instead of aborting, so that they come back as [`Error::Mpi`] with MPI's message.
/// Dropping it finalises MPI, which waits for every rank; dropping it while a panic unwinds
/// calls `MPI_Abort` instead, so that a panicking rank ends the job rather than leaving the others
/// waiting in a collective.
pub struct Mpi {
    // Freed before the universe finalises MPI (see Drop).
    comm: ManuallyDrop<SimpleCommunicator>,
    universe: ManuallyDrop<Universe>,
    rank: usize,
    size: usize,
    local_rank: usize,
    threading: Threading,
}

// SAFETY: MPI is initialised with at least MPI_THREAD_SERIALIZED (checked in `init`), under which
// any thread may call MPI as long as no two do at once. `Mpi` is not `Sync`, so the one thread
// that owns it at a time is the only one calling through it.
unsafe impl Send for Mpi {}

impl Mpi {
    /// Initialises MPI (`MPI_Init_thread`, asking for `MPI_THREAD_SERIALIZED`) and returns the
    /// world. Once per process: a second call, even after the first `Mpi` was dropped, is
    /// [`Error::AlreadyInitialized`].
    pub fn init() -> Result<Self> {
        if INITIALISED.swap(true, Ordering::SeqCst) || mpi::environment::is_initialized() {
            return Err(Error::AlreadyInitialized);
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or(Error::AlreadyInitialized)?;
        if threading < Threading::Serialized {
            // Dropping the universe finalises MPI, as every other rank does on this path.
            return Err(Error::ThreadLevel {
                provided: format!("{threading:?}"),
            });
        }
        let world = universe.world();
        let comm = world.duplicate();
        // SAFETY: `comm` is a valid communicator and RSMPI_ERRORS_RETURN a predefined handler.
        let code = unsafe { ffi::MPI_Comm_set_errhandler(comm.as_raw(), ffi::RSMPI_ERRORS_RETURN) };
        check("MPI_Comm_set_errhandler", code)?;
        let rank = usize::try_from(comm.rank()).expect("MPI ranks are non-negative");
        let size = usize::try_from(comm.size()).expect("MPI sizes are positive");
        // Collective, so found here, where every rank is anyway.
        let node = comm.split_shared(0);
        let local_rank = usize::try_from(node.rank()).expect("MPI ranks are non-negative");
        Ok(Self {
            comm: ManuallyDrop::new(comm),
            universe: ManuallyDrop::new(universe),
            rank,
            size,
            local_rank,
            threading,
        })
    }

    /// The thread level MPI granted (at least `Serialized`).
    pub fn threading(&self) -> Threading {
        self.threading
    }

    /// `MPI_Get_library_version`: which MPI library this process runs on.
    pub fn library_version() -> String {
        mpi::environment::library_version().unwrap_or_else(|_| "unknown MPI library".into())
    }

    /// This rank's index among the ranks on the same node (`MPI_Comm_split_type` with
    /// `MPI_COMM_TYPE_SHARED`, found at [`Mpi::init`]): the index to pick a GPU by.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// In-place broadcast of raw bytes, for sharing ids between ranks.
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        // SAFETY: `buf` holds `buf.len()` bytes, as many elements of MPI's uint8 type.
        unsafe { self.bcast(buf.as_mut_ptr().cast(), buf.len(), ffi::RSMPI_UINT8_T, root) }
    }

    /// `MPI_Bcast` of `len` elements of `datatype` at `ptr`, in place.
    ///
    /// # Safety
    /// `ptr` must point to `len` writable elements of `datatype`.
    unsafe fn bcast(
        &self,
        ptr: *mut std::ffi::c_void,
        len: usize,
        datatype: ffi::MPI_Datatype,
        root: usize,
    ) -> Result<()> {
        const OP: &str = "MPI_Bcast";
        check_root(OP, root, self.size)?;
        let count = count(OP, len)?;
        // SAFETY: the caller's promise for `ptr`; `root` is a rank of `comm` (checked above).
        let code =
            unsafe { ffi::MPI_Bcast(ptr, count, datatype, root as c_int, self.comm.as_raw()) };
        check(OP, code)
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        const OP: &str = "MPI_Allreduce";
        let count = count(OP, buf.len())?;
        // SAFETY: MPI_IN_PLACE as the send buffer makes MPI read and write `buf`, which holds
        // `count` floats; the datatype and op are predefined handles.
        let code = unsafe {
            ffi::MPI_Allreduce(
                fer_dist_mpi_in_place(),
                buf.as_mut_ptr().cast(),
                count,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                self.comm.as_raw(),
            )
        };
        check(OP, code)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        // SAFETY: `buf` holds `buf.len()` floats.
        unsafe { self.bcast(buf.as_mut_ptr().cast(), buf.len(), ffi::RSMPI_FLOAT, root) }
    }

    fn barrier(&self) -> Result<()> {
        // SAFETY: `comm` is valid until drop.
        check("MPI_Barrier", unsafe {
            ffi::MPI_Barrier(self.comm.as_raw())
        })
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn abort(&self, code: i32) -> ! {
        // SAFETY: `comm` is valid until drop. MPI_Abort does not return on Open MPI or MPICH; the
        // process aborts anyway should one return.
        unsafe { ffi::MPI_Abort(self.comm.as_raw(), code) };
        std::process::abort()
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Finalising would wait for ranks that may be waiting for this one in a collective.
            crate::report(&format!(
                "fer-dist: rank {} of {} panicked; aborting the MPI job",
                self.rank, self.size
            ));
            self.abort(1);
        }
        // SAFETY: each field is dropped once, here, communicator first: it must be freed before
        // MPI_Finalize (the universe's drop).
        unsafe {
            ManuallyDrop::drop(&mut self.comm);
            ManuallyDrop::drop(&mut self.universe);
        }
    }
}

/// The length as an MPI count (a C int), or why it cannot be one.
fn count(op: &'static str, len: usize) -> Result<c_int> {
    c_int::try_from(len).map_err(|_| Error::TooLarge {
        op,
        len,
        max: c_int::MAX as usize,
    })
}

fn check(op: &'static str, code: c_int) -> Result<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    Err(Error::Mpi {
        op,
        code,
        message: error_string(code),
    })
}

fn error_string(code: c_int) -> String {
    let mut buf = vec![0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` has room for MPI_MAX_ERROR_STRING characters, as MPI_Error_string requires.
    let rc = unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr().cast(), &mut len) };
    if rc != ffi::MPI_SUCCESS as c_int {
        return "no description from MPI".into();
    }
    buf.truncate(usize::try_from(len).unwrap_or(0).min(buf.len()));
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_c_int_are_refused() {
        assert_eq!(count("op", 0).unwrap(), 0);
        assert_eq!(count("op", c_int::MAX as usize).unwrap(), c_int::MAX);
        let err = count("MPI_Allreduce", c_int::MAX as usize + 1).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len, .. } if len == c_int::MAX as usize + 1));
        assert!(err.to_string().contains("MPI_Allreduce"), "{err}");
    }
}
