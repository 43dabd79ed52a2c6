//! BatchNorm with torchvision's names and PyTorch's training semantics, on `fer_kernels`.

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

pub(crate) const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// `weight`, `bias`, `running_mean`, `running_var` under the given prefix. Training mode
/// normalises by the batch's statistics and moves the running ones (PyTorch's rule: the
/// running variance takes the unbiased estimate); eval mode uses the running ones.
pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm {
    pub(crate) fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        // The VarMap's tensors are variables: `from_tensor` shares their storage, so `set`
        // updates the stored running statistics in place.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(c, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(c, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
        })
    }

    /// The scale and shift (`gamma`, `beta`).
    pub(crate) fn affine(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// Conv, then this BatchNorm with its running statistics (+ ReLU), as one op.
    pub(crate) fn eval_after_conv(
        &self,
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Result<Tensor> {
        let (mean, var) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
        fer_kernels::conv_bn_eval(
            x,
            w,
            stride,
            padding,
            &self.weight,
            &self.bias,
            mean,
            var,
            EPS,
            relu,
        )
    }

    /// Training mode on `conv2d(x, w, stride, padding)`, fused with the conv where the kernels
    /// run (`fer_kernels::conv_bn_train`).
    pub(crate) fn train_after_conv(
        &self,
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Result<Tensor> {
        let (y, stats) =
            fer_kernels::conv_bn_train(x, w, stride, padding, &self.weight, &self.bias, EPS, relu)?;
        self.update_running(stats)?;
        Ok(y)
    }

    /// [`Self::train_after_conv`] with the ReLU, then the stem's 3x3 stride-2 max-pool
    /// (`fer_kernels::conv_bn_relu_pool_train`).
    pub(crate) fn train_relu_pool_after_conv(
        &self,
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let (y, stats) = fer_kernels::conv_bn_relu_pool_train(
            x,
            w,
            stride,
            padding,
            &self.weight,
            &self.bias,
            EPS,
        )?;
        self.update_running(stats)?;
        Ok(y)
    }

    /// Moves the running averages towards a batch's statistics.
    pub(crate) fn update_running(&self, stats: fer_kernels::BatchStats) -> Result<()> {
        let m = stats.count as f64;
        let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        let mean =
            ((self.running_mean.as_tensor() * (1.0 - MOMENTUM))? + (stats.mean * MOMENTUM)?)?;
        let var = ((self.running_var.as_tensor() * (1.0 - MOMENTUM))?
            + (stats.var * (MOMENTUM * unbiased))?)?;
        self.running_mean.set(&mean)?;
        self.running_var.set(&var)
    }
}
