//! `cargo xtask prepare-data` and `bench-prepare` (in progress).

#[derive(clap::Args)]
pub struct PrepareArgs {}

#[derive(clap::Args)]
pub struct BenchPrepareArgs {}

pub fn run(_args: PrepareArgs) -> anyhow::Result<()> {
    anyhow::bail!("prepare-data is not built yet")
}

pub fn bench(_args: BenchPrepareArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench-prepare is not built yet")
}
