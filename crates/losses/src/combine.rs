//! The per-stage combination of the categorical and dimensional losses.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::ce::cross_entropy;
use crate::error::{LossError, Result};
use crate::regression::va_loss;

/// Which loss a training step optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Stage 1 of two-stage training: `CE (+ aux_weight * CE_aux)`.
    Categorical,
    /// Stage 2 of two-stage training: `L_va + lambda * CE` (`+ aux_weight * CE_aux` when
    /// [`LossConfig::aux_in_stage2`]).
    Dimensional,
    /// One-stage ablation with both tasks: `L_va + lambda * CE (+ aux_weight * CE_aux)`.
    Joint,
    /// Ablation without the categorical task: `L_va` only (class logits and aux logits unused).
    VaOnly,
}

impl Stage {
    pub fn uses_classes(self) -> bool {
        !matches!(self, Stage::VaOnly)
    }

    pub fn uses_va(self) -> bool {
        !matches!(self, Stage::Categorical)
    }
}

/// Loss settings (a section of the training config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of the cross-entropy next to the VA loss in the dimensional and joint stages.
    pub lambda: f64,
    /// Per-class cross-entropy weights (`K` entries), e.g. from [`inverse_frequency_weights`](crate::inverse_frequency_weights).
    pub class_weights: Option<Vec<f32>>,
    /// PyTorch-style label smoothing in `[0, 1]`.
    pub label_smoothing: f64,
    /// Weight of the auxiliary head's cross-entropy. It only counts when the model passes auxiliary
    /// logits, so 1.0 is a safe default: a model built without the head (e.g. from pretrained
    /// weights) is unaffected.
    pub aux_weight: f64,
    /// Whether stage 2 keeps the auxiliary cross-entropy. The head exists to get a from-scratch
    /// backbone learning in stage 1; stage 2 starts from trained weights.
    pub aux_in_stage2: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            lambda: 0.5,
            class_weights: None,
            label_smoothing: 0.0,
            aux_weight: 1.0,
            aux_in_stage2: true,
        }
    }
}

impl LossConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f64| {
            Err(LossError::Config(format!(
                "loss.{name} = {v} is out of range"
            )))
        };
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad("lambda", self.lambda);
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", self.label_smoothing);
        }
        if !(self.aux_weight.is_finite() && self.aux_weight >= 0.0) {
            return bad("aux_weight", self.aux_weight);
        }
        if let Some(w) = &self.class_weights {
            if let Some(v) = w.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(LossError::Config(format!(
                    "loss.class_weights contains {v}: weights must be finite and >= 0"
                )));
            }
        }
        Ok(())
    }
}

/// The categorical side of a batch.
#[derive(Clone, Copy, Debug)]
pub struct ClassInputs<'a> {
    /// `[B, K]` class logits of the main head.
    pub logits: &'a Tensor,
    /// `[B, K]` logits of the auxiliary head; its CE joins the loss when given (the model
    /// computes them in eval mode too, the trainer passes them in training steps).
    pub aux_logits: Option<&'a Tensor>,
    /// `[B]` i64 targets, `-1` = no class.
    pub targets: &'a Tensor,
}

/// The dimensional side of a batch (all `[B]`).
#[derive(Clone, Copy, Debug)]
pub struct VaInputs<'a> {
    pub valence_pred: &'a Tensor,
    pub arousal_pred: &'a Tensor,
    pub valence: &'a Tensor,
    pub arousal: &'a Tensor,
    /// 1 where the sample has valence/arousal labels, 0 where not.
    pub mask: &'a Tensor,
}

/// The total loss of a step and its unweighted parts, for logging.
#[derive(Debug)]
pub struct LossParts {
    /// The scalar to call `backward` on.
    pub total: Tensor,
    /// Main-head cross-entropy, when the stage uses it.
    pub ce: Option<f64>,
    /// `L_va`, when the stage uses it.
    pub va: Option<f64>,
    /// Auxiliary-head cross-entropy, when the stage uses it and auxiliary logits were given.
    pub aux: Option<f64>,
    /// Samples of the batch with a class target (weights for epoch averages of `ce`/`aux`).
    pub ce_samples: usize,
    /// Samples of the batch with valence/arousal labels (weights for epoch averages of `va`).
    pub va_samples: usize,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Computes the loss of `stage` (see [`Stage`] for the formulas).
///
/// The inputs the stage needs must be given: `class` for all but [`Stage::VaOnly`], `va` for all
/// but [`Stage::Categorical`]; the others are ignored.
pub fn stage_loss(
    stage: Stage,
    cfg: &LossConfig,
    class: Option<ClassInputs<'_>>,
    va: Option<VaInputs<'_>>,
) -> Result<LossParts> {
    cfg.validate()?;
    let mut terms: Vec<Tensor> = Vec::with_capacity(3);
    let (mut ce_part, mut va_part, mut aux_part) = (None, None, None);
    let (mut ce_samples, mut va_samples) = (0, 0);

    if stage.uses_va() {
        let v = va.ok_or_else(|| {
            LossError::Config(format!("stage {stage:?} needs valence/arousal inputs"))
        })?;
        let l = va_loss(v.valence_pred, v.arousal_pred, v.valence, v.arousal, v.mask)?;
        va_part = Some(scalar(&l)?);
        va_samples = count_ones(v.mask)?;
        terms.push(l);
    }
    if stage.uses_classes() {
        let c = class.ok_or_else(|| {
            LossError::Config(format!("stage {stage:?} needs class logits and targets"))
        })?;
        let weights = match &cfg.class_weights {
            Some(w) => Some(
                Tensor::from_slice(w, w.len(), c.logits.device())?.to_dtype(c.logits.dtype())?,
            ),
            None => None,
        };
        let ce = cross_entropy(c.logits, c.targets, weights.as_ref(), cfg.label_smoothing)?;
        ce_part = Some(scalar(&ce)?);
        ce_samples = c
            .targets
            .ge(0i64)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()? as usize;
        let ce_weight = if stage == Stage::Categorical {
            1.0
        } else {
            cfg.lambda
        };
        terms.push((ce * ce_weight)?);
        let aux_here = stage != Stage::Dimensional || cfg.aux_in_stage2;
        if let Some(aux_logits) = c.aux_logits.filter(|_| aux_here) {
            let aux = cross_entropy(aux_logits, c.targets, weights.as_ref(), cfg.label_smoothing)?;
            aux_part = Some(scalar(&aux)?);
            terms.push((aux * cfg.aux_weight)?);
        }
    }
    let mut terms = terms.into_iter();
    let first = terms
        .next()
        .ok_or_else(|| LossError::Config(format!("stage {stage:?} has no loss term")))?;
    let total = terms.try_fold(first, |acc, t| acc + t)?;
    Ok(LossParts {
        total,
        ce: ce_part,
        va: va_part,
        aux: aux_part,
        ce_samples,
        va_samples,
    })
}

fn count_ones(mask: &Tensor) -> Result<usize> {
    Ok(mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize)
}
