use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::RnnKind;

/// One direction of a one-layer PyTorch `nn.LSTM` / `nn.GRU`.
#[derive(Debug, Clone)]
pub(crate) struct Direction {
    kind: RnnKind,
    hidden: usize,
    /// `[G*h, d]`, `[G*h, h]`, `[G*h]`, `[G*h]` with G = 4 (LSTM) or 3 (GRU).
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

impl Direction {
    /// `suffix` is `""` for the forward direction and `"_reverse"` for the backward one.
    pub(crate) fn new(
        kind: RnnKind,
        input: usize,
        hidden: usize,
        suffix: &str,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let gates = kind.gates() * hidden;
        // PyTorch initialises every RNN parameter from uniform(-1/sqrt(h), 1/sqrt(h)).
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let get = |shape: &[usize], name: &str| {
            vb.get_with_hints(shape, &format!("{name}_l0{suffix}"), init)
        };
        Ok(Self {
            kind,
            hidden,
            w_ih: get(&[gates, input], "weight_ih")?,
            w_hh: get(&[gates, hidden], "weight_hh")?,
            b_ih: get(&[gates], "bias_ih")?,
            b_hh: get(&[gates], "bias_hh")?,
        })
    }

    /// Runs over `x: [B, L, d]` in time order (`reverse = false`) or from the last step to the
    /// first; returns the hidden state of every step at that step's position, `[B, L, h]`.
    pub(crate) fn run(&self, x: &Tensor, reverse: bool) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        // The input projections of all steps do not depend on the recurrence: one matmul.
        let gx = x
            .reshape((b * l, d))?
            .matmul(&self.w_ih.t()?)?
            .broadcast_add(&self.b_ih)?
            .reshape((b, l, ()))?;
        let zeros = Tensor::zeros((b, self.hidden), x.dtype(), x.device())?;
        let (mut h, mut c) = (zeros.clone(), zeros);
        let mut outs = vec![None; l];
        let steps: Vec<usize> = if reverse {
            (0..l).rev().collect()
        } else {
            (0..l).collect()
        };
        for t in steps {
            let gx_t = gx.narrow(1, t, 1)?.squeeze(1)?;
            let gh = h.matmul(&self.w_hh.t()?)?.broadcast_add(&self.b_hh)?;
            h = match self.kind {
                RnnKind::Lstm => {
                    let (h_new, c_new) = self.lstm_step(&gx_t, &gh, &c)?;
                    c = c_new;
                    h_new
                }
                RnnKind::Gru => self.gru_step(&gx_t, &gh, &h)?,
            };
            outs[t] = Some(h.clone());
        }
        let outs: Vec<Tensor> = outs.into_iter().flatten().collect();
        Tensor::stack(&outs, 1)
    }

    /// Gate order (i, f, g, o): `c' = f*c + i*g`, `h' = o*tanh(c')`, fused in one op by
    /// fer-kernels (candle's ops where its kernel does not run).
    fn lstm_step(&self, gx: &Tensor, gh: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        fer_kernels::lstm_cell(gx, gh, c)
    }

    /// Gate order (r, z, n): `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`,
    /// `h' = (1 - z)*n + z*h`, fused in one op by fer-kernels.
    fn gru_step(&self, gx: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
        fer_kernels::gru_cell(gx, gh, h)
    }
}
