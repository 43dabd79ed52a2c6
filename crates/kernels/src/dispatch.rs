//! The one place that decides where an op runs.
//!
//! Every public op asks [`backend`] and runs our CPU kernel, our CUDA kernel or its candle twin
//! (the same maths with candle's generic ops); callers never see the choice. The switch is the
//! environment variable `FER_KERNELS=candle` (read once) or [`set_enabled`].

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

/// Where an op's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Our CPU kernel (f32 on the CPU, kernels on).
    Cpu,
    /// Our CUDA kernel (f32 on a CUDA device, built with `cuda`, kernels on, and the op has one).
    Cuda,
    /// The op's candle twin: other dtypes and devices, or kernels switched off.
    Candle,
}

/// Every public op of the crate, named as its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Conv2d,
    BatchNormTrain,
    BatchNormEval,
    ConvBnTrain,
    ConvBnReluPoolTrain,
    ConvBnEval,
    MaxPool3x3S2,
    AddRelu,
    BasicBlockTrain,
    PositionProjection,
    PositionAttention,
    LstmCell,
    GruCell,
}

impl Op {
    /// All ops, in the order the crate README lists them.
    pub const ALL: [Op; 13] = [
        Op::Conv2d,
        Op::BatchNormTrain,
        Op::BatchNormEval,
        Op::ConvBnTrain,
        Op::ConvBnReluPoolTrain,
        Op::ConvBnEval,
        Op::MaxPool3x3S2,
        Op::AddRelu,
        Op::BasicBlockTrain,
        Op::PositionProjection,
        Op::PositionAttention,
        Op::LstmCell,
        Op::GruCell,
    ];

    /// The public function's name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Conv2d => "conv2d",
            Op::BatchNormTrain => "batch_norm_train",
            Op::BatchNormEval => "batch_norm_eval",
            Op::ConvBnTrain => "conv_bn_train",
            Op::ConvBnReluPoolTrain => "conv_bn_relu_pool_train",
            Op::ConvBnEval => "conv_bn_eval",
            Op::MaxPool3x3S2 => "max_pool_3x3_s2",
            Op::AddRelu => "add_relu",
            Op::BasicBlockTrain => "basic_block_train",
            Op::PositionProjection => "position_projection",
            Op::PositionAttention => "position_attention",
            Op::LstmCell => "lstm_cell",
            Op::GruCell => "gru_cell",
        }
    }

    /// Whether a CUDA kernel of ours exists (on CUDA the others run their candle twin).
    pub fn has_cuda_kernel(self) -> bool {
        matches!(
            self,
            Op::Conv2d | Op::PositionAttention | Op::LstmCell | Op::GruCell
        )
    }

    /// How many leading inputs our kernels need as 4-D `[B, C, H, W]` maps (the twins take any
    /// rank candle's ops take, e.g. a BatchNorm over `[B, C]`).
    fn maps(self) -> usize {
        match self {
            Op::Conv2d | Op::ConvBnTrain | Op::ConvBnReluPoolTrain | Op::ConvBnEval => 2,
            Op::BasicBlockTrain => 3,
            Op::BatchNormTrain | Op::BatchNormEval | Op::MaxPool3x3S2 => 1,
            _ => 0,
        }
    }
}

/// Where `op` runs on these inputs: our kernels when switched on, every input f32, the maps
/// 4-D and all inputs on the CPU (or all on a CUDA device, for the ops with a CUDA kernel);
/// the candle twin otherwise.
pub fn backend(op: Op, inputs: &[&Tensor]) -> Backend {
    let ours = enabled()
        && inputs.iter().all(|t| t.dtype() == DType::F32)
        && inputs.iter().take(op.maps()).all(|t| t.rank() == 4);
    if !ours {
        Backend::Candle
    } else if inputs.iter().all(|t| t.device().is_cpu()) {
        Backend::Cpu
    } else if cfg!(feature = "cuda")
        && op.has_cuda_kernel()
        && inputs.iter().all(|t| t.device().is_cuda())
    {
        Backend::Cuda
    } else {
        Backend::Candle
    }
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the custom kernels are used (default yes; `FER_KERNELS=candle` turns them off).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = !matches!(
                std::env::var("FER_KERNELS").as_deref(),
                Ok("candle" | "off" | "0")
            );
            // A concurrent `set_enabled` wins over the environment.
            let _ = STATE.compare_exchange(
                UNSET,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Turns the custom kernels on or off for the whole process (overrides `FER_KERNELS`).
pub fn set_enabled(on: bool) {
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}
