//! What the kernels refuse. The ops live inside candle's autograd, so these travel wrapped in
//! `candle_core::Error` (`Error::wrap`); `downcast` recovers them.

/// A tensor a kernel cannot take.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("fer-kernels {op}: {what} must be 4-D [B, C, H, W], got {got:?}")]
    Rank {
        op: &'static str,
        what: &'static str,
        got: Vec<usize>,
    },
    #[error("fer-kernels conv2d: input {input:?} and weight {weight:?} do not fit (stride {stride}, padding {padding})")]
    ConvShapes {
        input: [usize; 4],
        weight: [usize; 4],
        stride: usize,
        padding: usize,
    },
    #[error(
        "fer-kernels batch_norm_train: {channels} channels but gamma {gamma:?}, beta {beta:?}"
    )]
    Affine {
        channels: usize,
        gamma: Vec<usize>,
        beta: Vec<usize>,
    },
    #[error(
        "fer-kernels batch_norm_eval: {channels} channels but gamma {gamma:?}, beta {beta:?}, running mean {mean:?}, running var {var:?} (each must be [{channels}])"
    )]
    EvalShapes {
        channels: usize,
        gamma: Vec<usize>,
        beta: Vec<usize>,
        mean: Vec<usize>,
        var: Vec<usize>,
    },
    #[error("fer-kernels max-pool: empty map {h}x{w}")]
    EmptyMap { h: usize, w: usize },
    #[error("fer-kernels add_relu: the residual sum needs equal shapes, got {a:?} and {b:?}")]
    AddShapes { a: Vec<usize>, b: Vec<usize> },
    #[error("fer-kernels position_attention: p {p:?} must be [B, N, d] with N, d >= 1, w {w:?} [a, d] with a >= 1, b {b:?} and v {v:?} [a]")]
    AttentionShapes {
        p: Vec<usize>,
        w: Vec<usize>,
        b: Vec<usize>,
        v: Vec<usize>,
    },
    #[error("fer-kernels position_projection: f {f:?} must be [B, C, H, W] with C, H, W >= 1, w {w:?} [d, C] with d >= 1, b {b:?} [d]")]
    ProjectionShapes {
        f: Vec<usize>,
        w: Vec<usize>,
        b: Vec<usize>,
    },
    #[error("fer-kernels {op}: gate pre-activations {gx:?} and {gh:?} must be [B, {gates}h] for a state {state:?} [B, h]")]
    CellShapes {
        op: &'static str,
        gates: usize,
        gx: Vec<usize>,
        gh: Vec<usize>,
        state: Vec<usize>,
    },
    #[error("fer-kernels: expected a contiguous f32 CPU tensor, got {0}")]
    Storage(String),
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::wrap(e)
    }
}
