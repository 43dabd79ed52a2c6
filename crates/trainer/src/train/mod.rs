//! The training loop: the stages of the plan, each a run of epochs with early stopping, every
//! epoch checkpointed so that a run can be resumed.
//!
//! `epoch.rs` trains one epoch, `save.rs` writes checkpoints and the history, `resume.rs`
//! decides where a run starts; the bookkeeping of best epochs and patience is
//! [`TrainState`]'s.

mod epoch;
mod resume;
mod save;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_data::manifest::Manifest;
use fer_model::{checkpoint, trainable_vars, TwoAttTwoMt};

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::evaluate::{evaluate_in, Evaluation, Tta};
use crate::init::SeededVarMap;
use crate::optim::Optimizer;
use crate::plan::{resolve, Labels, StagePlan};
use crate::run_folder::{self, RunLock};
use crate::schedule::WarmupCosine;
use crate::state::TrainState;
use crate::world::World;
use crate::{Error, Result};
use epoch::{log_epoch, record, stage_score, train_epoch};
pub use save::{best_name, BEST, LAST};
use save::{save, write_failed, write_history, OPTIM_PREFIX};

/// A training invocation.
pub struct TrainArgs {
    pub data: PathBuf,
    pub out: PathBuf,
    /// Ignored on resume unless it disagrees with the checkpoint's model (then an error).
    pub config: Option<TrainConfig>,
    pub resume: bool,
    pub device: Device,
    /// Stop (as if killed) after this many epochs of this invocation.
    pub stop_after_epochs: Option<usize>,
    /// Replace the loss of this step (within a stage) by NaN, to exercise the NaN stop.
    pub fault_nan_step: Option<usize>,
    /// The ranks of a data-parallel run ([`World::single`] for a plain one).
    pub world: Rc<World>,
}

/// How the invocation ended.
pub enum Outcome {
    Finished(Box<Finished>),
    Stopped { epochs_done: usize },
}

pub struct Finished {
    pub config: TrainConfig,
    pub stages: Vec<StagePlan>,
    pub notes: Vec<String>,
    pub state: TrainState,
    pub manifest: Manifest,
    pub model: TwoAttTwoMt,
    /// The final model on val, single crop and with flip TTA.
    pub val_eval: SplitEval,
    /// The final model on test, evaluated once after training; `None` without a test split.
    pub test_eval: Option<SplitEval>,
    pub val: Arc<Dataset>,
    /// Held until the report is written, so no second trainer writes the folder meanwhile
    /// (by rank 0, the one that writes; `None` on the other ranks).
    pub lock: Option<RunLock>,
}

/// One split's evaluation, single crop and with flip test-time augmentation.
pub struct SplitEval {
    pub single: Evaluation,
    pub flip: Evaluation,
}

impl SplitEval {
    pub fn run(
        world: &World,
        model: &TwoAttTwoMt,
        ds: Arc<Dataset>,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let (b, t) = (cfg.data.eval_batch_size, cfg.data.loader_threads);
        Ok(SplitEval {
            single: evaluate_in(world, model, ds.clone(), b, t, Tta::None, device)?,
            flip: evaluate_in(world, model, ds, b, t, Tta::Flip, device)?,
        })
    }
}

/// Everything the loop needs, built once.
struct Ctx {
    cfg: TrainConfig,
    stages: Vec<StagePlan>,
    manifest: Manifest,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    out: PathBuf,
    device: Device,
    varmap: VarMap,
    model: TwoAttTwoMt,
    world: Rc<World>,
}

fn open_split(data: &Path, split: &str) -> Result<Arc<Dataset>> {
    Ok(Arc::new(Dataset::open(&data.join(split))?))
}

pub fn load_manifest(data: &Path) -> Result<Manifest> {
    if !data.is_dir() {
        return Err(Error::Data(format!(
            "{}: no such prepared dataset folder (prepare one with `cargo xtask prepare-data`)",
            data.display()
        )));
    }
    Ok(fer_data::prepare::load_manifest(data)?)
}

pub fn train(args: TrainArgs) -> Result<Outcome> {
    let manifest = load_manifest(&args.data)?;
    let train = open_split(&args.data, "train")?;
    let val = open_split(&args.data, "val")?;
    // Opened now so that a broken test split fails the run before training, not after; it is
    // read once, by the final evaluation.
    let test = if manifest.has_test() {
        Some(open_split(&args.data, "test")?)
    } else {
        None
    };
    let world = args.world.clone();
    // Rank 0 owns the run folder; the others read it once rank 0 has tidied it.
    let (lock, resuming) = if world.is_root() {
        let (lock, resuming) = resume::open_run_folder(&args.out, args.resume)?;
        (Some(lock), resuming)
    } else {
        (None, false)
    };
    world.barrier()?;
    // The other ranks read rank 0's decision from the folder it left: a last checkpoint or none.
    let resuming = match world.is_root() {
        true => resuming,
        false => args.resume && args.out.join(LAST).is_file(),
    };

    let (cfg, state, resume_ck) = if resuming {
        let (cfg, state, ck) =
            resume::from_last(&args.out, args.config.as_ref(), &args.device, &world)?;
        (cfg, state, Some(ck))
    } else {
        let cfg = args.config.clone().unwrap_or_else(TrainConfig::default_cpu);
        (cfg, TrainState::default(), None)
    };

    let mut cfg = cfg;
    let labels = Labels {
        va: train.has_va(),
        classes: train.has_classes(),
    };
    let (stages, mut notes) = resolve(&mut cfg, labels, manifest.num_classes)?;
    let has_stage2 = stages
        .iter()
        .any(|s| s.loss == fer_losses::Stage::Dimensional);
    notes.push(cfg.resolve_aux_head(has_stage2));
    if manifest.is_legacy() {
        notes.push(format!(
            "{} was prepared before the train/val/test roles: its val split may be the \
             source's test set, so the val numbers are not held-out numbers; re-run prepare-data",
            args.data.display()
        ));
    }
    if test.is_none() {
        notes.push("the dataset has no test split: only validation numbers are reported".into());
    }
    if world.size() > 1 {
        let b = cfg.data.batch_size;
        notes.push(format!(
            "data-parallel ({}): global batch {b}, {} to {} images per rank",
            world.describe(),
            b / world.size(),
            b.div_ceil(world.size())
        ));
    }
    if world.is_root() {
        for n in &notes {
            eprintln!("note: {n}");
        }
    }
    if cfg.data.class_weighted && labels.classes {
        let hist: Vec<u64> = train
            .class_histogram(cfg.model.num_classes)?
            .into_iter()
            .map(|c| c as u64)
            .collect();
        cfg.loss.class_weights = Some(fer_losses::inverse_frequency_weights(&hist)?);
    }
    for (name, ds) in [("val", Some(&val)), ("test", test.as_ref())] {
        if let Some(ds) = ds {
            if train.image_size() != ds.image_size() {
                return Err(Error::Data(format!(
                    "train images are {} px but {name} images {} px",
                    train.image_size(),
                    ds.image_size()
                )));
            }
        }
    }

    let varmap = VarMap::new();
    let vb = SeededVarMap::builder(&varmap, cfg.seed, DType::F32, &args.device);
    let model = TwoAttTwoMt::new(&cfg.model, vb)?;
    if let Some(ck) = &resume_ck {
        ck.load_into(&varmap)?;
    } else {
        if let Some(w) = &cfg.backbone_weights {
            let report = fer_model::import::import_torchvision(w, &varmap)?;
            if world.is_root() {
                eprintln!(
                    "backbone weights from {}: {} tensors loaded, {} skipped",
                    w.display(),
                    report.loaded.len(),
                    report.skipped.len()
                );
            }
        }
        if world.is_root() {
            let toml = cfg.to_toml()?;
            fer_data::atomic::write_atomic(&args.out.join(run_folder::CONFIG), toml.as_bytes())
                .map_err(|e| write_failed(&args.out, e.into()))?;
        }
    }
    world.broadcast_weights(&varmap)?;

    let mut ctx = Ctx {
        cfg,
        stages,
        manifest,
        train,
        val,
        out: args.out.clone(),
        device: args.device.clone(),
        varmap,
        model,
        world,
    };
    let outcome = run_stages(&mut ctx, state, resume_ck.as_ref(), &args)?;
    let state = match outcome {
        Ok(state) => state,
        Err(epochs_done) => return Ok(Outcome::Stopped { epochs_done }),
    };

    // The final model is the best of the last stage, chosen on val. Only now, once, is it
    // evaluated on test; nothing reads the result but the report.
    load_root_checkpoint(&ctx, &args.out.join(BEST))?;
    let world = &ctx.world;
    let val_eval = SplitEval::run(world, &ctx.model, ctx.val.clone(), &ctx.cfg, &ctx.device)?;
    let test_eval = match test {
        Some(ds) => {
            if world.is_root() {
                eprintln!(
                    "evaluating the final model on the test split ({} faces)",
                    ds.len()
                );
            }
            Some(SplitEval::run(
                world,
                &ctx.model,
                ds,
                &ctx.cfg,
                &ctx.device,
            )?)
        }
        None => None,
    };
    Ok(Outcome::Finished(Box::new(Finished {
        config: ctx.cfg,
        stages: ctx.stages,
        notes,
        state,
        manifest: ctx.manifest,
        model: ctx.model,
        val_eval,
        test_eval,
        val: ctx.val,
        lock,
    })))
}

/// Rank 0 loads the weights of a checkpoint it wrote and hands them to the other ranks, which
/// need no view of the run folder for it (nor can they read a file rank 0 is still writing).
fn load_root_checkpoint(ctx: &Ctx, path: &Path) -> Result<()> {
    if ctx.world.is_root() {
        checkpoint::load(path, &ctx.device)?.load_into(&ctx.varmap)?;
    }
    ctx.world.broadcast_weights(&ctx.varmap)
}

/// Returns the final state, or `Err(epochs)` when stopped by `--stop-after-epochs`.
fn run_stages(
    ctx: &mut Ctx,
    mut state: TrainState,
    resume: Option<&checkpoint::Checkpoint>,
    args: &TrainArgs,
) -> Result<std::result::Result<TrainState, usize>> {
    let mut epochs_here = 0usize;
    let mut resume_optim: Option<HashMap<String, Tensor>> = resume.map(|ck| {
        ck.train_tensors()
            .map(|(n, t)| (n[OPTIM_PREFIX.len()..].to_string(), t.clone()))
            .collect()
    });
    while state.stage_index < ctx.stages.len() {
        let plan = ctx.stages[state.stage_index];
        let scfg = plan.config(&ctx.cfg).clone();
        if state.epoch == 0 && state.stage_index > 0 {
            // A later stage starts from the best weights of the one before.
            let prev = ctx.stages[state.stage_index - 1].name;
            load_root_checkpoint(ctx, &ctx.out.join(best_name(prev)))?;
            resume_optim = None;
        }
        let mut opt = Optimizer::new(&ctx.cfg.optimizer, trainable_vars(&ctx.varmap))?;
        // The average starts afresh with each stage, from the weights it starts from.
        let mut ema = ctx
            .cfg
            .ema_decay
            .map(|d| Ema::new(&ctx.varmap, d))
            .transpose()?;
        if let Some(st) = resume_optim.take() {
            if state.epoch > 0 {
                opt.load_state(&st)?;
                if let Some(e) = ema.as_mut() {
                    e.load_state(&st)?;
                }
            }
        }
        let loader = Loader::new(
            ctx.train.clone(),
            LoaderConfig {
                batch_size: ctx.cfg.data.batch_size,
                shuffle: true,
                // Each stage draws its own epoch orders and augmentations.
                seed: ctx.cfg.seed ^ ((state.stage_index as u64 + 1) << 32),
                balanced: ctx.cfg.data.balanced,
                drop_last: false,
                threads: ctx.cfg.data.loader_threads,
                prefetch: ctx.cfg.data.prefetch,
                augment: ctx.cfg.data.augment.clone(),
                part: ctx.world.part(),
            },
            ctx.device.clone(),
        )?;
        let spe = loader.batches_per_epoch();
        let sched = WarmupCosine {
            warmup_steps: (scfg.warmup_epochs * spe as f64).round() as usize,
            total_steps: scfg.epochs * spe,
            min_factor: scfg.min_lr_factor,
        };
        let base_lr = scfg.lr.unwrap_or(ctx.cfg.optimizer.lr);

        let mut stop_stage = false;
        while state.epoch < scfg.epochs && !stop_stage {
            let t0 = Instant::now();
            let stats = train_epoch(
                ctx,
                plan,
                &loader,
                &mut opt,
                &sched,
                base_lr,
                &mut state,
                ema.as_mut(),
                args,
            )?;
            let root = ctx.world.is_root();
            if root && !std::io::stderr().is_terminal() {
                eprintln!(
                    "{} epoch {}: evaluating on val ({} faces)",
                    plan.name,
                    state.epoch + 1,
                    ctx.val.len()
                );
            }
            // Each rank's running statistics followed its own batches; evaluation and the
            // checkpoints below use their mean.
            ctx.world.average_running_stats(&ctx.varmap)?;
            let validate = |ctx: &Ctx| {
                evaluate_in(
                    &ctx.world,
                    &ctx.model,
                    ctx.val.clone(),
                    ctx.cfg.data.eval_batch_size,
                    ctx.cfg.data.loader_threads,
                    Tta::None,
                    &ctx.device,
                )
            };
            // With a moving average, the trained weights are scored too (for comparison), then
            // the average takes their place until the checkpoints below are written.
            let raw_score = match ema.as_mut() {
                Some(e) => {
                    let raw = stage_score(plan, &validate(ctx)?.metrics);
                    e.swap(&ctx.varmap)?;
                    ctx.world.average_running_stats(&ctx.varmap)?;
                    Some(raw)
                }
                None => None,
            };
            let ev = validate(ctx)?;
            let seconds = t0.elapsed().as_secs_f64();
            let collapse = ev
                .metrics
                .confusion
                .as_ref()
                .and_then(|cm| crate::collapse::check(cm, &ctx.manifest.class_names));
            state.train_seconds += seconds;
            let score = stage_score(plan, &ev.metrics);
            let best = state.end_epoch(score);
            let mut rec = record(plan, &state, &stats, &ev.metrics, score, best, seconds);
            rec.collapse = collapse;
            rec.raw_score = raw_score;
            if root {
                log_epoch(&rec, scfg.epochs);
                if let Some(w) = &rec.collapse {
                    eprintln!("warning: {} epoch {}: {w}", plan.name, rec.epoch);
                }
            }
            state.history.push(rec);
            if let Some(p) = scfg
                .patience
                .filter(|&p| state.out_of_patience(p, scfg.epochs))
            {
                if root {
                    eprintln!(
                        "{}: no better validation score for {p} epochs: stopping the stage early",
                        plan.name
                    );
                }
                stop_stage = true;
            }
            let stage_over = stop_stage || state.epoch >= scfg.epochs;
            if best {
                save(ctx, &state, plan, &[], &ctx.out.join(best_name(plan.name)))?;
                save(ctx, &state, plan, &[], &ctx.out.join(BEST))?;
            }
            if let Some(e) = ema.as_mut() {
                e.swap(&ctx.varmap)?;
            }
            if root {
                write_history(&ctx.out, &state.history)?;
            }
            if stage_over {
                // Checkpoint the transition so a resume starts the next stage.
                state.next_stage();
                save(ctx, &state, plan, &[], &ctx.out.join(LAST))?;
                epochs_here += 1;
                if args.stop_after_epochs.is_some_and(|n| epochs_here >= n) {
                    if root {
                        eprintln!(
                            "stopping after {epochs_here} epoch(s) as asked; resume with --resume"
                        );
                    }
                    return Ok(Err(epochs_here));
                }
                break;
            } else {
                let mut train_state = opt.state_tensors()?;
                if let Some(e) = &ema {
                    train_state.extend(e.state_tensors());
                }
                let optim = train_state
                    .into_iter()
                    .map(|(n, t)| (format!("{OPTIM_PREFIX}{n}"), t))
                    .collect::<Vec<_>>();
                save(ctx, &state, plan, &optim, &ctx.out.join(LAST))?;
            }
            epochs_here += 1;
            if args.stop_after_epochs.is_some_and(|n| epochs_here >= n) {
                if root {
                    eprintln!(
                        "stopping after {epochs_here} epoch(s) as asked; resume with --resume"
                    );
                }
                return Ok(Err(epochs_here));
            }
        }
    }
    Ok(Ok(state))
}
