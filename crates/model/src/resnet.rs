//! ResNet-18/34/50 in torchvision's layout and tensor names, returning the tapped stage maps.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::bn::BatchNorm;

use crate::config::{BackboneConfig, Stem};

/// torchvision initialises convs with Kaiming-normal over fan-out (ReLU gain), no bias.
fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv> {
    let stdev = (2.0 / (c_out * k * k) as f64).sqrt();
    let weight = vb.get_with_hints(
        (c_out, c_in, k, k),
        "weight",
        Init::Randn { mean: 0.0, stdev },
    )?;
    Ok(Conv {
        weight,
        stride,
        padding,
    })
}

/// A bias-free conv through `fer_kernels::conv2d` (im2col + GEMM on CPU, candle's elsewhere).
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// This conv's geometry on `size x size` inputs, named `label`.
    fn shape(&self, label: String, size: usize) -> ConvShape {
        let (o, c, k, _) = self.weight.dims4().expect("conv weights are 4-D");
        ConvShape {
            label,
            in_channels: c,
            out_channels: o,
            kernel: k,
            stride: self.stride,
            padding: self.padding,
            in_size: size,
        }
    }
}

/// One conv of the trunk as it runs on a given image size: what a per-layer benchmark or a FLOP
/// count needs. Square inputs and kernels, no groups or dilation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConvShape {
    /// The weight's name without `.weight`, e.g. `layer2.0.downsample.0`.
    pub label: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Input height and width.
    pub in_size: usize,
}

impl ConvShape {
    /// Whether `other` is the same conv on the same input size, whatever its label.
    pub fn same_geometry(&self, other: &ConvShape) -> bool {
        let key = |s: &ConvShape| {
            let ConvShape {
                label: _,
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                in_size,
            } = *s;
            (in_channels, out_channels, kernel, stride, padding, in_size)
        };
        key(self) == key(other)
    }

    /// Output height and width.
    pub fn out_size(&self) -> usize {
        (self.in_size + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Floating-point operations of the forward for `batch` images (a multiply-add is two).
    pub fn forward_flops(&self, batch: usize) -> f64 {
        let per_output = self.in_channels * self.kernel * self.kernel;
        let outputs = self.out_channels * self.out_size() * self.out_size();
        2.0 * (batch * per_output * outputs) as f64
    }
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(c, vb)
}

/// Conv + BatchNorm pair, the unit every block is made of.
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, false)
    }

    /// Conv, BatchNorm, ReLU.
    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, true)
    }

    fn run(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let Conv {
            weight,
            stride,
            padding,
        } = &self.conv;
        if train {
            // One op where the kernels run: the conv output is no graph node of its own.
            self.bn.train_after_conv(x, weight, *stride, *padding, relu)
        } else {
            self.bn.eval_after_conv(x, weight, *stride, *padding, relu)
        }
    }

    /// The conv and BatchNorm parameters, for a fused block.
    fn args(&self) -> fer_kernels::ConvBnArgs<'_> {
        let (gamma, beta) = self.bn.affine();
        fer_kernels::ConvBnArgs {
            weight: &self.conv.weight,
            stride: self.conv.stride,
            padding: self.conv.padding,
            gamma,
            beta,
        }
    }

    /// Conv, BatchNorm, ReLU and the ImageNet stem's 3x3 stride-2 max-pool.
    fn forward_relu_pool(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let Conv {
                weight,
                stride,
                padding,
            } = &self.conv;
            return self
                .bn
                .train_relu_pool_after_conv(x, weight, *stride, *padding);
        }
        fer_kernels::max_pool_3x3_s2(&self.forward_relu(x, train)?)
    }
}

enum Block {
    Basic {
        a: ConvBn,
        b: ConvBn,
        downsample: Option<ConvBn>,
    },
    Bottleneck {
        a: ConvBn,
        b: ConvBn,
        c: ConvBn,
        downsample: Option<ConvBn>,
    },
}

impl Block {
    fn basic(c_in: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let a = ConvBn {
            conv: conv(c_in, planes, 3, stride, 1, vb.pp("conv1"))?,
            bn: bn(planes, vb.pp("bn1"))?,
        };
        let b = ConvBn {
            conv: conv(planes, planes, 3, 1, 1, vb.pp("conv2"))?,
            bn: bn(planes, vb.pp("bn2"))?,
        };
        let downsample = downsample(c_in, planes, stride, vb)?;
        Ok(Block::Basic { a, b, downsample })
    }

    /// torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv.
    fn bottleneck(c_in: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let out = planes * 4;
        let a = ConvBn {
            conv: conv(c_in, planes, 1, 1, 0, vb.pp("conv1"))?,
            bn: bn(planes, vb.pp("bn1"))?,
        };
        let b = ConvBn {
            conv: conv(planes, planes, 3, stride, 1, vb.pp("conv2"))?,
            bn: bn(planes, vb.pp("bn2"))?,
        };
        let c = ConvBn {
            conv: conv(planes, out, 1, 1, 0, vb.pp("conv3"))?,
            bn: bn(out, vb.pp("bn3"))?,
        };
        let downsample = downsample(c_in, out, stride, vb)?;
        Ok(Block::Bottleneck {
            a,
            b,
            c,
            downsample,
        })
    }

    /// The block's convs in execution order on `size x size` inputs, and its output size.
    fn shapes(&self, prefix: &str, size: usize, out: &mut Vec<ConvShape>) -> usize {
        let (convs, downsample): (Vec<&ConvBn>, _) = match self {
            Block::Basic { a, b, downsample } => (vec![a, b], downsample),
            Block::Bottleneck {
                a,
                b,
                c,
                downsample,
            } => (vec![a, b, c], downsample),
        };
        let mut s = size;
        for (i, cb) in convs.iter().enumerate() {
            let shape = cb.conv.shape(format!("{prefix}.conv{}", i + 1), s);
            s = shape.out_size();
            out.push(shape);
        }
        if let Some(d) = downsample {
            out.push(d.conv.shape(format!("{prefix}.downsample.0"), size));
        }
        s
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (true, Block::Basic { a, b, downsample }) = (train, self) {
            // One op for the whole block: its inner gradients stay out of candle's autograd.
            let (y, stats) = fer_kernels::basic_block_train(
                x,
                a.args(),
                b.args(),
                downsample.as_ref().map(ConvBn::args),
                crate::bn::EPS,
            )?;
            let bns = [Some(a), Some(b), downsample.as_ref()]
                .into_iter()
                .flatten();
            for (unit, stats) in bns.zip(stats) {
                unit.bn.update_running(stats)?;
            }
            return Ok(y);
        }
        let (y, downsample) = match self {
            Block::Basic { a, b, downsample } => {
                let y = a.forward_relu(x, train)?;
                (b.forward(&y, train)?, downsample)
            }
            Block::Bottleneck {
                a,
                b,
                c,
                downsample,
            } => {
                let y = a.forward_relu(x, train)?;
                let y = b.forward_relu(&y, train)?;
                (c.forward(&y, train)?, downsample)
            }
        };
        let identity = match downsample {
            Some(d) => d.forward(x, train)?,
            None => x.clone(),
        };
        fer_kernels::add_relu(&y, &identity)
    }
}

fn downsample(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Option<ConvBn>> {
    if stride == 1 && c_in == c_out {
        return Ok(None);
    }
    Ok(Some(ConvBn {
        conv: conv(c_in, c_out, 1, stride, 0, vb.pp("downsample.0"))?,
        bn: bn(c_out, vb.pp("downsample.1"))?,
    }))
}

/// A torchvision-layout ResNet trunk (no `fc`) that returns the maps of the tapped stages.
pub struct ResNet {
    stem: ConvBn,
    max_pool: bool,
    /// Only the stages up to the deepest tap are built: deeper ones would get no gradient.
    stages: Vec<Vec<Block>>,
    taps: Vec<usize>,
    tap_channels: Vec<usize>,
}

impl ResNet {
    /// Builds the trunk under `vb` (torchvision names: `conv1`, `bn1`, `layer1.0.conv1`, ...).
    /// The config must be valid (see [`BackboneConfig::validate`]).
    pub fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let stem_c = cfg.channels(64);
        let (stem, max_pool) = match cfg.stem {
            Stem::Imagenet => (conv(3, stem_c, 7, 2, 3, vb.pp("conv1"))?, true),
            Stem::Small => (
                conv(3, stem_c, 3, cfg.stem_stride, 1, vb.pp("conv1"))?,
                false,
            ),
        };
        let stem = ConvBn {
            conv: stem,
            bn: bn(stem_c, vb.pp("bn1"))?,
        };
        let taps = cfg.tap_stages();
        let deepest = *taps.iter().max().expect("validated: taps non-empty");
        let (blocks, bottleneck) = match cfg.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            _ => ([3, 4, 6, 3], true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = stem_c;
        let mut stages = Vec::new();
        let mut stage_out = Vec::new();
        for (s, &n) in blocks.iter().enumerate().take(deepest + 1) {
            let planes = cfg.channels(64 << s);
            let vb_s = vb.pp(format!("layer{}", s + 1));
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                let vb_b = vb_s.pp(i.to_string());
                stage.push(if bottleneck {
                    Block::bottleneck(c_in, planes, stride, vb_b)?
                } else {
                    Block::basic(c_in, planes, stride, vb_b)?
                });
                c_in = planes * expansion;
            }
            stages.push(stage);
            stage_out.push(c_in);
        }
        let tap_channels = taps.iter().map(|&t| stage_out[t]).collect();
        Ok(Self {
            stem,
            max_pool,
            stages,
            taps,
            tap_channels,
        })
    }

    /// Channels of each tapped map, in tap order.
    pub fn tap_channels(&self) -> &[usize] {
        &self.tap_channels
    }

    /// Every conv the trunk runs on `size x size` images, in execution order (a block's
    /// downsample after its main convs), with torchvision's weight names as labels.
    pub fn conv_shapes(&self, size: usize) -> Vec<ConvShape> {
        let stem = self.stem.conv.shape("conv1".into(), size);
        let mut s = stem.out_size();
        if self.max_pool {
            s = s.div_ceil(2);
        }
        let mut out = vec![stem];
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                s = block.shapes(&format!("layer{}.{j}", i + 1), s, &mut out);
            }
        }
        out
    }

    /// `x`: `[B, 3, S, S]`. Returns the tapped maps, shallow to deep. `train` selects batch
    /// statistics (and updates the running ones) in every BatchNorm.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut x = if self.max_pool {
            self.stem.forward_relu_pool(x, train)?
        } else {
            self.stem.forward_relu(x, train)?
        };
        let mut out = Vec::with_capacity(self.taps.len());
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x, train)?;
            }
            if self.taps.contains(&s) {
                out.push(x.clone());
            }
        }
        Ok(out)
    }
}

/// Global average pool `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}
