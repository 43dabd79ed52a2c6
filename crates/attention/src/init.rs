use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// PyTorch's default for `nn.Linear` / `nn.Conv2d` weights and biases:
/// `kaiming_uniform_(a = sqrt(5))` reduces to uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same
/// bound as the bias. candle's own `linear`/`conv2d` draw weights from a normal with a ~2.4x
/// larger spread, so the layers here are built by hand.
pub(crate) fn torch_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A dense layer stored under `name.weight [out, in_shape...]` (and `name.bias [out]`), applied
/// as `x @ W^T + b` on the last dimension of `x`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    /// `[out, in]`, whatever trailing unit dims the stored tensor has (1x1 convs).
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// `stored_shape` is the shape the weight is saved with (`[out, in]` or `[out, in, 1, 1]`).
    pub(crate) fn new(
        in_dim: usize,
        out_dim: usize,
        stored_shape: &[usize],
        with_bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let init = torch_uniform(in_dim);
        let weight = vb
            .get_with_hints(stored_shape, "weight", init)?
            .reshape((out_dim, in_dim))?;
        let bias = if with_bias {
            Some(vb.get_with_hints(out_dim, "bias", init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub(crate) fn linear(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new(in_dim, out_dim, &[out_dim, in_dim], bias, vb)
    }

    pub(crate) fn conv1x1(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new(in_dim, out_dim, &[out_dim, in_dim, 1, 1], bias, vb)
    }

    /// The weight as `[out, in]`.
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`, or zeros for a layer without one.
    pub(crate) fn bias_or_zeros(&self) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(
                self.weight.dim(0)?,
                self.weight.dtype(),
                self.weight.device(),
            ),
        }
    }

    /// `x: [..., in] -> [..., out]`.
    /// The layer applied at every position of a map `[B, C, H, W]`: `[B, H*W, out]`, positions
    /// row-major over (i, j). One fused op on the CPU: the map is read in place, not transposed.
    pub(crate) fn positions(&self, f: &Tensor) -> Result<Tensor> {
        fer_kernels::position_projection(f, &self.weight, &self.bias_or_zeros()?)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D matmul over all leading positions: cheaper than a batched broadcast.
        let dims = x.dims();
        let (lead, in_dim) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let y = x.reshape((rows, in_dim[0]))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = lead.to_vec();
        out.push(y.dim(1)?);
        y.reshape(out)
    }
}
