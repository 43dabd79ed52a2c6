//! Helpers shared by the tests and benchmarks of the workspace's crates.
//!
//! A dev-dependency only: nothing here reaches a production build. The helpers panic with a
//! message naming what failed and where, which is what a failing test should do; none returns
//! an error.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use fer_test_support::{assert_close, max_abs_diff, Tolerance};
//!
//! let want = Tensor::new(&[1.0f64, -2.0, 4.0], &Device::Cpu)?;
//! let got = Tensor::new(&[1.0f32, -2.0, 4.00001], &Device::Cpu)?;
//! assert!(max_abs_diff(&got, &want) < 2e-5);
//! // The error is measured against the reference's largest magnitude (4 here).
//! assert_close("example", &got, &want, Tolerance::rel(1e-5));
//! # Ok::<(), candle_core::Error>(())
//! ```

mod assets;
mod close;
mod fixture;
mod grad;
pub mod protobuf;

pub use assets::fetched;
pub use close::{assert_all_near, assert_close, assert_near, max_abs_diff, rel_err, Tolerance};
pub use fer_measure::{median, peak_rss_kib};
pub use fixture::{check_parity, load_fixture, var_names, varmap_from_fixture, Fixture};
pub use grad::{check_central_differences, finite_difference_error, weights_without_gradient};
