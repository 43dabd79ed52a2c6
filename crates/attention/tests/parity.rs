//! Outputs and gradients against PyTorch (fixtures from `tests/reference/attention/gen.py`).
//!
//! Error measure: `max|rust - torch| / max(max|torch|, 1e-6)` per tensor, against float64
//! PyTorch values; the Rust block runs in f32 (tolerance 1e-5) and in f64 (tolerance 1e-10).

use std::path::Path;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use fer_attention::{GlobalPool, LayerSelfAttention, PositionAttention, PositionAttentionConfig};
use fer_test_support::{check_parity, Fixture};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

const PRECISIONS: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::F64, 1e-10)];

fn position(fx: &Fixture, vb: VarBuilder, x: &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
    let c = x.dim(1)?;
    let d = fx["param.proj.bias"].dim(0)?;
    let a = fx["param.score_w.bias"].dim(0)?;
    let out = PositionAttention::new(c, &PositionAttentionConfig { d, a }, vb)?.forward(x)?;
    Ok(vec![("v", out.v), ("alpha", out.alpha)])
}

fn global_pool(fx: &Fixture, vb: VarBuilder, x: &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
    let d = fx["param.proj.bias"].dim(0)?;
    let cfg = PositionAttentionConfig { d, a: 1 };
    let out = GlobalPool::new(x.dim(1)?, &cfg, vb)?.forward(x)?;
    Ok(vec![("v", out.v), ("alpha", out.alpha)])
}

fn layer(fx: &Fixture, vb: VarBuilder, h: &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
    let width = fx["param.w1.bias"].dim(0)?;
    let out = LayerSelfAttention::new(h.dim(2)?, width, vb)?.forward(h)?;
    Ok(vec![("z", out.z), ("beta", out.beta)])
}

#[test]
fn position_attention_matches_pytorch() {
    for (dtype, tol) in PRECISIONS {
        // B=2 on a 3x5 map; B=1 on a 2x1 map; a single position (alpha must be exactly 1).
        for case in ["position_b2", "position_b1", "position_1x1"] {
            check_parity(fixtures(), case, dtype, tol, position);
        }
    }
}

#[test]
fn global_pool_matches_pytorch() {
    for (dtype, tol) in PRECISIONS {
        check_parity(fixtures(), "globalpool_b2", dtype, tol, global_pool);
    }
}

#[test]
fn layer_self_attention_matches_pytorch() {
    for (dtype, tol) in PRECISIONS {
        for case in ["layer_b2_l3", "layer_b1_l1", "layer_b2_l5"] {
            check_parity(fixtures(), case, dtype, tol, layer);
        }
    }
}
