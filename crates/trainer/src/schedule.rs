//! Learning-rate schedule: linear warm-up, then a cosine decay to a floor.

use serde::{Deserialize, Serialize};

/// The multiplier applied to the base learning rate at each optimizer step.
///
/// Step `k` (0-based) of `total` uses `factor(k)`:
/// - during warm-up (`k < warmup`): `(k + 1) / warmup`, so the very first step already moves;
/// - then `min + (1 - min) * (1 + cos(pi * p)) / 2` with `p = (k - warmup) / max(1, total - warmup)`
///   clamped to 1, so a run that goes past `total` stays at the floor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Floor of the decay as a fraction of the base learning rate.
    pub min_factor: f64,
}

impl WarmupCosine {
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_points() {
        let s = WarmupCosine {
            warmup_steps: 4,
            total_steps: 14,
            min_factor: 0.1,
        };
        assert_eq!(s.factor(0), 0.25);
        assert_eq!(s.factor(3), 1.0);
        assert!((s.factor(4) - 1.0).abs() < 1e-15);
        // Half way through the decay the cosine term is exactly one half.
        assert!((s.factor(9) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((s.factor(14) - 0.1).abs() < 1e-12);
        assert!((s.factor(100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn no_warmup_starts_at_one() {
        let s = WarmupCosine {
            warmup_steps: 0,
            total_steps: 10,
            min_factor: 0.0,
        };
        assert_eq!(s.factor(0), 1.0);
        assert!(s.factor(5) < s.factor(4));
    }
}
