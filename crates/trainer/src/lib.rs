//! Training, evaluation and prediction for the 2Att-2Mt facial emotion model.
//!
//! The `trainer` binary is a thin command line over this library: optimizers with parameter
//! groups and savable state ([`optim`]), the learning-rate schedule ([`schedule`]), gradient
//! clipping ([`clip`]), the run configuration ([`config`]), and the report of a run
//! ([`report`], [`plots`]).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use trainer::optim::{Optimizer, OptimizerConfig, OptimizerKind};
//!
//! // One SGD step on f(w) = sum(w^2) / 2, whose gradient is w itself.
//! let w = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0]], &Device::Cpu)?)?;
//! let cfg = OptimizerConfig { kind: OptimizerKind::Sgd, lr: 0.5, weight_decay: 0.0, ..Default::default() };
//! let mut opt = Optimizer::new(&cfg, vec![("head.w".into(), w.clone())])?;
//! let grads = (w.as_tensor().sqr()?.sum_all()? * 0.5)?.backward()?;
//! opt.step(&grads, cfg.lr)?;
//! assert_eq!(w.as_tensor().to_vec2::<f64>()?, vec![vec![0.5, -1.0]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alloc;
pub mod annotate;
pub mod bench;
pub mod cli;
pub mod clip;
pub mod collapse;
pub mod config;
pub mod default_run;
pub mod ema;
pub mod error;
pub mod evaluate;
pub mod gpu_check;
pub mod grads;
pub mod init;
pub mod optim;
mod optim_cpu;
pub mod photos;
pub mod plan;
pub mod plots;
pub mod predict;
pub mod report;
pub mod run_folder;
pub mod schedule;
pub mod soak;
pub mod state;
pub mod threads;
pub mod train;
pub mod world;

pub use error::{Error, Result};
