//! `cargo xtask synth` (in progress).

#[derive(clap::Args)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("synth is not built yet")
}
