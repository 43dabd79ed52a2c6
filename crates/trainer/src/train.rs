//! The training loop: stages, epochs, checkpoints, early stopping, resume.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use fer_data::loader::{Dataset, Loader, LoaderConfig};
use fer_data::manifest::Manifest;
use fer_losses::{stage_loss, ClassInputs, LossParts, Metrics, VaInputs};
use fer_model::{checkpoint, trainable_vars, TwoAttTwoMt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clip::clip_grad_norm;
use crate::config::TrainConfig;
use crate::evaluate::{evaluate, Evaluation, Tta};
use crate::init::SeededVarMap;
use crate::optim::Optimizer;
use crate::plan::{resolve, Labels, StagePlan};
use crate::run_folder::{self, Contents, RunLock};
use crate::schedule::WarmupCosine;
use crate::state::{keys, EpochRecord, TrainState};
use crate::{Error, Result};

pub const LAST: &str = run_folder::LAST;
pub const BEST: &str = "best.safetensors";
const OPTIM_PREFIX: &str = "train.";

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
    /// Held until the report is written, so no second trainer writes the folder meanwhile.
    pub lock: RunLock,
}

/// One split's evaluation, single crop and with flip test-time augmentation.
pub struct SplitEval {
    pub single: Evaluation,
    pub flip: Evaluation,
}

impl SplitEval {
    pub fn run(
        ctx_model: &TwoAttTwoMt,
        ds: Arc<Dataset>,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let (b, t) = (cfg.data.eval_batch_size, cfg.data.loader_threads);
        Ok(SplitEval {
            single: evaluate(ctx_model, ds.clone(), b, t, Tta::None, device)?,
            flip: evaluate(ctx_model, ds, b, t, Tta::Flip, device)?,
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
    let (lock, resuming) = open_run_folder(&args.out, args.resume)?;
    let last = args.out.join(LAST);

    let (cfg, state, resume_ck) = if resuming {
        let ck = checkpoint::load(&last, &args.device)?;
        let stored = ck.meta.get(keys::CONFIG).ok_or_else(|| {
            Error::Checkpoint(format!("{}: no training config stored", last.display()))
        })?;
        let cfg = TrainConfig::from_toml_str(stored, &last)?;
        if let Some(given) = &args.config {
            check_same_model(given, &cfg, &last)?;
        }
        let state: TrainState =
            serde_json::from_str(ck.meta.get(keys::STATE).ok_or_else(|| {
                Error::Checkpoint(format!("{}: no training state stored", last.display()))
            })?)
            .map_err(|e| {
                Error::Checkpoint(format!("{}: bad training state: {e}", last.display()))
            })?;
        // A kill between the history and the checkpoint leaves the log an epoch ahead: from
        // here on it shows what the checkpoint holds, the epoch to be redone is logged again.
        write_history(&args.out, &state.history)?;
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
    for n in &notes {
        eprintln!("note: {n}");
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
            eprintln!(
                "backbone weights from {}: {} tensors loaded, {} skipped",
                w.display(),
                report.loaded.len(),
                report.skipped.len()
            );
        }
        let toml = cfg.to_toml()?;
        fer_data::atomic::write_atomic(&args.out.join(run_folder::CONFIG), toml.as_bytes())
            .map_err(|e| write_failed(&args.out, e.into()))?;
    }

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
    };
    let outcome = run_stages(&mut ctx, state, resume_ck.as_ref(), &args)?;
    let state = match outcome {
        Ok(state) => state,
        Err(epochs_done) => return Ok(Outcome::Stopped { epochs_done }),
    };

    // The final model is the best of the last stage, chosen on val. Only now, once, is it
    // evaluated on test; nothing reads the result but the report.
    let best = checkpoint::load(args.out.join(BEST), &ctx.device)?;
    best.load_into(&ctx.varmap)?;
    let val_eval = SplitEval::run(&ctx.model, ctx.val.clone(), &ctx.cfg, &ctx.device)?;
    let test_eval = match test {
        Some(ds) => {
            eprintln!(
                "evaluating the final model on the test split ({} faces)",
                ds.len()
            );
            Some(SplitEval::run(&ctx.model, ds, &ctx.cfg, &ctx.device)?)
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

/// Checks `out` and takes its lock; `true` when there is a checkpoint to resume from. Leftovers
/// of a run killed before its first checkpoint are removed (a resume then starts afresh), and
/// so are the temp files of writes a kill cut short; files that are not a run's are never
/// touched, and a resume into a folder holding any is refused.
fn open_run_folder(out: &Path, resume: bool) -> Result<(RunLock, bool)> {
    // Looked at before the lock is created, so a refused folder gets no file of ours; again
    // with the lock held, since another trainer may have written it meanwhile.
    refuse(out, &run_folder::inspect(out)?, resume)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lock = run_folder::lock(out)?;
    let contents = run_folder::inspect(out)?;
    refuse(out, &contents, resume)?;
    let resuming = resume && matches!(contents, Contents::Checkpointed);
    if resume && !resuming {
        eprintln!("no checkpoint in {}: starting a new run", out.display());
    }
    if let Contents::Leftovers(paths) = &contents {
        if !paths.is_empty() {
            let names: Vec<String> = paths
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            eprintln!(
                "removing what a run killed before its first checkpoint left in {}: {}",
                out.display(),
                names.join(", ")
            );
            run_folder::remove(paths)?;
        }
    }
    run_folder::remove(&run_folder::stale_temps(out)?)?;
    Ok((lock, resuming))
}

fn refuse(out: &Path, contents: &Contents, resume: bool) -> Result<()> {
    match contents {
        Contents::Foreign(why) if resume => Err(Error::Checkpoint(format!(
            "{} is not a run folder: {why}. --resume continues a run, or starts one in an empty \
             folder or one a run was killed in before its first checkpoint; choose another --out",
            out.display()
        ))),
        Contents::Checkpointed if !resume => Err(Error::Checkpoint(format!(
            "{} already holds a run: pass --resume to continue it or choose another --out",
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// A failed write of the run folder (a full disk, a folder made read-only) says what survived
/// it: atomic writes leave every earlier file, the last checkpoint included, as it was.
fn write_failed(out: &Path, e: Error) -> Error {
    let last = out.join(LAST);
    let what_next = if last.is_file() {
        format!(
            "the last checkpoint, {}, is intact: free space or make {} writable, then continue \
             with --resume",
            last.display(),
            out.display()
        )
    } else {
        format!(
            "nothing was checkpointed yet: free space or make {} writable, then start again",
            out.display()
        )
    };
    Error::Checkpoint(format!("writing the run folder failed: {e}; {what_next}"))
}

/// A resume with an explicit config must not silently train another model.
fn check_same_model(given: &TrainConfig, stored: &TrainConfig, path: &Path) -> Result<()> {
    let a = toml::Value::try_from(&given.model).map_err(|e| Error::Config(e.to_string()))?;
    let b = toml::Value::try_from(&stored.model).map_err(|e| Error::Config(e.to_string()))?;
    let mut diffs = vec![];
    diff_values("model", &a, &b, &mut diffs);
    // The data decides the class count and the heads; only the architecture is compared.
    diffs.retain(|d| {
        !d.starts_with("model.num_classes")
            && !d.starts_with("model.categorical")
            && !d.starts_with("model.aux_head")
    });
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Checkpoint(format!(
        "{} was written with a different model config: {}",
        path.display(),
        diffs.into_iter().take(5).collect::<Vec<_>>().join("; ")
    )))
}

fn diff_values(at: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_values(&path, p, q, out),
                    (p, q) => out.push(format!("{path}: {p:?} vs {q:?}")),
                }
            }
        }
        _ if a != b => out.push(format!("{at}: {a} (given) vs {b} (checkpoint)")),
        _ => {}
    }
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
            let ck = checkpoint::load(ctx.out.join(best_name(prev)), &ctx.device)?;
            ck.load_into(&ctx.varmap)?;
            resume_optim = None;
        }
        let mut opt = Optimizer::new(&ctx.cfg.optimizer, trainable_vars(&ctx.varmap))?;
        if let Some(st) = resume_optim.take() {
            if state.epoch > 0 {
                opt.load_state(&st)?;
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
                ctx, plan, &loader, &mut opt, &sched, base_lr, &mut state, args,
            )?;
            if !std::io::stderr().is_terminal() {
                eprintln!(
                    "{} epoch {}: evaluating on val ({} faces)",
                    plan.name,
                    state.epoch + 1,
                    ctx.val.len()
                );
            }
            let ev = evaluate(
                &ctx.model,
                ctx.val.clone(),
                ctx.cfg.data.eval_batch_size,
                ctx.cfg.data.loader_threads,
                Tta::None,
                &ctx.device,
            )?;
            let seconds = t0.elapsed().as_secs_f64();
            let collapse = ev
                .metrics
                .confusion
                .as_ref()
                .and_then(|cm| crate::collapse::check(cm, &ctx.manifest.class_names));
            state.train_seconds += seconds;
            state.epoch += 1;
            let score = stage_score(plan, &ev.metrics);
            let best = state.best_score.is_none_or(|b| score > b);
            if best {
                state.best_score = Some(score);
                state.best_epoch = state.epoch;
                state.bad_epochs = 0;
            } else {
                state.bad_epochs += 1;
            }
            let mut rec = record(plan, &state, &stats, &ev.metrics, score, best, seconds);
            rec.collapse = collapse;
            log_epoch(&rec, scfg.epochs);
            if let Some(w) = &rec.collapse {
                eprintln!("warning: {} epoch {}: {w}", plan.name, rec.epoch);
            }
            state.history.push(rec);
            if let Some(p) = scfg.patience {
                if state.bad_epochs >= p && state.epoch < scfg.epochs {
                    eprintln!(
                        "{}: no better validation score for {p} epochs: stopping the stage early",
                        plan.name
                    );
                    stop_stage = true;
                }
            }
            let stage_over = stop_stage || state.epoch >= scfg.epochs;
            if best {
                save(ctx, &state, plan, &[], &ctx.out.join(best_name(plan.name)))?;
                save(ctx, &state, plan, &[], &ctx.out.join(BEST))?;
            }
            write_history(&ctx.out, &state.history)?;
            if stage_over {
                // Checkpoint the transition so a resume starts the next stage.
                state.stage_index += 1;
                state.epoch = 0;
                state.step = 0;
                state.best_score = None;
                state.best_epoch = 0;
                state.bad_epochs = 0;
                save(ctx, &state, plan, &[], &ctx.out.join(LAST))?;
                epochs_here += 1;
                if args.stop_after_epochs.is_some_and(|n| epochs_here >= n) {
                    eprintln!(
                        "stopping after {epochs_here} epoch(s) as asked; resume with --resume"
                    );
                    return Ok(Err(epochs_here));
                }
                break;
            } else {
                let optim = opt
                    .state_tensors()?
                    .into_iter()
                    .map(|(n, t)| (format!("{OPTIM_PREFIX}{n}"), t))
                    .collect::<Vec<_>>();
                save(ctx, &state, plan, &optim, &ctx.out.join(LAST))?;
            }
            epochs_here += 1;
            if args.stop_after_epochs.is_some_and(|n| epochs_here >= n) {
                eprintln!("stopping after {epochs_here} epoch(s) as asked; resume with --resume");
                return Ok(Err(epochs_here));
            }
        }
    }
    Ok(Ok(state))
}

pub fn best_name(stage: &str) -> String {
    format!("best-{stage}.safetensors")
}

fn stage_score(plan: StagePlan, m: &Metrics) -> f64 {
    if plan.scores_ccc() {
        if let (Some(v), Some(a)) = (&m.valence, &m.arousal) {
            return 0.5 * (v.ccc + a.ccc);
        }
    }
    m.accuracy.unwrap_or(f64::NEG_INFINITY)
}

#[derive(Default)]
struct EpochStats {
    loss: f64,
    n: f64,
    ce: (f64, f64),
    va: (f64, f64),
    aux: (f64, f64),
    lr: f64,
    images: usize,
    seconds: f64,
}

fn mean(p: (f64, f64)) -> Option<f64> {
    (p.1 > 0.0).then(|| p.0 / p.1)
}

fn record(
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

fn log_epoch(r: &EpochRecord, epochs: usize) {
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

fn write_history(out: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::new();
    for r in history {
        s.push_str(&serde_json::to_string(r).map_err(|e| Error::Config(e.to_string()))?);
        s.push('\n');
    }
    fer_data::atomic::write_atomic(&out.join(run_folder::HISTORY), s.as_bytes())
        .map_err(|e| write_failed(out, e.into()))
}

fn save(
    ctx: &Ctx,
    state: &TrainState,
    plan: StagePlan,
    optim: &[(String, Tensor)],
    path: &Path,
) -> Result<()> {
    let mut meta = BTreeMap::new();
    let json = |v: &dyn erased::Json| v.to_json();
    meta.insert(keys::STATE.into(), json(state)?);
    meta.insert(keys::CONFIG.into(), ctx.cfg.to_toml()?);
    meta.insert(keys::STAGE.into(), plan.name.into());
    meta.insert(keys::EPOCH.into(), state.epoch.to_string());
    meta.insert(keys::STEP.into(), state.step.to_string());
    meta.insert(
        keys::RNG.into(),
        format!(
            "seed {}: weights from per-variable ChaCha8 streams; loader orders and augmentations from (seed ^ stage << 32, epoch, position)",
            ctx.cfg.seed
        ),
    );
    meta.insert(keys::IMAGE_SIZE.into(), ctx.train.image_size().to_string());
    meta.insert(keys::MARGIN.into(), ctx.manifest.margin.to_string());
    meta.insert(keys::CLASS_NAMES.into(), json(&ctx.manifest.class_names)?);
    let names: Vec<&str> = ctx.stages.iter().map(|s| s.name).collect();
    meta.insert(keys::STAGES.into(), json(&names)?);
    checkpoint::save(path, &ctx.varmap, &ctx.cfg.model, optim, &meta)
        .map_err(|e| write_failed(&ctx.out, e.into()))
}

mod erased {
    pub trait Json {
        fn to_json(&self) -> crate::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> crate::Result<String> {
            serde_json::to_string(self).map_err(|e| crate::Error::Config(e.to_string()))
        }
    }
}

fn progress_bar(len: usize, name: &str, epoch: usize) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len as u64), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("{name} epoch {}", epoch + 1));
    pb
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
fn train_epoch(
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
    let pb = progress_bar(loader.batches_per_epoch(), plan.name, state.epoch);
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
