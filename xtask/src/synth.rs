//! `cargo xtask synth`: writes the procedural synthetic face set.

use std::path::PathBuf;
use std::time::Instant;

use fer_data::labels::EXPRESSION_NAMES;
use fer_data::synth::{generate, Layout, SynthConfig};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (the default run of `trainer` reads `data/synthetic-raw`).
    #[arg(long, default_value = "data/synthetic-raw")]
    out: PathBuf,
    /// Training images over the 8 classes (balanced); ~2 % rows of codes 8-10 come on top.
    #[arg(long, default_value_t = 8000)]
    train: usize,
    /// Training images per class code 0..=7 instead of --train balanced ones, e.g.
    /// `400,400,400,400,40,40,40,40` for an imbalanced set.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    class_counts: Option<Vec<usize>>,
    /// Validation images over the 8 classes (balanced); ~2 % rows of codes 8-10 come on top.
    #[arg(long, default_value_t = 1600)]
    val: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 96)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `affectnet` (CSV lists + JPEGs) or `folder` (FER-2013 style `{train,test}/<class>/*.png`).
    #[arg(long, default_value = "affectnet")]
    layout: Layout,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let cfg = SynthConfig {
        train: args.train,
        train_class_counts: args.class_counts,
        val: args.val,
        image_size: args.image_size,
        seed: args.seed,
        layout: args.layout,
    };
    let start = Instant::now();
    let summary = generate(&args.out, &cfg)?;
    let secs = start.elapsed().as_secs_f64();
    let total = summary.train.rows + summary.val.rows;
    println!(
        "wrote {total} images to {} in {secs:.1} s ({:.0} images/s)",
        args.out.display(),
        total as f64 / secs.max(1e-9)
    );
    for (name, s) in [("train", &summary.train), ("val", &summary.val)] {
        let counts: Vec<String> = s
            .per_code
            .iter()
            .zip(EXPRESSION_NAMES)
            .filter(|(n, _)| **n > 0)
            .map(|(n, label)| format!("{label} {n}"))
            .collect();
        println!("  {name}: {} rows ({})", s.rows, counts.join(", "));
    }
    Ok(())
}
