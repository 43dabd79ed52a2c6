//! Forward + backward time of the first-level attention block at the model's shapes.
//!
//! `cargo bench -p fer-attention --bench position [-- --steps N]`
//!
//! ResNet-18 at 112 px, batch 32, d = 256, a = 128: the maps of layer1..layer4 (N = 784, 196,
//! 49, 16 positions; the default taps are layer2..layer4). For each map it times the whole
//! `PositionAttention::forward` + `backward()` and the pooling alone (`position_attention` on a
//! ready `p`), with fer-kernels' fused op and with candle's ops (`set_enabled(false)`, the same
//! maths the block used before the fused op), and prints the medians.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fer_attention::{PositionAttention, PositionAttentionConfig};
use fer_test_support::median;

const MAPS: [(&str, usize, usize); 4] = [
    ("layer1", 64, 28),
    ("layer2", 128, 14),
    ("layer3", 256, 7),
    ("layer4", 512, 4),
];
const BATCH: usize = 32;

/// Median milliseconds of `step` over `steps` calls after two untimed ones.
fn time(steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    step()?;
    let mut t = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        step()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut t).expect("at least one timed step"))
}

fn main() -> Result<()> {
    // The tests' `poison` feature reaches this build through the dev-dependencies; the
    // benchmark measures production kernels, which leave fresh outputs unfilled.
    fer_kernels::set_poison(false);
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10);
    let dev = Device::Cpu;
    let cfg = PositionAttentionConfig::default();
    println!(
        "PositionAttention fwd+bwd, B {BATCH}, d {}, a {}, {} cores, median of {steps} (ms)",
        cfg.d,
        cfg.a,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| map | N | block candle | block fused | speed-up | pooling candle | pooling fused | speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, c, s) in MAPS {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let block = PositionAttention::new(c, &cfg, vb)?;
        let f = Var::from_tensor(&Tensor::randn(0f32, 1.0, (BATCH, c, s, s), &dev)?)?;
        let p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (BATCH, s * s, cfg.d), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.06, (cfg.a, cfg.d), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.06, cfg.a, &dev)?)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 0.09, cfg.a, &dev)?)?;
        let mut row = Vec::new();
        for fused in [false, true] {
            fer_kernels::set_enabled(fused);
            row.push(time(steps, || {
                let out = block.forward(&f)?;
                let loss = (out.v.sum_all()? + out.alpha.sqr()?.sum_all()?)?;
                loss.backward().map(|_| ())
            })?);
        }
        for fused in [false, true] {
            fer_kernels::set_enabled(fused);
            row.push(time(steps, || {
                let out = fer_kernels::position_attention(&p, &w, &b, &v)?;
                let loss = (out.ug.sum_all()? + out.alpha.sqr()?.sum_all()?)?;
                loss.backward().map(|_| ())
            })?);
        }
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x |",
            s * s,
            row[0],
            row[1],
            row[0] / row[1],
            row[2],
            row[3],
            row[2] / row[3]
        );
    }
    Ok(())
}
