//! The `trainer` binary: two-stage training, evaluation and prediction for 2Att-2Mt.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the trainer is not built yet")
}
