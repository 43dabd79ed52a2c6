//! The recurrent cells on CUDA: one element-wise kernel per step forward and one backward.

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, Tensor};

use crate::support::cuda::{grid, kernel, output, tensor, view, with_views};

/// Launches an element-wise cell kernel `name(int b, int h, inputs.., outputs..)` over `b * h`
/// threads; returns the outputs, of `out_lens` floats each.
fn cell(
    dev: &CudaDevice,
    name: &str,
    (b, h): (usize, usize),
    inputs: &[CudaView<'_, f32>],
    out_lens: &[usize],
) -> Result<Vec<CudaSlice<f32>>> {
    let mut outs = out_lens
        .iter()
        .map(|&n| output(dev, n))
        .collect::<Result<Vec<_>>>()?;
    let f = kernel!(dev, name);
    let (bi, hi) = (b as i32, h as i32);
    let mut builder = f.builder();
    builder.arg(&bi);
    builder.arg(&hi);
    for v in inputs {
        builder.arg(v);
    }
    for o in outs.iter_mut() {
        builder.arg(o);
    }
    // SAFETY: the kernel reads `b * h` rows of the sizes the callers checked and writes the
    // outputs, allocated at the sizes the kernel indexes.
    unsafe { builder.launch(grid(b * h)) }.w()?;
    Ok(outs)
}

/// A cell's forward on CUDA, from the op's three storages to one output of `shape`.
pub(crate) fn cell_forward(
    name: &str,
    bh: (usize, usize),
    ins: [(&CudaStorage, &Layout); 3],
    shape: impl Into<Shape>,
) -> Result<(CudaStorage, Shape)> {
    let shape = shape.into();
    let dev = &ins[0].0.device;
    let views = ins
        .iter()
        .map(|(s, l)| view(s, l))
        .collect::<Result<Vec<_>>>()?;
    let out = cell(dev, name, bh, &views, &[shape.elem_count()])?;
    let out = out.into_iter().next().expect("one output asked for");
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// A cell's backward on CUDA: inputs as tensors, outputs as tensors of the given shapes.
pub(crate) fn cell_backward(
    name: &str,
    bh: (usize, usize),
    inputs: &[&Tensor],
    shapes: &[&Shape],
) -> Result<Vec<Tensor>> {
    with_views(inputs, |dev, views| {
        let lens: Vec<usize> = shapes.iter().map(|s| s.elem_count()).collect();
        let outs = cell(dev, name, bh, views, &lens)?;
        Ok(outs
            .into_iter()
            .zip(shapes)
            .map(|(o, s)| tensor(dev, o, (*s).clone()))
            .collect())
    })
}
