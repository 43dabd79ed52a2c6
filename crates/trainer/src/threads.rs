//! Who runs candle's own element-wise ops.
//!
//! candle 0.11 splits element-wise ops of 64K elements or more over a thread pool of its own,
//! separate from rayon's, and its workers spin for a while after each op before they sleep.
//! Our kernels run on rayon's threads, one per core, so every such op leaves a spinning thread
//! competing with them for the cores; in a training step (gradient sums, the heads) that
//! happens hundreds of times. On the calling thread alone those ops are slower, but the step is
//! faster (see BENCHMARKS.md, "candle's thread pool").

/// Makes candle run its element-wise ops on the calling thread (`CANDLE_NUM_THREADS=1`) unless
/// the environment says otherwise. Call once at start-up, before any other thread exists and
/// before the first candle op (candle reads the variable once, when it builds its pool).
pub fn candle_ops_on_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
