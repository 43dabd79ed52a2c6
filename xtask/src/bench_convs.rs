//! `cargo xtask bench-convs`: where a training step's conv time goes, one trunk conv at a time.
//!
//! For one `bench-train` config it lists the distinct convs of the model's trunk
//! (`ResNet::conv_shapes`) and times each as the trainer runs it: the fused training conv +
//! BatchNorm + ReLU (`fer_kernels::conv_bn_train`) forward, then the backward of
//! `sum(y * r)`. With `--vs-pytorch` the same shapes go through PyTorch's conv, BatchNorm and
//! ReLU (`tests/reference/bench/bench_convs.py`), so the table says which layers carry the gap
//! between the whole steps that `bench-train` compares.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{ConvShape, ResNet};
use serde::{Deserialize, Serialize};
use trainer::bench::{Case, CASES, WARMUP};

use crate::bench_train::{
    child_json, pytorch_available, reference_script, start_like_the_trainer, threads_or_cores,
};

#[derive(clap::Args)]
pub struct BenchConvsArgs {
    /// The `bench-train` config whose trunk is timed (a to e; see `bench-train --help`).
    #[arg(long, default_value = "d", value_parser = ["a", "b", "c", "d", "e"])]
    config: String,
    /// Timed rounds per conv (after 2 warm-up rounds); the median is reported.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Compute threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Also time PyTorch's conv + BatchNorm + ReLU on the same shapes.
    #[arg(long)]
    vs_pytorch: bool,
    /// Print one JSON array instead of the table.
    #[arg(long)]
    json: bool,
}

/// One distinct conv geometry of the trunk and how often the trunk runs it.
#[derive(Clone, Debug, Serialize)]
struct Group {
    /// The first conv of the trunk with this geometry (its label names it).
    #[serde(flatten)]
    shape: ConvShape,
    count: usize,
    /// Whether the backward computes the input's gradient (all but the stem, whose input is the
    /// image batch).
    input_grad: bool,
}

/// Median milliseconds of one conv's forward and backward.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Times {
    forward_ms: f64,
    backward_ms: f64,
}

impl Times {
    fn total(&self) -> f64 {
        self.forward_ms + self.backward_ms
    }
}

#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    group: Group,
    forward_gflop: f64,
    ours: Times,
    #[serde(skip_serializing_if = "Option::is_none")]
    pytorch: Option<Times>,
}

/// The trunk's convs grouped by geometry, in order of first appearance.
fn groups(shapes: &[ConvShape]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let input_grad = i > 0;
        let same = |g: &Group| g.input_grad == input_grad && g.shape.same_geometry(s);
        match out.iter_mut().find(|g| same(g)) {
            Some(g) => g.count += 1,
            None => out.push(Group {
                shape: s.clone(),
                count: 1,
                input_grad,
            }),
        }
    }
    out
}

fn trunk_shapes(case: &Case) -> anyhow::Result<Vec<ConvShape>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = ResNet::new(&case.model().backbone, vb).context("building the trunk")?;
    Ok(net.conv_shapes(case.size))
}

pub fn run(args: BenchConvsArgs) -> anyhow::Result<()> {
    let threads = threads_or_cores(args.threads);
    let case = CASES
        .iter()
        .find(|c| c.name == args.config)
        .expect("clap checks the config name");
    start_like_the_trainer(threads)?;
    let groups = groups(&trunk_shapes(case)?);
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "bench-convs: the trunk of {}, {threads} threads, {WARMUP} warm-up + {} timed rounds \
         per conv, median; conv + BatchNorm + ReLU, forward and backward of sum(y * r)",
        case.label(),
        args.steps
    ));
    let torch = if args.vs_pytorch && pytorch_available(&say) {
        Some(run_pytorch(&groups, case.batch, args.steps, threads)?)
    } else {
        None
    };
    let mut rows = Vec::with_capacity(groups.len());
    for (i, g) in groups.into_iter().enumerate() {
        let ours = time_ours(&g, case.batch, args.steps as usize)
            .with_context(|| format!("timing {}", g.shape.label))?;
        rows.push(Row {
            forward_gflop: g.shape.forward_flops(case.batch) / 1e9,
            pytorch: torch.as_ref().map(|t| t[i]),
            group: g,
            ours,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// Median forward and backward times of `conv_bn_train` (+ ReLU) on random data.
fn time_ours(g: &Group, batch: usize, steps: usize) -> anyhow::Result<Times> {
    let dev = &Device::Cpu;
    let s = &g.shape;
    let (c, o, k, n) = (s.in_channels, s.out_channels, s.kernel, s.in_size);
    let x = Tensor::randn(0f32, 1.0, (batch, c, n, n), dev)?;
    let x = if g.input_grad {
        Var::from_tensor(&x)?.as_tensor().clone()
    } else {
        x
    };
    let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (o, c, k, k), dev)? * 0.1)?)?;
    let gamma = Var::from_tensor(&Tensor::ones(o, DType::F32, dev)?)?;
    let beta = Var::from_tensor(&Tensor::zeros(o, DType::F32, dev)?)?;
    let m = s.out_size();
    let r = Tensor::randn(0f32, 1.0, (batch, o, m, m), dev)?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for round in 0..WARMUP + steps {
        let t = Instant::now();
        let (y, _) = fer_kernels::conv_bn_train(
            &x,
            w.as_tensor(),
            s.stride,
            s.padding,
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
            true,
        )?;
        let f = t.elapsed().as_secs_f64();
        let loss = (y * &r)?.sum_all()?;
        let t = Instant::now();
        let grads = loss.backward()?;
        let b = t.elapsed().as_secs_f64();
        anyhow::ensure!(grads.get(w.as_tensor()).is_some(), "no weight gradient");
        if round >= WARMUP {
            fwd.push(f * 1e3);
            bwd.push(b * 1e3);
        }
    }
    let median = |xs: &mut [f64]| fer_measure::median(xs).expect("at least one timed round");
    Ok(Times {
        forward_ms: median(&mut fwd),
        backward_ms: median(&mut bwd),
    })
}

fn run_pytorch(
    groups: &[Group],
    batch: usize,
    steps: u64,
    threads: usize,
) -> anyhow::Result<Vec<Times>> {
    let mut cmd = Command::new("python3");
    cmd.arg(reference_script("bench_convs.py"))
        .args(["--shapes-json", &serde_json::to_string(groups)?])
        .args(["--batch", &batch.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string());
    let times: Vec<Times> = serde_json::from_str(&child_json(cmd)?)?;
    anyhow::ensure!(
        times.len() == groups.len(),
        "the PyTorch script timed {} convs of {}",
        times.len(),
        groups.len()
    );
    Ok(times)
}

fn print_table(rows: &[Row]) {
    let torch = rows.iter().all(|r| r.pytorch.is_some());
    print!(
        "{:24} {:>5} {:>20} {:>7} {:>9} {:>9}",
        "conv (first of group)", "count", "C->O kxk/s @ HxW", "GFLOP", "fwd ms", "bwd ms"
    );
    if torch {
        print!(" {:>9} {:>9} {:>7}", "PT fwd", "PT bwd", "PT/ours");
    }
    println!();
    let (mut ours_total, mut torch_total) = (0.0, 0.0);
    for r in rows {
        let (g, count) = (&r.group.shape, r.group.count);
        let geom = format!(
            "{}->{} {}x{}/{} @ {}",
            g.in_channels, g.out_channels, g.kernel, g.kernel, g.stride, g.in_size
        );
        print!(
            "{:24} {:>5} {:>20} {:>7.3} {:>9.2} {:>9.2}",
            g.label, count, geom, r.forward_gflop, r.ours.forward_ms, r.ours.backward_ms
        );
        ours_total += count as f64 * r.ours.total();
        if let Some(t) = r.pytorch {
            torch_total += count as f64 * t.total();
            print!(
                " {:>9.2} {:>9.2} {:>7.2}",
                t.forward_ms,
                t.backward_ms,
                t.total() / r.ours.total()
            );
        }
        println!();
    }
    print!("all convs, each counted as often as it runs: ours {ours_total:.1} ms");
    if torch {
        print!(
            ", PyTorch {torch_total:.1} ms, PyTorch / ours {:.2}",
            torch_total / ours_total
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fer_trunk_has_eleven_distinct_convs() {
        let case = CASES.iter().find(|c| c.name == "d").unwrap();
        let g = groups(&trunk_shapes(case).unwrap());
        let counts: Vec<usize> = g.iter().map(|g| g.count).collect();
        // Stem; layer1's four; then per deeper stage its strided conv, the three stride-1 convs
        // of its own width, and its downsample.
        assert_eq!(counts, [1, 4, 1, 3, 1, 1, 3, 1, 1, 3, 1]);
        assert_eq!(counts.iter().sum::<usize>(), 20);
        assert!(!g[0].input_grad && g[1..].iter().all(|g| g.input_grad));
        assert_eq!(g[1].shape.label, "layer1.0.conv1");
        let s = &g[3].shape;
        assert_eq!((s.in_size, s.in_channels, s.stride), (12, 64, 1));
    }
}
