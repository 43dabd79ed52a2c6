//! The residual block of ResNet-18/34 in training mode as one op:
//! `relu(bn_b(conv_b(relu(bn_a(conv_a(x))))) + identity)`, `identity` being `x` or
//! `bn_d(conv_d(x))` (the downsample branch).
//!
//! Built from [`conv_bn_train`](crate::conv_bn_train) and [`add_relu`](crate::add_relu), the
//! block hands candle's autograd four map-sized gradients (the two conv outputs, both inputs of
//! the residual sum), and candle meets each first one with a zero-filled tensor and an addition
//! (all such first gradients together were 12-15 % of a training step of the FER-2013 model). As
//! one op, those gradients stay inside it, the identity's is added in place, and autograd sees
//! the block's input gradient alone. The six (nine) parameters travel as one flat tensor (a
//! custom op takes at most three inputs), which costs a copy of them and one more zero-filled
//! gradient for them a step: where the weights outweigh the maps the block runs unfused.

mod cpu;

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};

use crate::batch_norm::BatchStats;
use crate::dispatch::{backend, Backend, Op};
use crate::error::KernelError;
use crate::{add_relu, conv_bn_train};

/// One conv + training BatchNorm of a block: the conv weight `[O, C, k, k]`, its stride and
/// padding, the BatchNorm scale and shift (`[O]`).
#[derive(Clone, Copy, Debug)]
pub struct ConvBnArgs<'a> {
    pub weight: &'a Tensor,
    pub stride: usize,
    pub padding: usize,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// A ResNet basic block, training mode: `a` (with ReLU) then `b`, plus `x` or the downsample
/// branch `down`, then a ReLU. Returns the output and the batch statistics of `a`, `b` and
/// (when given) `down`, for the caller's running averages. Differentiable in `x` and every
/// weight, scale and shift.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use fer_kernels::{basic_block_train, ConvBnArgs};
/// let dev = &Device::Cpu;
/// let x = Tensor::randn(0f32, 1.0, (2, 8, 6, 6), dev)?;
/// let (wa, wb) = (Tensor::randn(0f32, 0.1, (8, 8, 3, 3), dev)?, Tensor::randn(0f32, 0.1, (8, 8, 3, 3), dev)?);
/// let (gamma, beta) = (Tensor::ones(8, candle_core::DType::F32, dev)?, Tensor::zeros(8, candle_core::DType::F32, dev)?);
/// let conv = |weight| ConvBnArgs { weight, stride: 1, padding: 1, gamma: &gamma, beta: &beta };
/// let (y, stats) = basic_block_train(&x, conv(&wa), conv(&wb), None, 1e-5)?;
/// assert_eq!(y.dims(), &[2, 8, 6, 6]);
/// assert_eq!(stats.len(), 2);
/// assert!(y.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v >= 0.0));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn basic_block_train(
    x: &Tensor,
    a: ConvBnArgs,
    b: ConvBnArgs,
    down: Option<ConvBnArgs>,
    eps: f64,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let convs: Vec<ConvBnArgs> = [Some(a), Some(b), down].into_iter().flatten().collect();
    let mut inputs = vec![x];
    inputs.extend(convs.iter().map(|c| c.weight));
    inputs.extend(convs.iter().flat_map(|c| [c.gamma, c.beta]));
    match backend(Op::BasicBlockTrain, &inputs) {
        Backend::Cpu if fusing_pays(x, &convs) => fused(x, &convs, eps),
        Backend::Cpu | Backend::Cuda | Backend::Candle => twin(x, a, b, down, eps),
    }
}

/// Whether the fused op saves more than it costs. It spares autograd ~3 zero-filled gradients
/// the size of the block's output map (a memset and an addition each: ~12 map-sized passes),
/// and costs a copy of the weights into the flat parameter tensor and one zero-filled gradient
/// for them (~6 weight-sized passes). Deep stages with wide kernels and small maps (ResNet-18's
/// layer4 at 48-112 px) lose: there the weights outweigh the maps.
fn fusing_pays(x: &Tensor, convs: &[ConvBnArgs]) -> bool {
    let weights: usize = convs.iter().map(|c| c.weight.elem_count()).sum();
    let (b, o) = (x.dims()[0], convs[1].weight.dims()[0]);
    let (h, w) = (x.dims()[2], x.dims()[3]);
    let stride = convs[0].stride.max(1);
    let map = b * o * h.div_ceil(stride) * w.div_ceil(stride);
    2 * map >= weights
}

/// The block as the ops it fuses.
fn twin(
    x: &Tensor,
    a: ConvBnArgs,
    b: ConvBnArgs,
    down: Option<ConvBnArgs>,
    eps: f64,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let run = |c: ConvBnArgs, x: &Tensor, relu: bool| {
        conv_bn_train(x, c.weight, c.stride, c.padding, c.gamma, c.beta, eps, relu)
    };
    let (h, sa) = run(a, x, true)?;
    let (h, sb) = run(b, &h, false)?;
    let mut stats = vec![sa, sb];
    let identity = match down {
        Some(d) => {
            let (y, sd) = run(d, x, false)?;
            stats.push(sd);
            y
        }
        None => x.clone(),
    };
    Ok((add_relu(&h, &identity)?, stats))
}

fn fused(x: &Tensor, convs: &[ConvBnArgs], eps: f64) -> Result<(Tensor, Vec<BatchStats>)> {
    let mut units: Vec<cpu::Unit> = Vec::with_capacity(convs.len());
    let mut params = Vec::with_capacity(3 * convs.len());
    let mut offset = 0;
    for (i, c) in convs.iter().enumerate() {
        // `b` reads `a`'s output; `a` and `down` read `x`.
        let input = if i == 1 {
            units[0].output_shape()
        } else {
            x.shape().clone()
        };
        let g = crate::conv2d::cpu::geom(&input, c.weight.shape(), c.stride, c.padding)?;
        crate::batch_norm::check_affine(g.o, c.gamma, c.beta)?;
        units.push(cpu::Unit { g, offset });
        offset += g.o * g.k() + 2 * g.o;
        params.extend([c.weight.flatten_all()?, c.gamma.clone(), c.beta.clone()]);
    }
    let (ga, gb) = (units[0].g, units[1].g);
    let out = [gb.b, gb.o, gb.ho, gb.wo];
    let identity = match units.get(2) {
        Some(d) => [d.g.b, d.g.o, d.g.ho, d.g.wo],
        None => [ga.b, ga.c, ga.h, ga.w],
    };
    if out != identity || ga.o != gb.c {
        return Err(KernelError::AddShapes {
            a: out.to_vec(),
            b: identity.to_vec(),
        }
        .into());
    }
    let params = Tensor::cat(&params, 0)?;
    let counts: Vec<usize> = units.iter().map(|u| u.g.b * u.g.n()).collect();
    let stats = Arc::new(OnceLock::new());
    let op = cpu::BlockTrain {
        units,
        eps,
        saved: OnceLock::new(),
        stats: Arc::clone(&stats),
    };
    let y = x.contiguous()?.apply_op2(&params, op)?;
    let all: &cpu::Stats = stats
        .get()
        .ok_or_else(|| KernelError::Storage("basic_block_train ran without statistics".into()))?;
    let stats = all
        .iter()
        .zip(counts)
        .map(|((mean, var), count)| {
            Ok(BatchStats {
                mean: Tensor::from_slice(mean, mean.len(), x.device())?,
                var: Tensor::from_slice(var, var.len(), x.device())?,
                count,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The FER-2013 model's trunk (batch 64): layer1's 24x24 blocks fuse, layer4's 3x3 ones,
    /// whose 590k-float kernels outweigh their 147k-float maps, do not.
    #[test]
    fn fusing_pays_where_maps_outweigh_weights() {
        let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        let pays = |b: usize, c: usize, hw: usize, stride: usize| {
            let o = c * stride;
            let (x, wa, wb, g) = (
                z(&[b, c, hw, hw]),
                z(&[o, c, 3, 3]),
                z(&[o, o, 3, 3]),
                z(&[o]),
            );
            let conv = |weight, stride| ConvBnArgs {
                weight,
                stride,
                padding: 1,
                gamma: &g,
                beta: &g,
            };
            fusing_pays(&x, &[conv(&wa, stride), conv(&wb, 1)])
        };
        assert!(pays(64, 32, 24, 1), "layer1");
        assert!(pays(64, 64, 12, 1), "layer2");
        assert!(!pays(64, 256, 3, 1), "layer4");
        assert!(!pays(64, 128, 6, 2), "layer4's first block");
    }
}
