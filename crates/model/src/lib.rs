//! ResNet backbone and the assembled 2Att-2Mt model, its config and checkpoint I/O.
//!
//! The model reads top to bottom like the paper: a torchvision-layout ResNet returns the maps
//! of the tapped stages; a position attention block turns each map into a layer feature `v_l`
//! (and an attention map `alpha_l`); a bidirectional RNN and a self-attention over layers pool
//! them into `z` (with weights `beta`); a categorical head gives `c` and the logits, and a
//! valence/arousal head reads `[z ; c ; softmax(logits)]`.
//!
//! Variable names follow PyTorch (`backbone.layer1.0.conv1.weight`, `att1.0.proj.weight`,
//! `rnn.weight_ih_l0`, `att2.w1.weight`, `cat_fc.weight`, `va_out.bias`, ...), so a PyTorch
//! module with the same attributes exchanges state dicts with this one, and torchvision's
//! ImageNet ResNet weights load with [`import::import_torchvision`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use fer_model::{trainable_vars, ModelConfig, Stem, TwoAttTwoMt};
//!
//! # fn main() -> fer_model::Result<()> {
//! let mut cfg = ModelConfig::default();
//! cfg.backbone.width = 0.125; // 8/16/32/64 channels: a toy-sized network
//! cfg.backbone.stem = Stem::Small;
//! cfg.attention.d = 16;
//! cfg.attention.a = 8;
//! cfg.rnn.hidden = 8;
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = TwoAttTwoMt::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
//! let images = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev)?;
//! let out = model.forward(&images, false)?;
//!
//! assert_eq!(out.logits.as_ref().unwrap().dims(), &[2, 8]);
//! assert_eq!(out.valence.dims(), &[2]);
//! // One position map per tap (layer2, layer3, layer4 of a stride-1 stem at 32 px).
//! let sizes: Vec<_> = out.alpha.iter().map(|a| a.dims().to_vec()).collect();
//! assert_eq!(sizes, vec![vec![2, 16, 16], vec![2, 8, 8], vec![2, 4, 4]]);
//! // BatchNorm running statistics are variables but not trainable ones.
//! assert!(trainable_vars(&varmap).iter().all(|(n, _)| !n.ends_with("running_var")));
//! # Ok(())
//! # }
//! ```

mod bn;
pub mod checkpoint;
mod config;
mod error;
mod fit;
pub mod import;
mod model;
pub mod parity;
mod resnet;
mod vars;

pub use config::{BackboneConfig, ModelConfig, Stem, STAGES};
pub use error::{Error, Result};
pub use fer_kernels::max_pool_3x3_s2;
pub use model::{ModelOutput, TwoAttTwoMt};
pub use resnet::{global_avg_pool, ConvShape, ResNet};
pub use vars::{is_running_stat, trainable_vars};

pub use fer_attention::PositionAttentionConfig;
pub use fer_birnn::{BiRnnConfig, RnnKind};

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
