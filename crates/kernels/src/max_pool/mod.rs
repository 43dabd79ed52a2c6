//! The ImageNet stem's max-pool: 3x3 windows, stride 2, padding 1, with a backward (candle's own
//! max-pool has none when kernel and stride differ).

pub(crate) mod cpu;

use candle_core::{Result, Tensor};

use crate::dispatch::{backend, Backend, Op};

/// The ResNet stem's max-pool: 3x3 windows, stride 2, padding 1 (padding never wins), over
/// `[B, C, H, W]`. The gradient goes to each window's first maximum.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
/// let y = fer_kernels::max_pool_3x3_s2(&x)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![5., 7., 13., 15.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    match backend(Op::MaxPool3x3S2, &[x]) {
        Backend::Cpu => x.contiguous()?.apply_op1(cpu::MaxPool3x3S2),
        Backend::Cuda | Backend::Candle => max_pool_plain(x),
    }
}

/// The candle twin, from differentiable ops. Padding repeats the border, which never changes a
/// window's max because the repeated value is inside that window; the max is taken separably
/// (rows, then columns). On a tie the gradient may go to every maximum of the window, where the
/// kernel (and PyTorch) sends it to the first.
fn max_pool_plain(x: &Tensor) -> Result<Tensor> {
    let x = pool_dim(x, 3)?;
    pool_dim(&x, 2)
}

fn pool_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let out = (n - 1) / 2 + 1;
    // One extra element on the right keeps `2 * out` items available from every offset; it only
    // ever lands in the odd positions that the subsampling drops.
    let p = x.pad_with_same(dim, 1, 2)?;
    let w0 = p.narrow(dim, 0, 2 * out)?;
    let w1 = p.narrow(dim, 1, 2 * out)?;
    let w2 = p.narrow(dim, 2, 2 * out)?;
    let m = w0.maximum(&w1)?.maximum(&w2)?;
    // Keep every other element: split the dim into (out, 2) and take phase 0.
    let mut shape = m.dims().to_vec();
    shape[dim] = out;
    shape.insert(dim + 1, 2);
    m.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}
