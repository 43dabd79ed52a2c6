//! `cargo xtask prepare-data` and `cargo xtask bench-prepare`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fer_data::manifest::Manifest;
use fer_data::prepare::{prepare_with_report, PrepareConfig, RunReport, Source};

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("source").required(true).args(["affectnet", "folder", "csv"])
))]
pub struct PrepareArgs {
    /// AffectNet root (holds Manually_Annotated_file_lists/ and Manually_Annotated_Images/).
    #[arg(long, value_name = "DIR")]
    affectnet: Option<PathBuf>,
    /// Image folder per class: DIR/{train,val|test}/<class>/*.{png,jpg,jpeg}.
    #[arg(long, value_name = "DIR")]
    folder: Option<PathBuf>,
    /// Plain CSV `path,expression,valence,arousal[,x,y,w,h][,split]` (needs --images).
    #[arg(long, value_name = "FILE", requires = "images")]
    csv: Option<PathBuf>,
    /// Image root of --csv.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Output folder [default: data/affectnet, data/folder or data/csv].
    #[arg(long, value_name = "OUT")]
    out: Option<PathBuf>,
    /// Output image side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Face box growth on each side, as a fraction of the box size.
    #[arg(long, default_value_t = 0.1)]
    margin: f64,
    /// 8 classes, or 7 (Contempt becomes "no class").
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(7..=8))]
    classes: u64,
    /// Decoding threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Candidate rows per shard.
    #[arg(long, default_value_t = 1024)]
    shard_size: usize,
    /// Fraction of a CSV without a `split` column that goes to validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Count images in unknown class folders as skipped instead of failing.
    #[arg(long)]
    skip_unknown_classes: bool,
}

#[derive(clap::Args)]
pub struct BenchPrepareArgs {
    /// Training images to generate (validation gets a tenth more).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Decoding threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: PrepareArgs) -> anyhow::Result<()> {
    let (source, default_out) = match (&args.affectnet, &args.folder, &args.csv) {
        (Some(root), _, _) => (Source::AffectNet { root: root.clone() }, "data/affectnet"),
        (_, Some(root), _) => (Source::Folder { root: root.clone() }, "data/folder"),
        (_, _, Some(file)) => (
            Source::Csv {
                file: file.clone(),
                images: args.images.clone().context("--csv needs --images DIR")?,
            },
            "data/csv",
        ),
        _ => anyhow::bail!("give one of --affectnet, --folder or --csv"),
    };
    let out = args.out.clone().unwrap_or_else(|| default_out.into());
    let config = PrepareConfig {
        size: args.size,
        margin: args.margin,
        num_classes: args.classes as usize,
        shard_size: args.shard_size,
        threads: args.threads,
        val_fraction: args.val_fraction,
        skip_unknown_classes: args.skip_unknown_classes,
        progress: true,
    };
    let (manifest, report) = prepare_with_report(&source, &out, &config)
        .with_context(|| format!("preparing {}", out.display()))?;
    print_summary(&out, &manifest, &report);
    Ok(())
}

fn print_summary(out: &Path, m: &Manifest, r: &RunReport) {
    let mut s = std::io::stdout().lock();
    let _ = writeln!(s, "prepared {} ({} px)", out.display(), m.image_size);
    for (name, split) in &m.splits {
        let _ = writeln!(
            s,
            "  {name:5}: {} rows, {} kept ({} with valence/arousal), {} skipped, {} shards",
            split.rows,
            split.kept,
            split.with_va,
            split.skipped,
            split.shards.len()
        );
    }
    for (reason, rows) in &m.skipped {
        let _ = writeln!(s, "  skipped, {reason}: {}", rows.len());
    }
    let _ = writeln!(
        s,
        "  {} shards written, {} reused; {} images decoded in {:.1} s on {} threads",
        r.shards_written, r.shards_reused, r.images_decoded, r.seconds, r.threads
    );
}

pub fn bench(args: BenchPrepareArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("fer-bench-prepare-{}", std::process::id()));
    let result = bench_in(&root, &args);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn bench_in(root: &Path, args: &BenchPrepareArgs) -> anyhow::Result<()> {
    let src = root.join("affectnet");
    let val = (args.count / 10).max(1);
    let t = std::time::Instant::now();
    bench_data::write_affectnet(&src, args.count, val)?;
    println!(
        "generated {} + {val} JPEGs ({}x{}) in {:.1} s",
        args.count,
        bench_data::WIDTH,
        bench_data::HEIGHT,
        t.elapsed().as_secs_f64()
    );
    let source = Source::AffectNet { root: src };
    for size in [112, 224] {
        let config = PrepareConfig {
            size,
            threads: args.threads,
            ..PrepareConfig::default()
        };
        let out = root.join(format!("out-{size}"));
        let (m, r) = prepare_with_report(&source, &out, &config)?;
        let kept: usize = m.splits.values().map(|s| s.kept).sum();
        println!(
            "S = {size:3}: {kept} images in {:.2} s = {:.0} images/s ({} threads)",
            r.seconds,
            kept as f64 / r.seconds,
            r.threads
        );
    }
    Ok(())
}

/// A small stand-in for real photographs: JPEGs of AffectNet-like size with smooth shading,
/// a bright ellipse for the face and pixel noise (so they compress like photos, not flat art).
mod bench_data {
    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::Context;

    pub const WIDTH: u32 = 480;
    pub const HEIGHT: u32 = 360;

    pub fn write_affectnet(root: &Path, train: usize, val: usize) -> anyhow::Result<()> {
        let lists = root.join("Manually_Annotated_file_lists");
        std::fs::create_dir_all(&lists)?;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for (file, n, tag) in [("training.csv", train, "t"), ("validation.csv", val, "v")] {
            let mut csv = String::from(
                "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n",
            );
            for i in 0..n {
                let rel = format!("{}/{tag}{i:06}.jpg", i % 100);
                let face = 140 + (next(&mut seed) % 120) as u32;
                let x = (next(&mut seed) % (WIDTH - face) as u64) as u32;
                let y = (next(&mut seed) % (HEIGHT - face) as u64) as u32;
                let img = picture(x, y, face, &mut seed);
                let path = root.join("Manually_Annotated_Images").join(&rel);
                std::fs::create_dir_all(path.parent().unwrap())?;
                img.save(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                let code = next(&mut seed) % 8;
                let v = (next(&mut seed) % 2001) as f64 / 1000.0 - 1.0;
                let a = (next(&mut seed) % 2001) as f64 / 1000.0 - 1.0;
                writeln!(csv, "{rel},{x},{y},{face},{face},1.0;2.0,{code},{v},{a}")?;
            }
            std::fs::write(lists.join(file), csv)?;
        }
        Ok(())
    }

    fn next(s: &mut u64) -> u64 {
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn picture(x: u32, y: u32, face: u32, seed: &mut u64) -> image::RgbImage {
        let (cx, cy, r) = (
            (x + face / 2) as f32,
            (y + face / 2) as f32,
            face as f32 / 2.0,
        );
        let mut noise = next(seed);
        image::RgbImage::from_fn(WIDTH, HEIGHT, |px, py| {
            noise = noise
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let n = ((noise >> 59) as i32) - 16;
            let d = ((px as f32 - cx).powi(2) + ((py as f32 - cy) * 1.2).powi(2)).sqrt() / r;
            let base = if d < 1.0 {
                [220.0 - 60.0 * d, 170.0 - 50.0 * d, 140.0 - 40.0 * d]
            } else {
                [
                    40.0 + px as f32 / 4.0,
                    60.0 + py as f32 / 4.0,
                    90.0 + (px + py) as f32 / 8.0,
                ]
            };
            image::Rgb(base.map(|c| (c as i32 + n).clamp(0, 255) as u8))
        })
    }
}
