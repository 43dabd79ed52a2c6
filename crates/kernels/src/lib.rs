//! Fast CPU kernels for the hot core of 2Att-2Mt, as candle ops that keep autograd.
//!
//! candle's CPU convolution backward runs direct loops at a fraction of the GEMM rate; a
//! training step of a ResNet spends most of its time there. [`conv2d`] computes the forward and
//! both gradients as im2col + GEMM instead, through a candle `CustomOp2`, so `backward()` works as
//! usual. On other devices, other dtypes, or when switched off, it is candle's own `conv2d`.
//!
//! [`batch_norm_train`] does the same for training-mode BatchNorm: two passes forward (statistics,
//! normalisation) and two backward, where candle's module chains a dozen generic ops.
//! [`conv_bn_train`] fuses the two (and the ReLU), so the conv output is no graph node of its own;
//! [`batch_norm_eval`] is the eval-mode BatchNorm (+ ReLU) in one pass, and
//! [`basic_block_train`] a whole ResNet basic block in training mode, so that candle's autograd
//! sees only the block's input gradient.
//!
//! [`max_pool_3x3_s2`] is the ImageNet stem's max-pool with an argmax backward (candle's own
//! max-pool has no backward when kernel and stride differ).
//!
//! [`position_attention`] fuses the first-level attention pooling (scores, softmax over
//! positions, weighted sum and mean) into one op with a hand-written backward, and
//! [`position_projection`] the linear map before it (read from the feature map in place, no
//! transposed copy); [`lstm_cell`]
//! and [`gru_cell`] do the same for one step of a PyTorch LSTM / GRU; [`add_relu`] for the
//! residual block's output.
//!
//! Every op runs on every device and dtype: [`backend`] picks our CPU kernel, our CUDA kernel or
//! the op's candle twin in one place, which also reads the switch, the environment variable
//! `FER_KERNELS=candle` (read once) or [`set_enabled`].
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let x = Var::new(&[[[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.]]]], &Device::Cpu)?;
//! let w = Var::new(&[[[[1f32, 0.], [0., -1.]]]], &Device::Cpu)?;
//! let y = fer_kernels::conv2d(x.as_tensor(), w.as_tensor(), 1, 0)?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-4.0, -4.0, -4.0, -4.0]);
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).unwrap().flatten_all()?.to_vec1::<f32>()?, vec![12., 16., 24., 28.]);
//! # Ok::<(), candle_core::Error>(())
//! ```

// One folder per op, laid out the same way: `mod.rs` holds the public function, its shape
// checks, the choice of implementation (`dispatch::backend`) and the candle twin; `cpu.rs` the
// CPU numerics and their candle custom op; `cuda.rs` (where the op has one) the CUDA launches.
mod add_relu;
mod attention;
mod basic_block;
mod batch_norm;
mod conv2d;
mod conv_bn;
mod max_pool;
mod projection;
mod rnn_cell;

pub mod check;
mod dispatch;
mod error;
mod support;

pub use add_relu::add_relu;
pub use attention::{position_attention, AttentionPool};
pub use basic_block::{basic_block_train, ConvBnArgs};
pub use batch_norm::{batch_norm_eval, batch_norm_train, BatchStats};
pub use conv2d::conv2d;
pub use conv_bn::{conv_bn_eval, conv_bn_relu_pool_train, conv_bn_train};
pub use dispatch::{backend, enabled, set_enabled, Backend, Op};
pub use error::KernelError;
pub use max_pool::max_pool_3x3_s2;
pub use projection::position_projection;
pub use rnn_cell::{gru_cell, lstm_cell};
pub use support::out::set_poison;

/// The f32 data of candle's CPU storages, for other crates' own custom ops (the optimizer's
/// in-place updates).
pub mod storage {
    pub use crate::support::storage::{slice, slice_mut};
}

// The README's example is compiled and run with the doctests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
