//! The integration tests link a library built with the `poison` feature (through the crate's
//! dev-dependency on itself), so every kernel comparison here sees unwritten elements as NaN.

#[test]
fn the_tests_run_poisoned() {
    // Turning it on reports the previous state, which the feature set before any test ran (no
    // test turns it off; the device check restores what it found).
    assert!(fer_kernels::set_poison(true));
}
