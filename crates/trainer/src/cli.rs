//! The command line (clap derive) and what each command does.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Overrides, TrainConfig};
use crate::evaluate::{evaluate, Tta};
use crate::photos::DetectMode;
use crate::report::{self, MetricsJson, ReportInput, SplitMetrics};
use crate::state::{keys, TrainState};
use crate::train::{self, Outcome, TrainArgs};
use crate::world::World;
use crate::{predict, Error, Result};

/// Train, evaluate and run the 2Att-2Mt facial emotion model (valence/arousal + expression).
///
/// With no command, runs the embedded default: builds the synthetic face set in
/// `data/synthetic-raw` if missing, prepares it into `data/synthetic`, trains stage 1 and
/// stage 2 with `configs/default-cpu.toml` (built in), evaluates on the validation split,
/// writes `runs/default-<timestamp>/` and prints the final metrics.
#[derive(Parser, Debug)]
#[command(name = "trainer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Compute threads (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train on a prepared dataset and write a run folder (checkpoints, metrics, report).
    Train(TrainCmd),
    /// Evaluate a checkpoint on a prepared split and print the metrics as JSON.
    Eval(EvalCmd),
    /// Predict expression, class probabilities, valence and arousal for image files or folders.
    Predict(PredictCmd),
    /// On a GPU: the fer-kernels ops and the model's PyTorch parity against the CPU/PyTorch, then
    /// the training benchmark (a CUDA build: `cargo xtask build-cuda`).
    GpuCheck(crate::gpu_check::GpuCheckCmd),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

pub fn device(d: DeviceArg) -> Result<Device> {
    device_number(d, 0)
}

/// `d`, on GPU `gpu` when it is CUDA.
fn device_number(d: DeviceArg, gpu: usize) -> Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if candle_core::utils::cuda_is_available() => Ok(Device::new_cuda(gpu)?),
        DeviceArg::Cuda => Err(Error::Config(
            "--device cuda: this build has no CUDA support (build with --features cuda)".into(),
        )),
    }
}

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// Prepared dataset folder (with manifest.json, train/ and val/).
    #[arg(long)]
    pub data: PathBuf,
    /// Training config (TOML); the embedded CPU default when left out.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint, exactly where it stopped; with no
    /// checkpoint there (no folder, an empty one, or a run killed before its first checkpoint),
    /// start the run afresh. A folder holding other files is refused.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Epochs of every stage.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate (replaces the stages' own).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// torchvision ResNet weights (.pth or .safetensors) to start the backbone from (replaces the
    /// config's `backbone_weights`).
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
    /// Stop after this many epochs, as if killed (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
    /// Make the loss NaN at this step of a stage (for testing the NaN stop).
    #[arg(long, hide = true)]
    pub fault_nan_step: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Split {
    Val,
    Test,
}

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// A checkpoint written by `trainer train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prepared dataset folder.
    #[arg(long)]
    pub data: PathBuf,
    /// `val` (the split decisions are taken on) or `test` (held out: the final check).
    #[arg(long, value_enum, default_value = "val")]
    pub split: Split,
    /// Test-time augmentation: `flip` also evaluates the mean of each face and its mirror,
    /// reported beside the single-crop numbers (`tta_flip`).
    #[arg(long, value_enum, default_value = "none")]
    pub tta: Tta,
    /// Images per forward pass [default: the run's eval_batch_size, so that eval repeats the
    /// run's own numbers exactly; 64 for a checkpoint without a stored config].
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct PredictCmd {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output file (.jsonl or .csv): one record per face, one "no face found" record per photo
    /// without any. JSON lines on stdout when left out.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Find the faces with the face detector: `auto` searches every image unless --box is given
    /// or the image is already a face crop (a square of the model's input size); `on` searches
    /// every image; `off` takes each whole image as one face.
    #[arg(long, value_enum, default_value = "auto")]
    pub detect: DetectMode,
    /// The BlazeFace ONNX file (`cargo xtask fetch-detector` fetches it).
    #[arg(long, default_value = crate::photos::DEFAULT_DETECTOR)]
    pub detector: PathBuf,
    /// Faces the detector is less sure of than this are left out.
    #[arg(long, default_value_t = fer_detect::DetectOptions::default().score_threshold)]
    pub min_face_score: f32,
    /// Write every photo with its faces boxed and labelled (expression, V/A) into this folder.
    #[arg(long)]
    pub annotate: Option<PathBuf>,
    /// Write a PNG of the first-level attention maps over each face into this folder.
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
    /// Face box x,y,w,h in pixels, applied to every image (cropped with the training margin)
    /// instead of searching for faces.
    #[arg(long = "box")]
    pub face_box: Option<String>,
    /// Test-time augmentation: `flip` predicts the mean of each face and its mirror image.
    #[arg(long, value_enum, default_value = "none")]
    pub tta: Tta,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Image files or folders (searched recursively for JPEG, PNG, BMP, TIFF, WebP and GIF).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    if cli.threads > 0 {
        // Ignored if the pool exists already (only in tests that call run twice).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(cli.threads)
            .build_global();
    }
    let single_process = match &cli.command {
        None => Some("trainer (the default run)"),
        Some(Command::Train(_)) => None,
        Some(Command::Eval(_)) => Some("trainer eval"),
        Some(Command::Predict(_)) => Some("trainer predict"),
        Some(Command::GpuCheck(_)) => Some("trainer gpu-check"),
    };
    if let (Some(what), Some(launch)) = (single_process, fer_dist::launch()) {
        if launch.several() {
            let n = launch
                .processes()
                .map_or("several".into(), |n| n.to_string());
            return Err(Error::Config(format!(
                "{what} runs in one process, but a launcher started {n}: each would write the \
                 same outputs. Run it without mpirun (`trainer train` is the data-parallel command)"
            )));
        }
    }
    match cli.command {
        None => crate::default_run::run(),
        Some(Command::Train(t)) => run_train(t),
        Some(Command::Eval(e)) => run_eval(e),
        Some(Command::Predict(p)) => run_predict(p),
        Some(Command::GpuCheck(g)) => crate::gpu_check::run(g),
    }
}

fn run_train(t: TrainCmd) -> Result<()> {
    let overrides = Overrides {
        epochs: t.epochs,
        batch_size: t.batch_size,
        lr: t.lr,
        seed: t.seed,
        backbone_weights: t.backbone_weights.clone(),
    };
    let config = match &t.config {
        Some(p) => {
            let mut c = TrainConfig::from_file(p)?;
            c.apply(&overrides)?;
            Some(c)
        }
        // The checkpoint's own config; without a checkpoint `--resume` starts the run this
        // command line would start without it.
        None if t.resume && t.out.join(train::LAST).is_file() => None,
        None => {
            let mut c = TrainConfig::default_cpu();
            c.apply(&overrides)?;
            Some(c)
        }
    };
    let world = Rc::new(World::from_env()?);
    let args = TrainArgs {
        world: world.clone(),
        data: t.data,
        out: t.out,
        config,
        resume: t.resume,
        // One GPU per rank: the rank's position among the ranks of its machine.
        device: device_number(t.device, world.local_rank())?,
        stop_after_epochs: t.stop_after_epochs,
        fault_nan_step: t.fault_nan_step,
    };
    match train_and_report(args) {
        Ok(Some(m)) if world.is_root() => println!("{}", report::table(&m)),
        Ok(_) => {}
        // A rank that returned would leave the others waiting in their next collective.
        Err(e) if world.size() > 1 => {
            eprintln!("error on rank {} of {}: {e}", world.rank(), world.size());
            world.abort(1)
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Trains, then writes metrics.json, the figures and report.md. `None` when stopped early on
/// purpose (`--stop-after-epochs`).
pub fn train_and_report(args: TrainArgs) -> Result<Option<MetricsJson>> {
    let out = args.out.clone();
    let data = args.data.clone();
    let device = args.device.clone();
    let root = args.world.is_root();
    let f = match train::train(args)? {
        Outcome::Stopped { .. } => return Ok(None),
        // Rank 0 alone writes the metrics, figures and report.
        Outcome::Finished(_) if !root => return Ok(None),
        Outcome::Finished(f) => f,
    };
    let last_stage = f.stages.last().map_or("", |s| s.name);
    let block = |e: &train::SplitEval| {
        SplitMetrics::new(&e.single.metrics, e.single.samples.len())
            .with_tta_flip(SplitMetrics::new(&e.flip.metrics, e.flip.samples.len()))
    };
    let best_epoch = f
        .state
        .history
        .iter()
        .filter(|h| h.stage == last_stage && h.best)
        .map(|h| h.epoch)
        .next_back()
        .unwrap_or(0);
    let metrics = MetricsJson {
        classes: f.manifest.class_names.clone(),
        stage: last_stage.to_string(),
        epochs: f.state.history.len(),
        best_epoch,
        train_seconds: f.state.train_seconds,
        val: Some(block(&f.val_eval)),
        test: f.test_eval.as_ref().map(block),
    };
    let names: Vec<&str> = f.stages.iter().map(|s| s.name).collect();
    let toml = f.config.to_toml()?;
    report::write(&ReportInput {
        out: &out,
        metrics: &metrics,
        history: &f.state.history,
        stages: &names,
        notes: &f.notes,
        config_toml: &toml,
        data: &data,
        val_eval: &f.val_eval.single,
        test_eval: f.test_eval.as_ref().map(|e| &e.single),
        model: &f.model,
        val: &f.val,
        faces: f.config.report_faces,
        device: &device,
    })?;
    eprintln!("run folder: {}", out.display());
    Ok(Some(metrics))
}

fn run_eval(e: EvalCmd) -> Result<()> {
    let device = device(e.device)?;
    let m = eval_checkpoint(
        &e.checkpoint,
        &e.data,
        e.split,
        e.tta,
        e.batch_size,
        &device,
    )?;
    println!("{}", m.to_json());
    Ok(())
}

fn load_checkpoint(path: &Path, device: &Device) -> Result<fer_model::checkpoint::Checkpoint> {
    if !path.is_file() {
        return Err(Error::Checkpoint(format!(
            "{}: no such checkpoint file",
            path.display()
        )));
    }
    Ok(fer_model::checkpoint::load(path, device)?)
}

/// Evaluates a checkpoint on one split; the result has the shape of `metrics.json` with that
/// split filled (and its flip-TTA block with `tta = flip`).
pub fn eval_checkpoint(
    ck_path: &Path,
    data: &Path,
    split: Split,
    tta: Tta,
    batch: Option<usize>,
    device: &Device,
) -> Result<MetricsJson> {
    let ck = load_checkpoint(ck_path, device)?;
    // Float sums depend on how samples are grouped into GEMMs, so the run's batch size is what
    // reproduces its metrics to the last bit.
    let batch = batch.unwrap_or_else(|| {
        ck.meta
            .get(keys::CONFIG)
            .and_then(|s| TrainConfig::from_toml_str(s, ck_path).ok())
            .map_or(64, |c| c.data.eval_batch_size)
    });
    let spec = predict::InputSpec::from_checkpoint(&ck)?;
    let manifest = train::load_manifest(data)?;
    let split_name = match split {
        Split::Val => "val",
        Split::Test => "test",
    };
    let dir = data.join(split_name);
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "{}: the dataset has no {split_name} split",
            dir.display()
        )));
    }
    let ds = std::sync::Arc::new(fer_data::loader::Dataset::open(&dir)?);
    if ds.image_size() != spec.size {
        return Err(Error::Data(format!(
            "{} holds {} px images but the checkpoint {} was trained on {} px",
            dir.display(),
            ds.image_size(),
            ck_path.display(),
            spec.size
        )));
    }
    if manifest.num_classes != ck.config.num_classes {
        return Err(Error::Data(format!(
            "{} has {} classes but the checkpoint {} predicts {}",
            data.display(),
            manifest.num_classes,
            ck_path.display(),
            ck.config.num_classes
        )));
    }
    let (_, model) = ck.build(device)?;
    let ev = evaluate(&model, ds.clone(), batch, 1, Tta::None, device)?;
    let mut block = SplitMetrics::new(&ev.metrics, ev.samples.len());
    if tta == Tta::Flip {
        let fl = evaluate(&model, ds, batch, 1, Tta::Flip, device)?;
        block = block.with_tta_flip(SplitMetrics::new(&fl.metrics, fl.samples.len()));
    }
    let state: Option<TrainState> = ck
        .meta
        .get(keys::STATE)
        .and_then(|s| serde_json::from_str(s).ok());
    let stage = ck.meta.get(keys::STAGE).map_or("", String::as_str);
    let best_epoch = ck
        .meta
        .get(keys::EPOCH)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let (val, test) = match split {
        Split::Val => (Some(block), None),
        Split::Test => (None, Some(block)),
    };
    Ok(MetricsJson {
        classes: manifest.class_names.clone(),
        stage: stage.to_string(),
        epochs: state.as_ref().map_or(0, |s| s.history.len()),
        best_epoch,
        train_seconds: state.as_ref().map_or(0.0, |s| s.train_seconds),
        val,
        test,
    })
}

fn run_predict(p: PredictCmd) -> Result<()> {
    let device = device(p.device)?;
    let ck = load_checkpoint(&p.checkpoint, &device)?;
    let spec = predict::InputSpec::from_checkpoint(&ck)?;
    if !spec.va_trained {
        eprintln!(
            "note: {} was trained without valence/arousal labels: valence and arousal are left empty",
            p.checkpoint.display()
        );
    }
    let (_, model) = ck.build(&device)?;
    let user_box = p.face_box.as_deref().map(predict::parse_box).transpose()?;
    if !(0.0..=1.0).contains(&p.min_face_score) {
        return Err(Error::Config(format!(
            "--min-face-score {}: a score between 0 and 1",
            p.min_face_score
        )));
    }
    let detector = crate::photos::detector_for(p.detect, user_box.is_some(), Some(&p.detector))?;
    let images = predict::collect_images(&p.paths)?;
    // Fail on a bad --out or an unwritable folder before the work.
    predict::format_predictions(&[], p.out.as_deref(), &spec.classes)?;
    for dir in [&p.annotate, &p.heatmaps].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let how = predict::PredictOptions {
        user_box,
        detect: p.detect,
        detector: detector.as_ref(),
        detect_options: fer_detect::DetectOptions {
            score_threshold: p.min_face_score,
            ..Default::default()
        },
        heatmaps: p.heatmaps.as_deref(),
        annotate: p.annotate.as_deref(),
        tta: p.tta,
    };
    let (preds, summary) = predict::predict(&model, &spec, &images, &how, &device)?;
    eprintln!(
        "{} images: {} faces, {} without a face, {} unreadable (skipped)",
        summary.images,
        summary.faces,
        summary.without_face,
        summary.unreadable.len()
    );
    let text = predict::format_predictions(&preds, p.out.as_deref(), &spec.classes)?;
    match &p.out {
        Some(path) => {
            fer_data::atomic::write_atomic(path, text.as_bytes())?;
            eprintln!("{} records written to {}", preds.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
