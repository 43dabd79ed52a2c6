//! `cargo xtask prepare-data` and `cargo xtask bench-prepare`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fer_data::manifest::Manifest;
use fer_data::prepare::{prepare_with_report, PrepareConfig, RunReport, Source};
use fer_data::synth::SynthConfig;

#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("source").required(true).args(["affectnet", "folder", "csv"])
))]
pub struct PrepareArgs {
    /// AffectNet root (holds Manually_Annotated_file_lists/ and Manually_Annotated_Images/).
    #[arg(long, value_name = "DIR")]
    affectnet: Option<PathBuf>,
    /// Image folder per class: DIR/train/<class>/*.{jpg,png,bmp,tiff,webp,gif} (any case),
    /// plus optional DIR/val/ and DIR/test/ in the same layout.
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
    /// When the source has no validation split of its own (AffectNet; folders without val/; a
    /// CSV without `val` rows): the share of each class's training rows carved into `val`.
    /// The source's test split (AffectNet's validation.csv, a test/ folder, CSV `test` rows)
    /// becomes `test` and is never used for a training decision.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of the carve: which training rows go to `val`.
    #[arg(long, default_value_t = 0)]
    val_seed: u64,
    /// Count images in unknown class folders as skipped instead of failing.
    #[arg(long)]
    skip_unknown_classes: bool,
}

#[derive(clap::Args)]
pub struct BenchPrepareArgs {
    /// Training images to generate (validation gets a tenth more).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Side of the generated source images (AffectNet's are mostly a few hundred pixels).
    #[arg(long, default_value_t = 448)]
    image_size: u32,
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
        val_seed: args.val_seed,
        skip_unknown_classes: args.skip_unknown_classes,
        progress: true,
    };
    let (manifest, report) = prepare_with_report(&source, &out, &config)
        .with_context(|| format!("preparing a dataset into {}", out.display()))?;
    print_summary(&out, &manifest, &report);
    Ok(())
}

fn print_summary(out: &Path, m: &Manifest, r: &RunReport) {
    let mut s = std::io::stdout().lock();
    let _ = writeln!(s, "prepared {} ({} px)", out.display(), m.image_size);
    for name in fer_data::prepare::SPLITS {
        let Some(split) = m.splits.get(name) else {
            let _ = writeln!(s, "  {name:5}: none in the source");
            continue;
        };
        let _ = writeln!(
            s,
            "  {name:5}: {} rows, {} kept ({} with valence/arousal), {} skipped, {} shards; from {}",
            split.rows,
            split.kept,
            split.with_va,
            split.skipped,
            split.shards.len(),
            m.split_origins.get(name).map_or("?", String::as_str)
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
    for p in &r.shards_damaged {
        let _ = writeln!(
            s,
            "  re-made {}: missing, cut short or its checksum no longer matched",
            p.display()
        );
    }
}

pub fn bench(args: BenchPrepareArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("fer-bench-prepare-{}", std::process::id()));
    let result = bench_in(&root, &args);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn bench_in(root: &Path, args: &BenchPrepareArgs) -> anyhow::Result<()> {
    let src = root.join("affectnet");
    let synth = SynthConfig {
        train: args.count,
        val: (args.count / 10).max(8),
        image_size: args.image_size,
        ..SynthConfig::default()
    };
    let t = std::time::Instant::now();
    fer_data::synth::generate(&src, &synth)?;
    println!(
        "generated {} + {} synthetic faces ({px}x{px} JPEGs) in {:.1} s",
        synth.train,
        synth.val,
        t.elapsed().as_secs_f64(),
        px = args.image_size
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
