use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::init::Dense;
use crate::AttentionError;

/// Sizes of the first-level (position) attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PositionAttentionConfig {
    /// Width of the projected feature `p_ij` and of the layer feature `v`.
    pub d: usize,
    /// Width of the additive attention's hidden layer.
    pub a: usize,
}

impl Default for PositionAttentionConfig {
    fn default() -> Self {
        Self { d: 256, a: 128 }
    }
}

/// What a first-level block returns for one tapped feature map.
#[derive(Debug, Clone)]
pub struct PositionOutput {
    /// Layer feature `v`, `[B, d]`.
    pub v: Tensor,
    /// Attention map over positions, `[B, H, W]`; each map sums to 1.
    pub alpha: Tensor,
}

/// Checks `f` is `[B, C, H, W]` with the expected `C` and at least one position.
fn check_map(block: &'static str, f: &Tensor, channels: usize) -> Result<(usize, usize, usize)> {
    let shape = f.dims().to_vec();
    let &[b, c, h, w] = shape.as_slice() else {
        return Err(AttentionError::Rank {
            block,
            expected: 4,
            layout: "[B, C, H, W]",
            got: shape,
        }
        .into());
    };
    if c != channels {
        return Err(AttentionError::Size {
            block,
            what: "channels",
            expected: channels,
            got: c,
            shape,
        }
        .into());
    }
    if h * w == 0 {
        return Err(AttentionError::Empty {
            block,
            what: "feature map",
            shape,
        }
        .into());
    }
    Ok((b, h, w))
}

/// First-level attention over the positions of one feature map.
///
/// `P = conv1x1(F -> d)`, `e_ij = w^T tanh(W p_ij + b)`, `alpha = softmax_ij(e)`,
/// `u = sum alpha_ij p_ij`, `g = mean p_ij`, `v = Linear([u ; g] -> d)`.
#[derive(Debug, Clone)]
pub struct PositionAttention {
    in_channels: usize,
    proj: Dense,
    score_w: Dense,
    score_v: Dense,
    fuse: Dense,
}

impl PositionAttention {
    /// Weights: `proj.{weight [d,C,1,1], bias}`, `score_w.{weight [a,d,1,1], bias}`,
    /// `score_v.weight [1,a,1,1]`, `fuse.{weight [d,2d], bias}`.
    pub fn new(in_channels: usize, cfg: &PositionAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, a) = (cfg.d, cfg.a);
        Ok(Self {
            in_channels,
            proj: Dense::conv1x1(in_channels, d, true, vb.pp("proj"))?,
            score_w: Dense::conv1x1(d, a, true, vb.pp("score_w"))?,
            score_v: Dense::conv1x1(a, 1, false, vb.pp("score_v"))?,
            fuse: Dense::linear(2 * d, d, true, vb.pp("fuse"))?,
        })
    }

    /// `f: [B, C, H, W]`.
    pub fn forward(&self, f: &Tensor) -> Result<PositionOutput> {
        let (b, h, w) = check_map("PositionAttention", f, self.in_channels)?;
        let p = self.proj.positions(f)?; // [B, N, d]
                                         // Scores, softmax, weighted sum and mean in one op (fer-kernels; candle's ops where the
                                         // kernel does not run): score_w's `[a, d]` weight and bias, score_v's `[1, a]` as `[a]`.
        let pool = fer_kernels::position_attention(
            &p,
            self.score_w.weight(),
            &self.score_w.bias_or_zeros()?,
            &self.score_v.weight().squeeze(0)?,
        )?;
        let v = self.fuse.forward(&pool.ug)?; // Linear([u ; g])
        Ok(PositionOutput {
            v,
            alpha: pool.alpha.reshape((b, h, w))?,
        })
    }
}

/// The `no-att1` ablation: global average pooling of the projected map, same interface.
///
/// `P = conv1x1(F -> d)`, `v = mean p_ij`, `alpha` uniform.
#[derive(Debug, Clone)]
pub struct GlobalPool {
    in_channels: usize,
    proj: Dense,
}

impl GlobalPool {
    /// Weights: `proj.{weight [d,C,1,1], bias}`; `cfg.a` is unused.
    pub fn new(in_channels: usize, cfg: &PositionAttentionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            in_channels,
            proj: Dense::conv1x1(in_channels, cfg.d, true, vb.pp("proj"))?,
        })
    }

    /// `f: [B, C, H, W]`.
    pub fn forward(&self, f: &Tensor) -> Result<PositionOutput> {
        let (b, h, w) = check_map("GlobalPool", f, self.in_channels)?;
        let v = self.proj.positions(f)?.mean(1)?;
        let alpha =
            Tensor::full(1.0 / (h * w) as f64, (b, h, w), f.device())?.to_dtype(f.dtype())?;
        Ok(PositionOutput { v, alpha })
    }
}
