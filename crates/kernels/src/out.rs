//! Fresh output buffers for CPU kernels that write every element.
//!
//! A zero-filled `vec![0.0; n]` costs a memset on the calling thread before any parallel work
//! starts; at 48 px those memsets were ~6 % of a training step. Kernels whose every output
//! element is written before it is read take their buffers from [`uninit`] instead. With
//! [`set_poison`] on (tests, device checks) the buffers are filled with NaN, so an element a
//! kernel fails to write shows up in any comparison instead of passing as leftover memory.

use std::sync::atomic::{AtomicBool, Ordering};

static POISON: AtomicBool = AtomicBool::new(false);

/// NaN-fill every fresh kernel output, on the CPU and (with the `cuda` feature) on CUDA.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Whether fresh kernel outputs are to be NaN-filled (the CPU buffers here, CUDA's in `cuda`).
pub(crate) fn poisoned() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// `n` floats for a kernel that writes all of them before reading any.
// The same contract as candle's own CPU `alloc_uninit`, which carries the same allow.
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit(n: usize) -> Vec<f32> {
    if poisoned() {
        return vec![f32::NAN; n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is `n`; every caller overwrites all `n` elements before reading one
    // (the poisoned test runs check that), and f32 has no invalid bit patterns.
    unsafe { v.set_len(n) };
    v
}
