//! First-level (position) and second-level (layer self-) attention blocks of 2Att-2Mt.
//!
//! Both blocks return their attention weights next to the pooled feature, so that callers can
//! draw heat-maps. Weight names and shapes follow PyTorch conventions (`Conv2d` weights are stored
//! as `[out, in, 1, 1]`, `Linear` weights as `[out, in]`), so a PyTorch module with the same
//! attribute names loads unchanged. Fresh weights use PyTorch's default initialisation.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use fer_attention::{LayerSelfAttention, PositionAttention, PositionAttentionConfig};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let cfg = PositionAttentionConfig { d: 16, a: 8 };
//! let att1 = PositionAttention::new(32, &cfg, vb.pp("att1.0"))?;
//!
//! let feature_map = Tensor::randn(0f32, 1.0, (2, 32, 7, 7), &dev)?;
//! let out = att1.forward(&feature_map)?;
//! assert_eq!(out.v.dims(), &[2, 16]);
//! assert_eq!(out.alpha.dims(), &[2, 7, 7]);
//!
//! // Three layer features -> one vector, with one weight per layer.
//! let att2 = LayerSelfAttention::new(16, 4, vb.pp("att2"))?;
//! let seq = Tensor::stack(&[&out.v, &out.v, &out.v], 1)?; // [2, 3, 16]
//! let pooled = att2.forward(&seq)?;
//! assert_eq!(pooled.z.dims(), &[2, 16]);
//! let total: f32 = pooled.beta.sum_all()?.to_scalar()?;
//! assert!((total - 2.0).abs() < 1e-5);
//! # Ok(())
//! # }
//! ```

mod error;
mod init;
mod layer;
mod position;

pub use error::AttentionError;
pub use layer::{LayerOutput, LayerSelfAttention};
pub use position::{GlobalPool, PositionAttention, PositionAttentionConfig, PositionOutput};

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
