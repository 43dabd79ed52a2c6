//! The kernel contract: every op runs on every dtype, the choice is made by `backend` alone,
//! and our kernels agree with the candle twins they stand in for.

use candle_core::{DType, Device, Tensor, Var};
use fer_kernels::{backend, Backend, Op};

fn t(dims: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Inputs of the right shapes for each op, in its argument order.
fn inputs(op: Op, dtype: DType) -> Vec<Tensor> {
    let map = || t(&[2, 4, 7, 7], dtype);
    let ch = || t(&[4], dtype);
    match op {
        Op::Conv2d => vec![map(), t(&[4, 4, 3, 3], dtype)],
        Op::BatchNormTrain => vec![map(), ch(), ch()],
        Op::BatchNormEval => vec![map(), ch(), ch(), ch(), ch().abs().unwrap()],
        Op::ConvBnTrain | Op::ConvBnReluPoolTrain => {
            vec![map(), t(&[4, 4, 3, 3], dtype), ch(), ch()]
        }
        Op::ConvBnEval => vec![
            map(),
            t(&[4, 4, 3, 3], dtype),
            ch(),
            ch(),
            ch(),
            ch().abs().unwrap(),
        ],
        Op::MaxPool3x3S2 => vec![map()],
        Op::AddRelu => vec![map(), map()],
        Op::BasicBlockTrain => vec![
            map(),
            t(&[4, 4, 3, 3], dtype),
            t(&[4, 4, 3, 3], dtype),
            ch(),
            ch(),
            ch(),
            ch(),
        ],
        Op::PositionProjection => vec![map(), t(&[6, 4], dtype), t(&[6], dtype)],
        Op::PositionAttention => vec![
            t(&[2, 5, 6], dtype),
            t(&[3, 6], dtype),
            t(&[3], dtype),
            t(&[3], dtype),
        ],
        Op::LstmCell => vec![t(&[2, 12], dtype), t(&[2, 12], dtype), t(&[2, 3], dtype)],
        Op::GruCell => vec![t(&[2, 9], dtype), t(&[2, 9], dtype), t(&[2, 3], dtype)],
    }
}

/// Runs `op` through its public function; every output, flattened.
fn run(op: Op, x: &[Tensor]) -> Vec<Tensor> {
    let r = match op {
        Op::Conv2d => fer_kernels::conv2d(&x[0], &x[1], 1, 1).map(|y| vec![y]),
        Op::BatchNormTrain => fer_kernels::batch_norm_train(&x[0], &x[1], &x[2], 1e-5, true)
            .map(|(y, s)| vec![y, s.mean, s.var]),
        Op::BatchNormEval => {
            fer_kernels::batch_norm_eval(&x[0], &x[1], &x[2], &x[3], &x[4], 1e-5, true)
                .map(|y| vec![y])
        }
        Op::ConvBnTrain => fer_kernels::conv_bn_train(&x[0], &x[1], 2, 1, &x[2], &x[3], 1e-5, true)
            .map(|(y, s)| vec![y, s.mean, s.var]),
        Op::ConvBnReluPoolTrain => {
            fer_kernels::conv_bn_relu_pool_train(&x[0], &x[1], 1, 1, &x[2], &x[3], 1e-5)
                .map(|(y, s)| vec![y, s.mean, s.var])
        }
        Op::ConvBnEval => {
            fer_kernels::conv_bn_eval(&x[0], &x[1], 1, 1, &x[2], &x[3], &x[4], &x[5], 1e-5, true)
                .map(|y| vec![y])
        }
        Op::MaxPool3x3S2 => fer_kernels::max_pool_3x3_s2(&x[0]).map(|y| vec![y]),
        Op::AddRelu => fer_kernels::add_relu(&x[0], &x[1]).map(|y| vec![y]),
        Op::BasicBlockTrain => {
            let conv = |i: usize| fer_kernels::ConvBnArgs {
                weight: &x[1 + i],
                stride: 1,
                padding: 1,
                gamma: &x[3 + 2 * i],
                beta: &x[4 + 2 * i],
            };
            fer_kernels::basic_block_train(&x[0], conv(0), conv(1), None, 1e-5).map(|(y, s)| {
                let mut all = vec![y];
                all.extend(s.into_iter().flat_map(|s| [s.mean, s.var]));
                all
            })
        }
        Op::PositionProjection => {
            fer_kernels::position_projection(&x[0], &x[1], &x[2]).map(|y| vec![y])
        }
        Op::PositionAttention => {
            fer_kernels::position_attention(&x[0], &x[1], &x[2], &x[3]).map(|p| vec![p.ug, p.alpha])
        }
        Op::LstmCell => fer_kernels::lstm_cell(&x[0], &x[1], &x[2]).map(|(h, c)| vec![h, c]),
        Op::GruCell => fer_kernels::gru_cell(&x[0], &x[1], &x[2]).map(|h| vec![h]),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", op.name()))
        .into_iter()
        .map(|y| y.flatten_all().unwrap().to_dtype(DType::F64).unwrap())
        .collect()
}

/// Every output of `op` and the gradients of a random weighting of them in every input.
fn values_and_grads(op: Op, x: &[Tensor]) -> Vec<Vec<f64>> {
    // Eval-mode BatchNorm's running statistics are constants, as PyTorch's buffers are.
    let differentiable = match op {
        Op::BatchNormEval => 3,
        Op::ConvBnEval => 4,
        _ => x.len(),
    };
    let vars: Vec<Var> = x[..differentiable]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().clone())
        .chain(x[differentiable..].iter().cloned())
        .collect();
    let outs = run(op, &ts);
    let mut loss = Tensor::zeros((), DType::F64, &Device::Cpu).unwrap();
    for (k, y) in outs.iter().enumerate() {
        let n = y.elem_count();
        let r: Vec<f64> = (0..n)
            .map(|i| ((i * 7 + k * 3) as f64 * 0.37).sin())
            .collect();
        let r = Tensor::from_vec(r, n, &Device::Cpu).unwrap();
        loss = (loss + (y * r).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let mut all: Vec<Vec<f64>> = outs.iter().map(|y| y.to_vec1::<f64>().unwrap()).collect();
    for v in &vars {
        let g = grads.get(v).expect("every input is differentiable");
        all.push(
            g.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap(),
        );
    }
    all
}

#[test]
fn f32_on_the_cpu_runs_our_kernel_and_other_dtypes_the_candle_twin() {
    for op in Op::ALL {
        let f32s = inputs(op, DType::F32);
        let refs: Vec<&Tensor> = f32s.iter().collect();
        assert_eq!(backend(op, &refs), Backend::Cpu, "{}", op.name());
        let f64s = inputs(op, DType::F64);
        let refs: Vec<&Tensor> = f64s.iter().collect();
        assert_eq!(backend(op, &refs), Backend::Candle, "{}", op.name());
        // One f64 input among f32 ones is enough to leave the kernel.
        let mut mixed = f32s.clone();
        mixed[0] = f64s[0].clone();
        let refs: Vec<&Tensor> = mixed.iter().collect();
        assert_eq!(backend(op, &refs), Backend::Candle, "{}", op.name());
    }
}

#[test]
fn a_map_that_is_not_four_dimensional_goes_to_the_twin() {
    // BatchNorm over [B, C] features: the twin takes any rank, the kernel only maps.
    let (x, g, b) = (
        t(&[5, 4], DType::F32),
        t(&[4], DType::F32),
        t(&[4], DType::F32),
    );
    assert_eq!(backend(Op::BatchNormTrain, &[&x, &g, &b]), Backend::Candle);
    let (y, stats) = fer_kernels::batch_norm_train(&x, &g, &b, 1e-5, false).unwrap();
    assert_eq!(y.dims(), &[5, 4]);
    assert_eq!(stats.count, 5);
}

/// Each kernel (f32) against its candle twin (the same inputs in f64): values and gradients.
#[test]
fn every_kernel_agrees_with_its_candle_twin() {
    for op in Op::ALL {
        let x = inputs(op, DType::F32);
        let x64: Vec<Tensor> = x.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
        let got = values_and_grads(op, &x);
        let want = values_and_grads(op, &x64);
        assert_eq!(got.len(), want.len(), "{}", op.name());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{} output {k}", op.name());
            let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
            let err = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(
                err < 1e-4,
                "{} output {k}: relative error {err:.2e}",
                op.name()
            );
        }
    }
}

#[test]
fn the_readme_lists_every_op() {
    let readme = include_str!("../README.md");
    for op in Op::ALL {
        assert!(
            readme.contains(&format!("`{}", op.name())),
            "README does not list {}",
            op.name()
        );
    }
}
