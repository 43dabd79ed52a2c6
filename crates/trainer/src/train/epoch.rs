//! One training epoch: batches through the model, the stage's loss, the optimizer step, and the
//! epoch's record.

use std::io::IsTerminal;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use fer_data::loader::{Batch, Loader, Part};
use fer_losses::{stage_loss, ClassInputs, LossParts, Metrics, VaInputs};

use super::{Ctx, TrainArgs};
use crate::clip::clip_grad_norm;
use crate::ema::Ema;
use crate::grads;
use crate::optim::Optimizer;
use crate::plan::StagePlan;
use crate::schedule::WarmupCosine;
use crate::state::{EpochRecord, TrainState};
use crate::world::World;
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct EpochStats {
    /// The epoch's loss sums over every rank's samples.
    sums: StepSums,
    lr: f64,
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

/// Loss sums and sample counts (so that means are those of the global batch): one rank's for a
/// step, summed over the ranks in one call, then added up over the epoch.
#[derive(Default, Clone, Copy)]
struct StepSums {
    loss: f64,
    n: f64,
    ce: (f64, f64),
    va: (f64, f64),
    aux: (f64, f64),
}

impl StepSums {
    fn add(&mut self, p: &LossParts, loss: f64, n: usize) {
        let ce_n = p.ce_samples as f64;
        self.loss += loss * n as f64;
        self.n += n as f64;
        if let Some(c) = p.ce {
            self.ce = (self.ce.0 + c * ce_n, self.ce.1 + ce_n);
        }
        if let Some(v) = p.va {
            self.va = (
                self.va.0 + v * p.va_samples as f64,
                self.va.1 + p.va_samples as f64,
            );
        }
        if let Some(a) = p.aux {
            self.aux = (self.aux.0 + a * ce_n, self.aux.1 + ce_n);
        }
    }

    fn summed(self, world: &World) -> Result<StepSums> {
        if world.size() == 1 {
            return Ok(self);
        }
        let mut buf = [
            self.loss, self.n, self.ce.0, self.ce.1, self.va.0, self.va.1, self.aux.0, self.aux.1,
        ]
        .map(|v| v as f32);
        world.sum(&mut buf)?;
        let b = buf.map(f64::from);
        Ok(StepSums {
            loss: b[0],
            n: b[1],
            ce: (b[2], b[3]),
            va: (b[4], b[5]),
            aux: (b[6], b[7]),
        })
    }

    fn loss(&self) -> f64 {
        self.loss / self.n.max(1.0)
    }

    fn add_sums(&mut self, o: &StepSums) {
        self.loss += o.loss;
        self.n += o.n;
        self.ce = (self.ce.0 + o.ce.0, self.ce.1 + o.ce.1);
        self.va = (self.va.0 + o.va.0, self.va.1 + o.va.1);
        self.aux = (self.aux.0 + o.aux.0, self.aux.1 + o.aux.1);
    }
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
    mut ema: Option<&mut Ema>,
    args: &TrainArgs,
) -> Result<EpochStats> {
    let world = &ctx.world;
    let mut stats = EpochStats::default();
    let t0 = Instant::now();
    let pb = fer_data::progress::bar(
        world.is_root() && std::io::stderr().is_terminal(),
        loader.batches_per_epoch() as u64,
        format!("{} epoch {}", plan.name, state.epoch + 1),
        fer_data::progress::Unit::Items("batches"),
    );
    let vars = opt.vars();
    let micro = ctx.cfg.data.micro_batches;
    let mut last = LastFinite::default();
    for (k, batch) in loader.epoch(state.epoch).enumerate() {
        // This rank's part of the global batch, in `micro` pieces; each piece's gradient is
        // weighted by its share of the global batch, so the sum is the batch mean's gradient.
        let batch = batch?;
        let global = loader.whole_batch_len(k) as f64;
        let mut sums = StepSums::default();
        let mut grads: Option<GradStore> = None;
        for p in 0..micro {
            let range = Part {
                index: p,
                count: micro,
            }
            .range(batch.len());
            if range.is_empty() {
                continue;
            }
            let piece = batch.narrow(range.start, range.len())?;
            let (mut total, parts) = piece_loss(ctx, plan, &piece)?;
            if args.fault_nan_step == Some(state.step) {
                total = total.affine(f64::NAN, 0.0)?;
            }
            let loss = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            sums.add(&parts, loss, piece.len());
            let g = total.backward()?;
            let w = piece.len() as f64 / global;
            grads = Some(match grads {
                // A whole share's weight is applied with the rank sum (or on its own).
                None if micro == 1 => g,
                None => grads::accumulate(grads::empty()?, &g, &vars, w)?,
                Some(acc) => grads::accumulate(acc, &g, &vars, w)?,
            });
        }
        let step_weight = if micro == 1 {
            batch.len() as f64 / global
        } else {
            1.0
        };
        let mut grads = match grads {
            Some(g) => g,
            None => grads::empty()?,
        };
        let sums = sums.summed(world)?;
        let (loss, ce, lva) = (sums.loss(), mean(sums.ce), mean(sums.va));
        let lr = base_lr * sched.factor(state.step);
        // Every rank sees the same sums, so all stop together.
        if !loss.is_finite() {
            pb.finish_and_clear();
            return Err(non_finite("loss", loss, plan, state, ce, lva, &last));
        }
        world.sum_gradients(&mut grads, &vars, step_weight)?;
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
        if let Some(e) = ema.as_deref_mut() {
            e.update(state.step)?;
        }
        state.step += 1;
        last = LastFinite {
            step: Some(state.step),
            loss,
            ce,
            va: lva,
            lr,
        };
        stats.sums.add_sums(&sums);
        stats.lr = lr;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let (epoch_loss, images) = (stats.sums.loss(), stats.sums.n);
        pb.set_message(format!(
            "loss {epoch_loss:.4} lr {lr:.2e} {:.0} img/s",
            images / secs
        ));
        pb.inc(1);
        let done = k + 1;
        let spe = loader.batches_per_epoch();
        if world.is_root() && pb.is_hidden() && done < spe && done.is_multiple_of((spe / 4).max(1))
        {
            // Plain progress lines when stderr is not a terminal (logs, CI).
            eprintln!(
                "{} epoch {}: {done}/{spe} batches, loss {epoch_loss:.4}, lr {lr:.2e}, {:.0} img/s",
                plan.name,
                state.epoch + 1,
                images / secs
            );
        }
    }
    pb.finish_and_clear();
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// The stage's loss on a piece of a batch, and its parts.
fn piece_loss(ctx: &Ctx, plan: StagePlan, b: &Batch) -> Result<(Tensor, LossParts)> {
    let out = ctx.model.forward(&b.images, true)?;
    let class = out.logits.as_ref().map(|logits| ClassInputs {
        logits,
        aux_logits: out.aux_logits.as_ref(),
        targets: &b.expression,
    });
    let va = Some(VaInputs {
        valence_pred: &out.valence,
        arousal_pred: &out.arousal,
        valence: &b.valence,
        arousal: &b.arousal,
        mask: &b.va_mask,
    });
    let parts = stage_loss(plan.loss, &ctx.cfg.loss, class, va)?;
    Ok((parts.total.clone(), parts))
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
        train_loss: s.sums.loss(),
        train_ce: mean(s.sums.ce),
        train_va: mean(s.sums.va),
        train_aux: mean(s.sums.aux),
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
        raw_score: None,
        best,
        seconds,
        images_per_second: s.sums.n / s.seconds.max(1e-9),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

pub(super) fn log_epoch(r: &EpochRecord, epochs: usize) {
    eprintln!(
        "{} epoch {}/{}: loss {:.4} | val acc {} f1 {} ccc v {} a {}{} | {:.0} img/s, {:.1}s{}",
        r.stage,
        r.epoch,
        epochs,
        r.train_loss,
        fmt_opt(r.val_accuracy),
        fmt_opt(r.val_macro_f1),
        fmt_opt(r.val_valence_ccc),
        fmt_opt(r.val_arousal_ccc),
        r.raw_score.map_or(String::new(), |s| format!(
            " (moving average; weights {s:.4})"
        )),
        r.images_per_second,
        r.seconds,
        if r.best { " *" } else { "" }
    );
}
