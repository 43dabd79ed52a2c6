//! Fresh output buffers for CPU kernels that write every element.
//!
//! A zero-filled `vec![0.0; n]` costs a memset on the calling thread before any parallel work
//! starts; at 48 px those memsets were ~6 % of a training step. Kernels whose every output
//! element is written before it is read take their buffers from [`uninit`] instead. With
//! poisoning on the buffers are filled with NaN, so an element a kernel fails to write shows up
//! in any comparison instead of passing as leftover memory. It starts on with the `poison`
//! feature (the kernel and model tests enable it through their dev-dependencies) and off
//! otherwise; [`set_poison`] switches it at run time (the device check turns it on).

use std::sync::atomic::{AtomicBool, Ordering};

static POISON: AtomicBool = AtomicBool::new(cfg!(feature = "poison"));

/// NaN-fill every fresh kernel output, on the CPU and (with the `cuda` feature) on CUDA, and
/// return whether it was on before (for restoring it).
pub fn set_poison(on: bool) -> bool {
    POISON.swap(on, Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_builds_start_poisoned_and_poisoned_buffers_are_nan() {
        // The crate's dev-dependency on itself turns the `poison` feature on for its tests.
        assert!(poisoned());
        assert!(uninit(5).iter().all(|x| x.is_nan()));
    }
}
