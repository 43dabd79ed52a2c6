//! One training epoch: batches through the model, the stage's loss, the optimizer step, and the
//! epoch's record.

use std::io::IsTerminal;
use std::time::Instant;

use candle_core::DType;
use fer_data::loader::Loader;
use fer_losses::{stage_loss, ClassInputs, LossParts, Metrics, VaInputs};

use super::{Ctx, TrainArgs};
use crate::clip::clip_grad_norm;
use crate::optim::Optimizer;
use crate::plan::StagePlan;
use crate::schedule::WarmupCosine;
use crate::state::{EpochRecord, TrainState};
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct EpochStats {
    loss: f64,
    n: f64,
    ce: (f64, f64),
    va: (f64, f64),
    aux: (f64, f64),
    lr: f64,
    images: usize,
    seconds: f64,
}

/// Last finite values, for the message when a loss turns NaN.
#[derive(Default)]
struct LastFinite {
    step: Option<usize>,
    loss: f64,
    ce: Option<f64>,
    va: Option<f64>,
    lr: f64,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn train_epoch(
    ctx: &Ctx,
    plan: StagePlan,
    loader: &Loader,
    opt: &mut Optimizer,
    sched: &WarmupCosine,
    base_lr: f64,
    state: &mut TrainState,
    args: &TrainArgs,
) -> Result<EpochStats> {
    let mut stats = EpochStats::default();
    let t0 = Instant::now();
    let pb = fer_data::progress::bar(
        std::io::stderr().is_terminal(),
        loader.batches_per_epoch() as u64,
        format!("{} epoch {}", plan.name, state.epoch + 1),
        fer_data::progress::Unit::Items("batches"),
    );
    let vars = opt.vars();
    let mut last = LastFinite::default();
    for batch in loader.epoch(state.epoch) {
        let batch = batch?;
        let b = batch.len();
        let out = ctx.model.forward(&batch.images, true)?;
        let class = out.logits.as_ref().map(|logits| ClassInputs {
            logits,
            aux_logits: out.aux_logits.as_ref(),
            targets: &batch.expression,
        });
        let va = Some(VaInputs {
            valence_pred: &out.valence,
            arousal_pred: &out.arousal,
            valence: &batch.valence,
            arousal: &batch.arousal,
            mask: &batch.va_mask,
        });
        let LossParts {
            mut total,
            ce,
            va: lva,
            aux,
            ce_samples,
            va_samples,
        } = stage_loss(plan.loss, &ctx.cfg.loss, class, va)?;
        if args.fault_nan_step == Some(state.step) {
            total = total.affine(f64::NAN, 0.0)?;
        }
        let loss = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let lr = base_lr * sched.factor(state.step);
        if !loss.is_finite() {
            pb.finish_and_clear();
            return Err(non_finite("loss", loss, plan, state, ce, lva, &last));
        }
        let mut grads = total.backward()?;
        if let Some(max) = ctx.cfg.clip_grad_norm {
            let norm = clip_grad_norm(&mut grads, &vars, max)?;
            if !norm.is_finite() {
                pb.finish_and_clear();
                return Err(non_finite(
                    "gradient norm",
                    norm,
                    plan,
                    state,
                    ce,
                    lva,
                    &last,
                ));
            }
        }
        opt.step(&grads, lr)?;
        state.step += 1;
        last = LastFinite {
            step: Some(state.step),
            loss,
            ce,
            va: lva,
            lr,
        };
        stats.loss += loss * b as f64;
        stats.n += b as f64;
        if let Some(c) = ce {
            stats.ce.0 += c * ce_samples as f64;
            stats.ce.1 += ce_samples as f64;
        }
        if let Some(v) = lva {
            stats.va.0 += v * va_samples as f64;
            stats.va.1 += va_samples as f64;
        }
        if let Some(a) = aux {
            stats.aux.0 += a * ce_samples as f64;
            stats.aux.1 += ce_samples as f64;
        }
        stats.lr = lr;
        stats.images += b;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} img/s",
            stats.loss / stats.n,
            lr,
            stats.images as f64 / secs
        ));
        pb.inc(1);
        let done = pb.position() as usize;
        let spe = loader.batches_per_epoch();
        if pb.is_hidden() && done < spe && done.is_multiple_of((spe / 4).max(1)) {
            // Plain progress lines when stderr is not a terminal (logs, CI).
            eprintln!(
                "{} epoch {}: {done}/{spe} batches, loss {:.4}, lr {:.2e}, {:.0} img/s",
                plan.name,
                state.epoch + 1,
                stats.loss / stats.n,
                lr,
                stats.images as f64 / secs
            );
        }
    }
    pb.finish_and_clear();
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

fn non_finite(
    what: &str,
    value: f64,
    plan: StagePlan,
    state: &TrainState,
    ce: Option<f64>,
    va: Option<f64>,
    last: &LastFinite,
) -> Error {
    let last_txt = match last.step {
        Some(s) => format!(
            "last finite values: step {s}, loss {:.6} (ce {}, va {}), lr {:.3e}",
            last.loss,
            fmt_opt(last.ce),
            fmt_opt(last.va),
            last.lr
        ),
        None => "no finite step before it in this epoch".into(),
    };
    Error::NonFinite(format!(
        "non-finite {what} ({value}) in {} ({:?}), epoch {}, step {} (ce {}, va {}); {last_txt}. \
         Lower the learning rate or enable clip_grad_norm.",
        plan.name,
        plan.loss,
        state.epoch + 1,
        state.step,
        fmt_opt(ce),
        fmt_opt(va),
    ))
}

pub(super) fn stage_score(plan: StagePlan, m: &Metrics) -> f64 {
    if plan.scores_ccc() {
        if let (Some(v), Some(a)) = (&m.valence, &m.arousal) {
            return 0.5 * (v.ccc + a.ccc);
        }
    }
    m.accuracy.unwrap_or(f64::NEG_INFINITY)
}

fn mean(p: (f64, f64)) -> Option<f64> {
    (p.1 > 0.0).then(|| p.0 / p.1)
}

pub(super) fn record(
    plan: StagePlan,
    state: &TrainState,
    s: &EpochStats,
    m: &Metrics,
    score: f64,
    best: bool,
    seconds: f64,
) -> EpochRecord {
    EpochRecord {
        stage: plan.name.to_string(),
        epoch: state.epoch,
        step: state.step,
        lr: s.lr,
        train_loss: s.loss / s.n.max(1.0),
        train_ce: mean(s.ce),
        train_va: mean(s.va),
        train_aux: mean(s.aux),
        val_accuracy: m.accuracy,
        val_macro_f1: m.macro_f1,
        val_valence_ccc: m.valence.as_ref().map(|r| r.ccc),
        val_arousal_ccc: m.arousal.as_ref().map(|r| r.ccc),
        val_valence_rmse: m.valence.as_ref().map(|r| r.rmse),
        val_arousal_rmse: m.arousal.as_ref().map(|r| r.rmse),
        val_predicted: m
            .confusion
            .as_ref()
            .map(|cm| crate::report::predicted_counts(cm)),
        collapse: None,
        score,
        best,
        seconds,
        images_per_second: s.images as f64 / s.seconds.max(1e-9),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

pub(super) fn log_epoch(r: &EpochRecord, epochs: usize) {
    eprintln!(
        "{} epoch {}/{}: loss {:.4} | val acc {} f1 {} ccc v {} a {} | {:.0} img/s, {:.1}s{}",
        r.stage,
        r.epoch,
        epochs,
        r.train_loss,
        fmt_opt(r.val_accuracy),
        fmt_opt(r.val_macro_f1),
        fmt_opt(r.val_valence_ccc),
        fmt_opt(r.val_arousal_ccc),
        r.images_per_second,
        r.seconds,
        if r.best { " *" } else { "" }
    );
}
