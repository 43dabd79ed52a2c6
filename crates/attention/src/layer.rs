use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::init::Dense;
use crate::AttentionError;

/// What the second-level block returns.
#[derive(Debug, Clone)]
pub struct LayerOutput {
    /// Attention-pooled feature `z`, `[B, D]`.
    pub z: Tensor,
    /// Attention over layers, `[B, L]`; each row sums to 1.
    pub beta: Tensor,
}

/// Second-level self-attention over the layer sequence `h_1..h_L`.
///
/// `s_l = w2^T tanh(W1 h_l + b1)`, `beta = softmax_l(s)`, `z = sum_l beta_l h_l`.
#[derive(Debug, Clone)]
pub struct LayerSelfAttention {
    in_dim: usize,
    w1: Dense,
    w2: Dense,
}

impl LayerSelfAttention {
    /// Weights: `w1.{weight [width, D], bias [width]}`, `w2.weight [1, width]`.
    pub fn new(in_dim: usize, width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            in_dim,
            w1: Dense::linear(in_dim, width, true, vb.pp("w1"))?,
            w2: Dense::linear(width, 1, false, vb.pp("w2"))?,
        })
    }

    /// `h: [B, L, D]`.
    pub fn forward(&self, h: &Tensor) -> Result<LayerOutput> {
        const BLOCK: &str = "LayerSelfAttention";
        let shape = h.dims().to_vec();
        let &[_, l, d] = shape.as_slice() else {
            return Err(AttentionError::Rank {
                block: BLOCK,
                expected: 3,
                layout: "[B, L, D]",
                got: shape,
            }
            .into());
        };
        if d != self.in_dim {
            return Err(AttentionError::Size {
                block: BLOCK,
                what: "features",
                expected: self.in_dim,
                got: d,
                shape,
            }
            .into());
        }
        if l == 0 {
            return Err(AttentionError::Empty {
                block: BLOCK,
                what: "layer sequence",
                shape,
            }
            .into());
        }
        let s = self
            .w2
            .forward(&self.w1.forward(h)?.tanh()?)?
            .squeeze(D::Minus1)?; // [B, L]
        let beta = candle_nn::ops::softmax(&s, 1)?;
        let z = beta.unsqueeze(1)?.matmul(h)?.squeeze(1)?; // [B, D]
        Ok(LayerOutput { z, beta })
    }
}
