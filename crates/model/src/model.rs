//! The assembled 2Att-2Mt: backbone -> position attention per tap -> Bi-RNN -> layer
//! self-attention -> categorical and valence/arousal heads.

use candle_core::{Module, Result as CResult, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use fer_attention::{GlobalPool, LayerSelfAttention, PositionAttention, PositionOutput};
use fer_birnn::BiRnn;

use crate::config::ModelConfig;
use crate::resnet::{global_avg_pool, ResNet};
use crate::Result;

/// PyTorch's `nn.Linear` initialisation: weight and bias uniform in +-1/sqrt(fan_in).
pub(crate) fn linear(c_in: usize, c_out: usize, vb: VarBuilder) -> CResult<Linear> {
    let bound = 1.0 / (c_in as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((c_out, c_in), "weight", init)?;
    let b = vb.get_with_hints(c_out, "bias", init)?;
    Ok(Linear::new(w, Some(b)))
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Expression logits `[B, K]`; `None` in the va-only mode.
    pub logits: Option<Tensor>,
    /// Valence in [-1, 1], `[B]`.
    pub valence: Tensor,
    /// Arousal in [-1, 1], `[B]`.
    pub arousal: Tensor,
    /// Position attention of each tap, `[B, H_l, W_l]`, shallow to deep.
    pub alpha: Vec<Tensor>,
    /// Layer attention `[B, L]`; `None` with `no_att2`.
    pub beta: Option<Tensor>,
    /// Categorical representation `[B, cat_hidden]`; `None` in the va-only mode.
    pub c: Option<Tensor>,
    /// Logits of the auxiliary head (a training aid, not a prediction); `None` unless configured.
    pub aux_logits: Option<Tensor>,
}

enum Att1 {
    Position(PositionAttention),
    Global(GlobalPool),
}

impl Att1 {
    fn forward(&self, f: &Tensor) -> CResult<PositionOutput> {
        match self {
            Att1::Position(a) => a.forward(f),
            Att1::Global(g) => g.forward(f),
        }
    }
}

struct Att2 {
    rnn: BiRnn,
    att: LayerSelfAttention,
}

struct CatHead {
    fc: Linear,
    out: Linear,
}

/// The 2Att-2Mt model. Weight names: `backbone.*`, `att1.{i}.*`, `rnn.*`, `att2.*`, `cat_fc`,
/// `cat_out`, `va_fc`, `va_out`, `aux_head` (see the crate docs).
pub struct TwoAttTwoMt {
    cfg: ModelConfig,
    backbone: ResNet,
    att1: Vec<Att1>,
    att2: Option<Att2>,
    cat: Option<CatHead>,
    va_fc: Linear,
    va_out: Linear,
    aux_head: Option<Linear>,
}

impl TwoAttTwoMt {
    /// Builds (or, with a VarBuilder over existing weights, loads) the model.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let backbone = ResNet::new(&cfg.backbone, vb.pp("backbone"))?;
        let att1 = backbone
            .tap_channels()
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let vb = vb.pp(format!("att1.{i}"));
                Ok(if cfg.no_att1 {
                    Att1::Global(GlobalPool::new(c, &cfg.attention, vb)?)
                } else {
                    Att1::Position(PositionAttention::new(c, &cfg.attention, vb)?)
                })
            })
            .collect::<CResult<Vec<_>>>()?;
        let att2 = if cfg.no_att2 {
            None
        } else {
            Some(Att2 {
                rnn: BiRnn::new(cfg.attention.d, &cfg.rnn, vb.pp("rnn"))?,
                att: LayerSelfAttention::new(cfg.z_dim(), cfg.att2_width, vb.pp("att2"))?,
            })
        };
        let z = cfg.z_dim();
        let cat = if cfg.categorical {
            Some(CatHead {
                fc: linear(z, cfg.cat_hidden, vb.pp("cat_fc"))?,
                out: linear(cfg.cat_hidden, cfg.num_classes, vb.pp("cat_out"))?,
            })
        } else {
            None
        };
        let va_in = if cfg.categorical {
            z + cfg.cat_hidden + cfg.num_classes
        } else {
            z
        };
        let va_fc = linear(va_in, cfg.va_hidden, vb.pp("va_fc"))?;
        let va_out = linear(cfg.va_hidden, 2, vb.pp("va_out"))?;
        let aux_head = if cfg.aux_head {
            let c_last = *backbone.tap_channels().last().expect("validated: taps");
            Some(linear(c_last, cfg.num_classes, vb.pp("aux_head"))?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            att1,
            att2,
            cat,
            va_fc,
            va_out,
            aux_head,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// `x`: normalised images `[B, 3, S, S]`. `train` puts every BatchNorm in training mode
    /// (batch statistics, running statistics updated in place).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<ModelOutput> {
        // Backbone: one feature map per tapped stage, shallow to deep.
        let maps = self.backbone.forward(x, train)?;

        // First level: a layer feature v_l (and a position map alpha_l) per tap.
        let mut vs = Vec::with_capacity(maps.len());
        let mut alpha = Vec::with_capacity(maps.len());
        for (att, f) in self.att1.iter().zip(&maps) {
            let o = att.forward(f)?;
            vs.push(o.v);
            alpha.push(o.alpha);
        }
        let seq = Tensor::stack(&vs, 1)?; // [B, L, d]

        // Second level: Bi-RNN over layers, then self-attention (or the plain mean).
        let (z, beta) = match &self.att2 {
            Some(a) => {
                let h = a.rnn.forward(&seq)?;
                let o = a.att.forward(&h)?;
                (o.z, Some(o.beta))
            }
            None => (seq.mean(1)?, None),
        };

        // Heads: categorical first, its representation and probabilities feed valence/arousal.
        let (logits, c, va_in) = match &self.cat {
            Some(head) => {
                let c = head.fc.forward(&z)?.relu()?;
                let logits = head.out.forward(&c)?;
                let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let va_in = Tensor::cat(&[&z, &c, &p], 1)?;
                (Some(logits), Some(c), va_in)
            }
            None => (None, None, z),
        };
        let va = self
            .va_out
            .forward(&self.va_fc.forward(&va_in)?.relu()?)?
            .tanh()?;
        let valence = va.narrow(1, 0, 1)?.squeeze(1)?;
        let arousal = va.narrow(1, 1, 1)?.squeeze(1)?;

        let aux_logits = match &self.aux_head {
            Some(head) => {
                let last = maps.last().expect("at least one tap");
                Some(head.forward(&global_avg_pool(last)?)?)
            }
            None => None,
        };

        Ok(ModelOutput {
            logits,
            valence,
            arousal,
            alpha,
            beta,
            c,
            aux_logits,
        })
    }
}
