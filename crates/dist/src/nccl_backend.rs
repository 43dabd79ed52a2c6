use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::{check_root, Communicator, Error, Mpi, Result};

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

/// NCCL between GPUs, one process per GPU, started by `mpirun` like [`Mpi`]. The rank's GPU is
/// its node-local rank modulo the node's GPU count (on one node: rank `r` uses GPU
/// `r % device_count`).
///
/// The [`Communicator`] methods take host slices: each copies the slice to a device buffer kept
/// between calls (grown to the largest length seen), reduces or broadcasts it there, copies it
/// back and waits for the stream, so they cost two PCIe copies on top of the collective.
/// Gradients that are already on the GPU should use
/// [`all_reduce_sum_device`](Self::all_reduce_sum_device) and
/// [`broadcast_device`](Self::broadcast_device) instead, which work in place on device memory and
/// do not wait. [`barrier`](Communicator::barrier) is MPI's.
///
/// NCCL has no timeout of its own and a failed `ncclCommInitRank` on one rank leaves the others
/// waiting in theirs: wrap in a [`Watchdog`](crate::Watchdog) for a bound on collectives.
pub struct Nccl {
    // Declaration order is drop order: device memory, then the NCCL communicator, then MPI.
    scratch: RefCell<Option<CudaSlice<f32>>>,
    comm: Comm,
    stream: Arc<CudaStream>,
    mpi: Mpi,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls are not concurrent,
// and `Nccl` is not `Sync`; the CUDA stream and buffers are `Send` already, and `Mpi` is `Send`.
unsafe impl Send for Nccl {}

impl Nccl {
    /// Initialises MPI, then NCCL on this rank's GPU with a new stream.
    pub fn init() -> Result<Self> {
        Self::from_mpi(Mpi::init()?)
    }

    /// NCCL over the ranks of `mpi`, on a new stream of GPU `local_rank % device_count`.
    /// Collective over `mpi`.
    pub fn from_mpi(mpi: Mpi) -> Result<Self> {
        let local_rank = mpi.local_rank();
        let stream = guarded("opening the GPU", || open_stream(local_rank));
        Self::with_stream(mpi, stream)
    }

    /// NCCL over the ranks of `mpi` on `stream` (for instance the stream of candle's CUDA
    /// device, so that collectives queue behind the backward pass without extra events).
    /// Collective over `mpi`.
    pub fn from_mpi_on(mpi: Mpi, stream: Arc<CudaStream>) -> Result<Self> {
        Self::with_stream(mpi, Ok(stream))
    }

    fn with_stream(mpi: Mpi, stream: Result<Arc<CudaStream>>) -> Result<Self> {
        // Every rank learns whether every other got this far, so that one rank's missing GPU or
        // library does not leave the others waiting in ncclCommInitRank.
        let failed = failed_ranks(&mpi, stream.is_err())?;
        let stream = stream?;
        if failed > 0 {
            return Err(Error::Cuda {
                op: "set-up",
                message: format!("{failed} other rank(s) could not open their GPU"),
            });
        }

        // Byte 0 says whether rank 0 made an id; the id follows.
        let mut msg = [0u8; 1 + ID_BYTES];
        let mut id_error = None;
        if mpi.rank() == 0 {
            match guarded("ncclGetUniqueId", || {
                Id::new().map_err(nccl("ncclGetUniqueId"))
            }) {
                Ok(id) => {
                    msg[0] = 1;
                    for (byte, &c) in msg[1..].iter_mut().zip(id.internal()) {
                        *byte = c as u8;
                    }
                }
                Err(e) => id_error = Some(e),
            }
        }
        mpi.broadcast_bytes(&mut msg, 0)?;
        if let Some(e) = id_error {
            return Err(e);
        }
        if msg[0] == 0 {
            return Err(Error::Nccl {
                op: "ncclGetUniqueId",
                message: "rank 0 could not create the NCCL unique id".into(),
            });
        }
        let mut internal = [0 as c_char; ID_BYTES];
        for (c, &byte) in internal.iter_mut().zip(&msg[1..]) {
            *c = byte as c_char;
        }

        let comm = guarded("ncclCommInitRank", || {
            Comm::from_rank(
                Arc::clone(&stream),
                mpi.rank(),
                mpi.size(),
                Id::uninit(internal),
            )
            .map_err(nccl("ncclCommInitRank"))
        })?;
        Ok(Self {
            scratch: RefCell::new(None),
            comm,
            stream,
            mpi,
        })
    }

    /// The GPU this rank uses.
    pub fn device(&self) -> usize {
        self.stream.context().ordinal()
    }

    /// The stream the collectives run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The MPI world the NCCL communicator was set up over.
    pub fn mpi(&self) -> &Mpi {
        &self.mpi
    }

    /// In place on device memory: every rank ends with the element-wise sum. Queued on
    /// [`stream`](Self::stream) and not waited for; cudarc orders it after earlier work on `buf`
    /// and before later work on it, whatever stream that runs on.
    pub fn all_reduce_sum_device<B: DevicePtrMut<f32>>(&self, buf: &mut B) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(nccl("ncclAllReduce"))?;
        Ok(())
    }

    /// In place on device memory: every rank ends with `root`'s contents. Queued like
    /// [`all_reduce_sum_device`](Self::all_reduce_sum_device).
    pub fn broadcast_device<B: DevicePtrMut<f32>>(&self, buf: &mut B, root: usize) -> Result<()> {
        check_root("ncclBroadcast", root, self.mpi.size())?;
        self.comm
            .broadcast_in_place(buf, root as i32)
            .map_err(nccl("ncclBroadcast"))?;
        Ok(())
    }

    /// Copies `buf` to the device buffer, runs `op` on it there and copies the result back.
    fn through_device(
        &self,
        buf: &mut [f32],
        op: impl FnOnce(&mut cudarc::driver::CudaViewMut<'_, f32>) -> Result<()>,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut scratch = self.scratch.borrow_mut();
        if scratch.as_ref().is_none_or(|s| s.len() < buf.len()) {
            // Freed first, so that the old and new buffers never both take GPU memory.
            *scratch = None;
            *scratch = Some(
                self.stream
                    .alloc_zeros::<f32>(buf.len())
                    .map_err(cuda("cuMemAlloc"))?,
            );
        }
        let device = scratch.as_mut().expect("allocated above");
        let mut view = device.slice_mut(..buf.len());
        self.stream
            .memcpy_htod(buf, &mut view)
            .map_err(cuda("cuMemcpyHtoD"))?;
        op(&mut view)?;
        self.stream
            .memcpy_dtoh(&view, buf)
            .map_err(cuda("cuMemcpyDtoH"))?;
        self.stream
            .synchronize()
            .map_err(cuda("cuStreamSynchronize"))
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.through_device(buf, |view| self.all_reduce_sum_device(view))
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root("ncclBroadcast", root, self.size())?;
        self.through_device(buf, |view| self.broadcast_device(view, root))
    }

    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}

fn open_stream(local_rank: usize) -> Result<Arc<CudaStream>> {
    let count = CudaContext::device_count().map_err(cuda("cuDeviceGetCount"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err(Error::Cuda {
            op: "cuDeviceGetCount",
            message: "no CUDA device is visible to this process".into(),
        });
    }
    let ctx = CudaContext::new(local_rank % count).map_err(cuda("cuCtxCreate"))?;
    ctx.new_stream().map_err(cuda("cuStreamCreate"))
}

/// Runs `f`, turning a panic into an error: cudarc panics when it cannot load libcuda or
/// libnccl, and a panic here would skip the agreement between ranks.
fn guarded<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("panicked")
            .to_owned();
        Err(Error::Cuda { op, message })
    })
}

/// How many ranks other than this one report a failure. Collective over `mpi`.
fn failed_ranks(mpi: &Mpi, failed_here: bool) -> Result<usize> {
    let mut flag = [f32::from(u8::from(failed_here))];
    mpi.all_reduce_sum(&mut flag)?;
    Ok(flag[0] as usize - usize::from(failed_here))
}

fn cuda(op: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Cuda {
        op,
        message: e.to_string(),
    }
}

fn nccl(op: &'static str) -> impl Fn(NcclError) -> Error {
    move |e| {
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
        let text = unsafe { CStr::from_ptr(cudarc::nccl::sys::ncclGetErrorString(e.0)) };
        Error::Nccl {
            op,
            message: format!("{:?}: {}", e.0, text.to_string_lossy()),
        }
    }
}
