//! Comparing tensors and numbers with a tolerance.

use candle_core::{DType, Tensor};

/// How far `got` may be from `want`: `max |got - want| <= rel * max(max |want|, floor)`.
///
/// The error is taken relative to the reference's largest magnitude rather than elementwise:
/// elementwise relative errors blow up on entries that are zero up to rounding. `floor` keeps
/// an all-but-zero reference from demanding exactness.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rel: f64,
    pub floor: f64,
}

impl Tolerance {
    /// `rel` with a floor of 1e-6 on the reference's scale.
    pub const fn rel(rel: f64) -> Self {
        Self { rel, floor: 1e-6 }
    }

    /// The same relative tolerance with `floor` as the least scale.
    pub const fn floor(self, floor: f64) -> Self {
        Self { floor, ..self }
    }
}

impl From<f64> for Tolerance {
    fn from(rel: f64) -> Self {
        Self::rel(rel)
    }
}

/// All values, flattened, in f64 (exact for f32 and f16 inputs).
fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap_or_else(|e| panic!("cannot read a {:?} tensor as f64: {e}", t.dtype()))
}

/// The worst element of a comparison.
struct Worst {
    index: usize,
    got: f64,
    want: f64,
    diff: f64,
    scale: f64,
}

fn compare(what: &str, got: &Tensor, want: &Tensor, floor: f64) -> Worst {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (values_f64(got), values_f64(want));
    // A NaN would drop out of the max below and pass unnoticed.
    for (name, v) in [("got", &g), ("want", &w)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            panic!("{what}: {name}[{i}] is {}", v[i]);
        }
    }
    let scale = w.iter().fold(floor, |m, b| m.max(b.abs()));
    let mut worst = Worst {
        index: 0,
        got: 0.0,
        want: 0.0,
        diff: 0.0,
        scale,
    };
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let diff = (a - b).abs();
        if diff > worst.diff {
            worst = Worst {
                index: i,
                got: *a,
                want: *b,
                diff,
                scale,
            };
        }
    }
    worst
}

/// `max |got - want| / max(max |want|, 1e-6)`, in f64; panics on differing shapes or a
/// non-finite value in either tensor.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let w = compare("rel_err", got, want, Tolerance::rel(0.0).floor);
    w.diff / w.scale
}

/// The largest absolute difference of two same-shaped tensors, in f64 (NaN if either holds a
/// NaN where the other does not, so that any `<` comparison with it fails).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "max_abs_diff: shapes differ");
    values_f64(a)
        .iter()
        .zip(values_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// Panics unless `got` is within `tol` of `want` (see [`Tolerance`]; an `f64` is a relative
/// tolerance with the default floor). The message names `what`, the worst element's flat
/// index and both values. `want` may be of another float dtype (e.g. an f64 reference).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: impl Into<Tolerance>) {
    let tol = tol.into();
    let w = compare(what, got, want, tol.floor);
    let e = w.diff / w.scale;
    eprintln!("{what}: relative error {e:.2e}");
    assert!(
        e <= tol.rel,
        "{what}: relative error {e:e} > {:e} at [{}]: got {} want {} (scale {})",
        tol.rel,
        w.index,
        w.got,
        w.want,
        w.scale
    );
}

/// Panics unless `|got - want| <= rel * |want| + abs`. The absolute term only absorbs
/// round-off on values that are 0 in exact arithmetic (e.g. gradients of masked samples).
pub fn assert_near(got: f64, want: f64, rel: f64, abs: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs() + abs,
        "{what}: got {got:e}, want {want:e} (diff {:e})",
        (got - want).abs()
    );
}

/// [`assert_near`] for every element of two equally long slices; the message names the index.
pub fn assert_all_near(got: &[f64], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_near(*g, *w, rel, abs, &format!("{what}[{i}]"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn rel_err_is_relative_to_the_largest_reference_magnitude() {
        // max diff 0.5 at index 1, scale 10.
        assert_eq!(rel_err(&t(&[10.0, 1.5, 0.0]), &t(&[10.0, 1.0, 0.0])), 0.05);
        // An all-zero reference: the floor is the scale.
        let e = rel_err(&t(&[1e-7, 0.0]), &t(&[0.0, 0.0]));
        assert!((e - 0.1).abs() < 1e-12, "{e}");
    }

    #[test]
    fn max_abs_diff_keeps_nan() {
        assert_eq!(max_abs_diff(&t(&[1.0, -2.0]), &t(&[0.5, 1.0])), 3.0);
        assert!(max_abs_diff(&t(&[f64::NAN, 5.0]), &t(&[0.0, 0.0])).is_nan());
        assert!(max_abs_diff(&t(&[5.0, f64::NAN]), &t(&[0.0, 0.0])).is_nan());
    }

    #[test]
    fn assert_close_accepts_within_and_names_the_worst_element() {
        assert_close("ok", &t(&[2.0, 4.0]), &t(&[2.0, 4.0 + 4e-6]), 1e-6);
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_close("x", &t(&[2.0, 4.0, 1.0]), &t(&[2.0, 4.1, 1.0]), 1e-3)
        }))
        .unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("x: relative error") && msg.contains("at [1]"),
            "{msg}"
        );
    }

    #[test]
    fn the_floor_sets_the_least_scale() {
        // Diff 1e-6 against a reference of magnitude 1e-4: 1e-2 relative to it, 1e-6 to 1.
        let (got, want) = (t(&[1e-4 + 1e-6]), t(&[1e-4]));
        assert_close("floor 1", &got, &want, Tolerance::rel(1e-5).floor(1.0));
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_close(
                "", &got, &want, 1e-5
            )))
            .is_err()
        );
    }

    #[test]
    fn assert_close_refuses_nan_on_either_side() {
        let nan = t(&[f64::NAN]);
        let one = t(&[1.0]);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_close(
                "", &nan, &one, 1.0
            )))
            .is_err()
        );
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_close(
                "", &one, &nan, 1.0
            )))
            .is_err()
        );
    }

    #[test]
    fn assert_near_has_a_relative_and_an_absolute_term() {
        assert_near(1.01, 1.0, 0.02, 0.0, "rel");
        assert_near(1e-9, 0.0, 0.0, 1e-8, "abs");
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_near(
                1.03, 1.0, 0.02, 0.0, ""
            )))
            .is_err()
        );
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_all_near(
                &[1.0],
                &[1.0, 2.0],
                0.0,
                0.0,
                ""
            )))
            .is_err()
        );
    }
}
