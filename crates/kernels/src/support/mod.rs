//! Building blocks the ops share: tensor data access, the GEMM, im2col, output buffers, a vector tanh and (with
//! `cuda`) kernel launches.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod im2col;
pub(crate) mod matmul;
pub(crate) mod out;
pub(crate) mod storage;
pub(crate) mod tanh;
