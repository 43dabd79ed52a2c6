/// What can go wrong in fer-dist. Backend errors carry the library's own message as text, so that
/// this type is the same whichever features are on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{op}: {len} elements exceed the {max} that one MPI call can carry (MPI counts are C ints); \
         split the buffer"
    )]
    TooLarge {
        op: &'static str,
        len: usize,
        max: usize,
    },

    #[error("{op}: root rank {root} is outside the world of {size} rank(s)")]
    InvalidRoot {
        op: &'static str,
        root: usize,
        size: usize,
    },

    #[error(
        "MPI is already initialised in this process: only one MPI communicator may be created per \
         process, and MPI cannot be initialised again once finalised"
    )]
    AlreadyInitialized,

    #[error(
        "the MPI library offers thread level {provided}, and fer-dist needs at least \
         MPI_THREAD_SERIALIZED (a communicator may move between threads)"
    )]
    ThreadLevel { provided: String },

    #[error("MPI {op} failed (MPI error {code}): {message}")]
    Mpi {
        op: &'static str,
        code: i32,
        message: String,
    },

    #[error("NCCL {op} failed: {message}")]
    Nccl { op: &'static str, message: String },

    #[error("CUDA {op} failed: {message}")]
    Cuda { op: &'static str, message: String },

    #[error(
        "{var}={value}: this process was started by an MPI launcher, but fer-dist was built \
         without the `mpi` feature, so every rank would train alone; rebuild with \
         `--features mpi` (or set FER_DIST_BACKEND=single to run them independently on purpose)"
    )]
    MpiNotBuilt { var: &'static str, value: String },

    #[error("FER_DIST_BACKEND={0}, but fer-dist was built without the `{0}` feature")]
    BackendNotBuilt(&'static str),

    #[error("starting the watchdog thread: {0}")]
    WatchdogThread(#[source] std::io::Error),

    #[error("invalid {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
