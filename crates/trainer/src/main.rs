//! The `trainer` binary: two-stage training, evaluation and prediction for 2Att-2Mt.

use clap::Parser;

fn main() {
    trainer::threads::candle_ops_on_calling_thread();
    trainer::alloc::keep_freed_memory();
    let cli = trainer::cli::Cli::parse();
    if let Err(e) = trainer::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
