//! Streaming metrics: exact sums and counts, so memory does not grow with the set.

use candle_core::{DType, Tensor};

use super::classification::{
    accuracy_from_confusion, argmax_rows, check_classes, macro_f1_from_confusion,
};
use super::regression::{ccc_from, pcc_from};
use super::{sign, Metrics, RegressionMetrics};
use crate::error::{shape_err, LossError, Result};

/// The class side of a batch: raw logits (row-major `[B, K]`) or already chosen classes `[B]`.
#[derive(Clone, Copy, Debug)]
pub enum Predictions<'a> {
    Logits(&'a [f32]),
    Classes(&'a [i64]),
}

/// Sums of one regression target. Constancy is tracked with min/max so that it is exact.
#[derive(Clone, Debug, Default)]
struct RegressionSums {
    n: u64,
    sp: f64,
    st: f64,
    spp: f64,
    stt: f64,
    spt: f64,
    sse: f64,
    agree: u64,
    p_range: Option<(f64, f64)>,
    t_range: Option<(f64, f64)>,
}

fn widen(r: &mut Option<(f64, f64)>, x: f64) {
    *r = Some(match *r {
        None => (x, x),
        Some((lo, hi)) => (lo.min(x), hi.max(x)),
    });
}

fn constant(r: Option<(f64, f64)>) -> bool {
    r.is_some_and(|(lo, hi)| lo == hi)
}

impl RegressionSums {
    fn push(&mut self, p: f64, t: f64) {
        self.n += 1;
        self.sp += p;
        self.st += t;
        self.spp += p * p;
        self.stt += t * t;
        self.spt += p * t;
        self.sse += (p - t) * (p - t);
        self.agree += u64::from(sign(p) == sign(t));
        widen(&mut self.p_range, p);
        widen(&mut self.t_range, t);
    }

    fn merge(&mut self, o: &Self) {
        self.n += o.n;
        self.sp += o.sp;
        self.st += o.st;
        self.spp += o.spp;
        self.stt += o.stt;
        self.spt += o.spt;
        self.sse += o.sse;
        self.agree += o.agree;
        for (mine, theirs) in [
            (&mut self.p_range, o.p_range),
            (&mut self.t_range, o.t_range),
        ] {
            if let Some((lo, hi)) = theirs {
                widen(mine, lo);
                widen(mine, hi);
            }
        }
    }

    fn finish(&self) -> Option<RegressionMetrics> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        let (mp, mt) = (self.sp / n, self.st / n);
        let (cp, ct) = (constant(self.p_range), constant(self.t_range));
        // One-pass variances can come out a hair below 0 from rounding: clamp.
        let var_p = if cp {
            0.0
        } else {
            (self.spp / n - mp * mp).max(0.0)
        };
        let var_t = if ct {
            0.0
        } else {
            (self.stt / n - mt * mt).max(0.0)
        };
        let cov = if cp || ct {
            0.0
        } else {
            self.spt / n - mp * mt
        };
        Some(RegressionMetrics {
            ccc: ccc_from(mp, mt, var_p, var_t, cov),
            pcc: pcc_from(var_p, var_t, cov),
            rmse: (self.sse / n).sqrt(),
            sagr: self.agree as f64 / n,
        })
    }
}

/// Accumulates predictions batch by batch and computes [`Metrics`] over everything pushed.
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    num_classes: usize,
    valence: RegressionSums,
    arousal: RegressionSums,
    confusion: Vec<Vec<u64>>,
}

fn f64s<V: Copy + Into<f64>>(v: &[V]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

impl MetricsAccumulator {
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            valence: RegressionSums::default(),
            arousal: RegressionSums::default(),
            confusion: vec![vec![0; num_classes]; num_classes],
        }
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Adds one batch. All VA slices have one entry per sample (or are all empty when the batch
    /// has no VA output); `va_mask` is 0/1. `targets` use `-1` for "no class". Nothing is added
    /// when an error is returned.
    #[allow(clippy::too_many_arguments)]
    pub fn push_batch<V: Copy + Into<f64>>(
        &mut self,
        valence_pred: &[V],
        arousal_pred: &[V],
        valence: &[V],
        arousal: &[V],
        va_mask: &[V],
        predictions: Predictions<'_>,
        targets: &[i64],
    ) -> Result<()> {
        // Validate both halves before touching any sum.
        let classes = self.class_predictions(predictions, targets)?;
        let va = Self::check_va(valence_pred, arousal_pred, valence, arousal, va_mask)?;
        self.add_classes(&classes, targets);
        self.add_va(&va);
        Ok(())
    }

    /// Adds only the valence/arousal side of a batch.
    pub fn push_va<V: Copy + Into<f64>>(
        &mut self,
        valence_pred: &[V],
        arousal_pred: &[V],
        valence: &[V],
        arousal: &[V],
        va_mask: &[V],
    ) -> Result<()> {
        let va = Self::check_va(valence_pred, arousal_pred, valence, arousal, va_mask)?;
        self.add_va(&va);
        Ok(())
    }

    /// Adds only the class side of a batch.
    pub fn push_classes(&mut self, predictions: Predictions<'_>, targets: &[i64]) -> Result<()> {
        let classes = self.class_predictions(predictions, targets)?;
        self.add_classes(&classes, targets);
        Ok(())
    }

    /// [`push_batch`](Self::push_batch) from candle tensors: VA tensors `[B]` (any float dtype),
    /// `logits` `[B, K]`, `targets` `[B]` i64.
    #[allow(clippy::too_many_arguments)]
    pub fn push_tensors(
        &mut self,
        valence_pred: &Tensor,
        arousal_pred: &Tensor,
        valence: &Tensor,
        arousal: &Tensor,
        va_mask: &Tensor,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<()> {
        let v1 = |t: &Tensor, what: &'static str| -> Result<Vec<f64>> {
            if t.rank() != 1 {
                return Err(shape_err(what, format!("expected [B], got {:?}", t.dims())));
            }
            Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
        };
        if logits.rank() != 2 {
            return Err(shape_err(
                "logits",
                format!("expected [B, K], got {:?}", logits.dims()),
            ));
        }
        if targets.dtype() != DType::I64 {
            return Err(shape_err(
                "targets",
                format!("must be i64, got {:?}", targets.dtype()),
            ));
        }
        let logits = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.push_batch(
            &v1(valence_pred, "valence prediction")?,
            &v1(arousal_pred, "arousal prediction")?,
            &v1(valence, "valence")?,
            &v1(arousal, "arousal")?,
            &v1(va_mask, "va mask")?,
            Predictions::Logits(&logits),
            &targets.to_vec1::<i64>()?,
        )
    }

    /// Adds everything another accumulator (e.g. of another data shard) has seen.
    pub fn merge(&mut self, other: &MetricsAccumulator) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(shape_err(
                "metrics merge",
                format!("{} classes vs {}", self.num_classes, other.num_classes),
            ));
        }
        self.valence.merge(&other.valence);
        self.arousal.merge(&other.arousal);
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        Ok(())
    }

    /// The metrics of everything pushed so far.
    pub fn finish(&self) -> Metrics {
        let class_samples: u64 = self.confusion.iter().flatten().sum();
        Metrics {
            valence: self.valence.finish(),
            arousal: self.arousal.finish(),
            accuracy: accuracy_from_confusion(&self.confusion),
            macro_f1: macro_f1_from_confusion(&self.confusion),
            confusion: (class_samples > 0).then(|| self.confusion.clone()),
            va_samples: self.valence.n,
            class_samples,
        }
    }

    fn class_predictions(&self, predictions: Predictions<'_>, targets: &[i64]) -> Result<Vec<i64>> {
        let classes = match predictions {
            Predictions::Classes(c) => c.to_vec(),
            Predictions::Logits(l) => {
                if l.len() != targets.len() * self.num_classes {
                    return Err(shape_err(
                        "logits",
                        format!(
                            "{} values for {} samples of {} classes",
                            l.len(),
                            targets.len(),
                            self.num_classes
                        ),
                    ));
                }
                if targets.is_empty() {
                    Vec::new()
                } else {
                    argmax_rows(l, self.num_classes)?
                }
            }
        };
        check_classes(&classes, targets, self.num_classes)?;
        Ok(classes)
    }

    fn add_classes(&mut self, classes: &[i64], targets: &[i64]) {
        for (&p, &t) in classes.iter().zip(targets) {
            if t >= 0 {
                self.confusion[t as usize][p as usize] += 1;
            }
        }
    }

    /// Returns the valid `(pv, pa, v, a)` quadruples after checking lengths, mask and values.
    fn check_va<V: Copy + Into<f64>>(
        valence_pred: &[V],
        arousal_pred: &[V],
        valence: &[V],
        arousal: &[V],
        va_mask: &[V],
    ) -> Result<Vec<[f64; 4]>> {
        let b = va_mask.len();
        for (what, len) in [
            ("valence prediction", valence_pred.len()),
            ("arousal prediction", arousal_pred.len()),
            ("valence", valence.len()),
            ("arousal", arousal.len()),
        ] {
            if len != b {
                return Err(shape_err(what, format!("{len} values, va mask has {b}")));
            }
        }
        let cols = [
            f64s(valence_pred),
            f64s(arousal_pred),
            f64s(valence),
            f64s(arousal),
        ];
        let names = [
            "valence prediction",
            "arousal prediction",
            "valence",
            "arousal",
        ];
        let mut out = Vec::with_capacity(b);
        for (i, m) in f64s(va_mask).into_iter().enumerate() {
            if m == 0.0 {
                continue;
            }
            if m != 1.0 {
                return Err(LossError::InvalidMask {
                    what: "va mask",
                    index: i,
                    value: m,
                });
            }
            let q = [cols[0][i], cols[1][i], cols[2][i], cols[3][i]];
            if let Some(j) = q.iter().position(|x| !x.is_finite()) {
                return Err(LossError::NotFinite {
                    what: names[j],
                    index: i,
                    value: q[j],
                });
            }
            out.push(q);
        }
        Ok(out)
    }

    fn add_va(&mut self, va: &[[f64; 4]]) {
        for &[pv, pa, v, a] in va {
            self.valence.push(pv, v);
            self.arousal.push(pa, a);
        }
    }
}
