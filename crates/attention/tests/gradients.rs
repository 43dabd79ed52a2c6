//! Finite-difference gradient checks (f64 central differences) and the "every weight learns"
//! check, on freshly initialised blocks.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_attention::{GlobalPool, LayerSelfAttention, PositionAttention, PositionAttentionConfig};
use fer_test_support::{finite_difference_error, weights_without_gradient};

const CFG: PositionAttentionConfig = PositionAttentionConfig { d: 5, a: 3 };

/// `sum(v * pv) + sum(alpha * pa)` with fixed probes, so both outputs feed the gradient.
fn position_loss(vb: VarBuilder, x: &Tensor) -> Result<Tensor> {
    let out = PositionAttention::new(x.dim(1)?, &CFG, vb)?.forward(x)?;
    probe_loss(&[&out.v, &out.alpha], 11)
}

fn layer_loss(vb: VarBuilder, h: &Tensor) -> Result<Tensor> {
    let out = LayerSelfAttention::new(h.dim(2)?, 4, vb)?.forward(h)?;
    probe_loss(&[&out.z, &out.beta], 12)
}

/// Deterministic probes (a fixed sequence, no RNG needed) weighting each output.
fn probe_loss(outs: &[&Tensor], salt: usize) -> Result<Tensor> {
    let mut loss = Tensor::zeros((), DType::F64, &Device::Cpu)?;
    for (k, o) in outs.iter().enumerate() {
        let n = o.elem_count();
        let p: Vec<f64> = (0..n)
            .map(|i| (((i * 7 + k * 13 + salt) % 17) as f64 - 8.0) / 8.0)
            .collect();
        let p = Tensor::from_vec(p, o.shape(), &Device::Cpu)?;
        loss = (loss + (*o * p)?.sum_all()?)?;
    }
    Ok(loss)
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f64, 1.0, shape, &Device::Cpu).unwrap()
}

#[test]
fn position_attention_gradients_match_finite_differences() {
    let varmap = VarMap::new();
    let x = randn(&[2, 4, 3, 2]);
    let e = finite_difference_error(&varmap, &x, position_loss);
    assert!(e < 1e-6, "worst relative error {e:e}");
}

#[test]
fn layer_self_attention_gradients_match_finite_differences() {
    let varmap = VarMap::new();
    let h = randn(&[2, 3, 6]);
    let e = finite_difference_error(&varmap, &h, layer_loss);
    assert!(e < 1e-6, "worst relative error {e:e}");
}

#[test]
fn every_weight_gets_a_gradient() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = PositionAttentionConfig { d: 8, a: 4 };
    let att1 = PositionAttention::new(6, &cfg, vb.pp("att1")).unwrap();
    let pool = GlobalPool::new(6, &cfg, vb.pp("pool")).unwrap();
    let att2 = LayerSelfAttention::new(8, 5, vb.pp("att2")).unwrap();
    let f = Tensor::randn(0f32, 1.0, (2, 6, 3, 5), &dev).unwrap();
    let v1 = att1.forward(&f).unwrap().v;
    let v2 = pool.forward(&f).unwrap().v;
    let seq = Tensor::stack(&[&v1, &v2, &v1.sqr().unwrap()], 1).unwrap();
    let z = att2.forward(&seq).unwrap().z;
    let target = Tensor::randn(0f32, 1.0, z.shape(), &dev).unwrap();
    let loss = (z - target).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(varmap.all_vars().len(), 7 + 2 + 3);
    assert_eq!(
        weights_without_gradient(&varmap, &grads),
        Vec::<String>::new()
    );
}
