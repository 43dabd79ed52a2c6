//! Gradient stores as a training step combines them: scaled by a weight, summed over the pieces
//! of a batch, or empty for a rank with nothing to add.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::Result;

/// Multiplies the gradient of each of `vars` by `w`, in the store.
pub fn scale(grads: &mut GradStore, vars: &[Var], w: f64) -> Result<()> {
    if w == 1.0 {
        return Ok(());
    }
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), g.affine(w, 0.0)?);
        }
    }
    Ok(())
}

/// `acc + w * g`, variable by variable (one that has none in `acc` takes `w * g`).
pub fn accumulate(mut acc: GradStore, g: &GradStore, vars: &[Var], w: f64) -> Result<GradStore> {
    for v in vars {
        if let Some(t) = g.get(v.as_tensor()) {
            let wt = t.affine(w, 0.0)?;
            let sum = match acc.remove(v.as_tensor()) {
                Some(a) => (a + wt)?,
                None => wt,
            };
            acc.insert(v.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// No gradient at all (a rank whose part of a short last batch is empty): candle builds a
/// store only from a backward pass, here that of a constant, which reaches no variable.
pub fn empty() -> Result<GradStore> {
    Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.backward()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_and_accumulating_follow_the_arithmetic() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[3f32], &dev).unwrap();
        let vars = [a.clone(), b.clone()];
        // d/da sum(a * 2) = 2, d/db sum(b * 5) = 5; the second store has no b.
        let g1 = ((a.as_tensor() * 2.0).unwrap().sum_all().unwrap()
            + (b.as_tensor() * 5.0).unwrap().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
        let g2 = (a.as_tensor() * 10.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut acc = accumulate(empty().unwrap(), &g1, &vars, 0.5).unwrap();
        acc = accumulate(acc, &g2, &vars, 0.25).unwrap();
        let get = |s: &GradStore, v: &Var| s.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(get(&acc, &a), [1.0 + 2.5, 1.0 + 2.5]);
        assert_eq!(get(&acc, &b), [2.5]);
        scale(&mut acc, &vars, 2.0).unwrap();
        assert_eq!(get(&acc, &a), [7.0, 7.0]);
        assert_eq!(get(&acc, &b), [5.0]);
        assert!(empty().unwrap().get(a.as_tensor()).is_none());
    }
}
