//! Bidirectional LSTM/GRU aggregator over layer-level features.
//!
//! [`BiRnn`] computes exactly what PyTorch's one-layer
//! `nn.LSTM(d, h, batch_first=True, bidirectional=True)` (or `nn.GRU`) computes, with zero
//! initial states, and stores its weights under the same names (`weight_ih_l0`,
//! `weight_hh_l0_reverse`, ...), so PyTorch state dicts load unchanged.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use fer_birnn::{BiRnn, BiRnnConfig, RnnKind};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let cfg = BiRnnConfig { kind: RnnKind::Gru, hidden: 8 };
//! let rnn = BiRnn::new(16, &cfg, vb.pp("rnn"))?;
//!
//! let layers = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev)?; // B = 2, L = 3 layer features
//! let h = rnn.forward(&layers)?;
//! assert_eq!(h.dims(), &[2, 3, 16]); // forward and backward states side by side
//! assert!(varmap.data().lock().unwrap().contains_key("rnn.weight_hh_l0_reverse"));
//! # Ok(())
//! # }
//! ```

mod cell;
mod error;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use cell::Direction;
pub use error::BiRnnError;

/// Which recurrent cell the aggregator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RnnKind {
    #[default]
    Lstm,
    Gru,
}

impl RnnKind {
    /// Number of stacked gate blocks in the weight matrices.
    fn gates(self) -> usize {
        match self {
            RnnKind::Lstm => 4,
            RnnKind::Gru => 3,
        }
    }
}

/// Cell kind and hidden size per direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BiRnnConfig {
    pub kind: RnnKind,
    /// Hidden size `h` of each direction; the output has `2h` features.
    pub hidden: usize,
}

impl Default for BiRnnConfig {
    fn default() -> Self {
        Self {
            kind: RnnKind::Lstm,
            hidden: 128,
        }
    }
}

/// One-layer bidirectional LSTM or GRU over `[B, L, d]` sequences.
#[derive(Debug, Clone)]
pub struct BiRnn {
    input: usize,
    fwd: Direction,
    bwd: Direction,
}

impl BiRnn {
    /// Weights `weight_ih_l0 [G*h, d]`, `weight_hh_l0 [G*h, h]`, `bias_ih_l0 [G*h]`,
    /// `bias_hh_l0 [G*h]` and their `_reverse` twins; G = 4 (LSTM) or 3 (GRU).
    pub fn new(input: usize, cfg: &BiRnnConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input,
            fwd: Direction::new(cfg.kind, input, cfg.hidden, "", &vb)?,
            bwd: Direction::new(cfg.kind, input, cfg.hidden, "_reverse", &vb)?,
        })
    }

    /// `x: [B, L, d] -> [B, L, 2h]`, the forward state then the backward state of each step.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.dims().to_vec();
        let &[_, l, d] = shape.as_slice() else {
            return Err(BiRnnError::Rank { got: shape }.into());
        };
        if d != self.input {
            return Err(BiRnnError::Features {
                expected: self.input,
                got: d,
                shape,
            }
            .into());
        }
        if l == 0 {
            return Err(BiRnnError::Empty { shape }.into());
        }
        let fwd = self.fwd.run(x, false)?;
        let bwd = self.bwd.run(x, true)?;
        Tensor::cat(&[&fwd, &bwd], 2)
    }
}

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
