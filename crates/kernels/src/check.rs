//! Device checks: each public op of this crate run on a device and on the CPU from the same
//! random inputs, outputs and gradients compared. `trainer gpu-check` prints the rows; the CPU
//! side is the reference because it is the one the unit tests hold against candle's own ops.
//!
//! Adding an op is one entry in [`CASES`]: its input shapes and a function that runs the op on
//! the inputs (as variables) and returns the named tensors to compare, gradients included.

use candle_core::{backprop::GradStore, Device, Result, Tensor, Var};

use crate::dispatch::{backend, Backend, Op};

/// Largest accepted error, relative to the reference tensor's largest magnitude.
pub const TOLERANCE: f32 = 1e-4;

/// One compared tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRow {
    /// The case, e.g. `conv2d 3x3 s1 p1`.
    pub op: &'static str,
    /// The output or gradient, e.g. `y` or `grad x`.
    pub output: String,
    /// What ran on the device: our kernel there or the op's candle twin.
    pub backend: Backend,
    /// max |device - cpu| / max |cpu|.
    pub rel_err: f32,
}

impl CheckRow {
    /// Within [`TOLERANCE`].
    pub fn ok(&self) -> bool {
        self.rel_err <= TOLERANCE
    }
}

/// Runs an op on its inputs and names what to compare.
type RunFn = fn(&[Var]) -> Result<Vec<(String, Tensor)>>;

/// One op on inputs of fixed shapes (drawn from N(0, 1)).
pub struct Case {
    pub op: &'static str,
    /// The op whose implementation the device side runs.
    pub kernel: Op,
    pub shapes: &'static [&'static [usize]],
    run: RunFn,
}

/// The ops checked by [`compare_devices`]. Shapes are small but odd-sized, so that padding,
/// strides and partial tiles are all exercised.
pub const CASES: &[Case] = &[
    Case {
        op: "conv2d 3x3 s1 p1",
        kernel: Op::Conv2d,
        shapes: &[&[2, 8, 13, 13], &[16, 8, 3, 3], &[2, 16, 13, 13]],
        run: |v| conv(v, 1, 1),
    },
    Case {
        op: "conv2d 7x7 s2 p3",
        kernel: Op::Conv2d,
        shapes: &[&[2, 3, 29, 29], &[8, 3, 7, 7], &[2, 8, 15, 15]],
        run: |v| conv(v, 2, 3),
    },
    Case {
        op: "conv2d 1x1 s2 p0",
        kernel: Op::Conv2d,
        shapes: &[&[2, 16, 13, 13], &[32, 16, 1, 1], &[2, 32, 7, 7]],
        run: |v| conv(v, 2, 0),
    },
    Case {
        op: "batch_norm_train",
        kernel: Op::BatchNormTrain,
        shapes: &[&[4, 6, 9, 7], &[6], &[6], &[4, 6, 9, 7]],
        run: |v| batch_norm(v, false),
    },
    Case {
        op: "batch_norm_train + relu",
        kernel: Op::BatchNormTrain,
        shapes: &[&[4, 6, 9, 7], &[6], &[6], &[4, 6, 9, 7]],
        run: |v| batch_norm(v, true),
    },
    Case {
        op: "conv_bn_train 3x3 s2 p1 + relu",
        kernel: Op::ConvBnTrain,
        shapes: &[&[2, 5, 11, 11], &[6, 5, 3, 3], &[6], &[6], &[2, 6, 6, 6]],
        run: |v| conv_bn(v, 2, 1),
    },
    Case {
        op: "conv_bn_relu_pool_train 7x7 s2 p3",
        kernel: Op::ConvBnReluPoolTrain,
        shapes: &[&[2, 3, 29, 29], &[8, 3, 7, 7], &[8], &[8], &[2, 8, 8, 8]],
        run: conv_bn_pool,
    },
    Case {
        op: "conv_bn_eval 3x3 s1 p1 + relu",
        kernel: Op::ConvBnEval,
        shapes: &[
            &[2, 8, 12, 12],
            &[8, 8, 3, 3],
            &[8],
            &[8],
            &[8],
            &[8],
            &[2, 8, 12, 12],
        ],
        run: conv_bn_eval,
    },
    Case {
        op: "max_pool_3x3_s2",
        kernel: Op::MaxPool3x3S2,
        shapes: &[&[2, 4, 15, 14], &[2, 4, 8, 7]],
        run: max_pool,
    },
    Case {
        op: "add_relu",
        kernel: Op::AddRelu,
        shapes: &[&[2, 6, 9, 7], &[2, 6, 9, 7], &[2, 6, 9, 7]],
        run: add_relu,
    },
    Case {
        op: "basic_block_train 3x3 s2 + downsample",
        kernel: Op::BasicBlockTrain,
        shapes: &[
            &[4, 8, 11, 11],
            &[16, 8, 3, 3],
            &[16],
            &[16],
            &[16, 16, 3, 3],
            &[16],
            &[16],
            &[16, 8, 1, 1],
            &[16],
            &[16],
            &[4, 16, 6, 6],
        ],
        run: basic_block,
    },
    Case {
        op: "position_attention",
        kernel: Op::PositionAttention,
        shapes: &[&[2, 13, 6], &[5, 6], &[5], &[5], &[2, 12], &[2, 13]],
        run: attention,
    },
    Case {
        op: "position_projection",
        kernel: Op::PositionProjection,
        shapes: &[&[2, 6, 5, 3], &[4, 6], &[4], &[2, 15, 4]],
        run: projection,
    },
    Case {
        op: "lstm_cell",
        kernel: Op::LstmCell,
        shapes: &[&[3, 20], &[3, 20], &[3, 5], &[3, 5], &[3, 5]],
        run: lstm,
    },
    Case {
        op: "gru_cell",
        kernel: Op::GruCell,
        shapes: &[&[3, 15], &[3, 15], &[3, 5], &[3, 5]],
        run: gru,
    },
];

/// `conv2d(x, w)` and the gradients of `sum(y * r)`; inputs `[x, w, r]`.
fn conv(v: &[Var], stride: usize, padding: usize) -> Result<Vec<(String, Tensor)>> {
    let [x, w, r] = v else { unreachable!() };
    let y = crate::conv2d(x, w, stride, padding)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    with_grads(vec![("y".into(), y)], &grads, &[("x", x), ("w", w)])
}

/// `batch_norm_train(x, gamma, beta)`, its statistics and the gradients of `sum(y * r)`;
/// inputs `[x, gamma, beta, r]`.
fn batch_norm(v: &[Var], relu: bool) -> Result<Vec<(String, Tensor)>> {
    let [x, gamma, beta, r] = v else {
        unreachable!()
    };
    let (y, stats) = crate::batch_norm_train(x, gamma, beta, 1e-5, relu)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    let outputs = vec![
        ("y".into(), y),
        ("mean".into(), stats.mean),
        ("var".into(), stats.var),
    ];
    with_grads(
        outputs,
        &grads,
        &[("x", x), ("gamma", gamma), ("beta", beta)],
    )
}

/// `conv_bn_train(x, w, gamma, beta)` with a ReLU, its statistics and the gradients of
/// `sum(y * r)`; inputs `[x, w, gamma, beta, r]`.
fn conv_bn(v: &[Var], stride: usize, padding: usize) -> Result<Vec<(String, Tensor)>> {
    let [x, w, gamma, beta, r] = v else {
        unreachable!()
    };
    let (y, stats) = crate::conv_bn_train(x, w, stride, padding, gamma, beta, 1e-5, true)?;
    conv_bn_rows(y, stats, r, [x, w, gamma, beta])
}

/// The stem op (7x7 stride-2 conv, BatchNorm, ReLU, max-pool); inputs as [`conv_bn`].
fn conv_bn_pool(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [x, w, gamma, beta, r] = v else {
        unreachable!()
    };
    let (y, stats) = crate::conv_bn_relu_pool_train(x, w, 2, 3, gamma, beta, 1e-5)?;
    conv_bn_rows(y, stats, r, [x, w, gamma, beta])
}

fn conv_bn_rows(
    y: Tensor,
    stats: crate::BatchStats,
    r: &Var,
    [x, w, gamma, beta]: [&Var; 4],
) -> Result<Vec<(String, Tensor)>> {
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    let outputs = vec![
        ("y".into(), y),
        ("mean".into(), stats.mean),
        ("var".into(), stats.var),
    ];
    let vars = [("x", x), ("w", w), ("gamma", gamma), ("beta", beta)];
    with_grads(outputs, &grads, &vars)
}

/// Eval-mode conv + BatchNorm + ReLU and the gradients of `sum(y * r)`; inputs `[x, w, gamma,
/// beta, mean, var (its absolute value is used), r]`.
fn conv_bn_eval(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [x, w, gamma, beta, mean, var, r] = v else {
        unreachable!()
    };
    let var = var.as_tensor().abs()?;
    let y = crate::conv_bn_eval(x, w, 1, 1, gamma, beta, mean, &var, 1e-5, true)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    let vars = [("x", x), ("w", w), ("gamma", gamma), ("beta", beta)];
    with_grads(vec![("y".into(), y)], &grads, &vars)
}

/// `position_projection(f, w, b)` and the gradients of `sum(p * r)`; inputs `[f, w, b, r]`.
fn projection(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [f, w, b, r] = v else { unreachable!() };
    let p = crate::position_projection(f, w, b)?;
    let grads = (&p * r.as_tensor())?.sum_all()?.backward()?;
    with_grads(
        vec![("p".into(), p)],
        &grads,
        &[("f", f), ("w", w), ("b", b)],
    )
}

/// `max_pool_3x3_s2(x)` and the gradient of `sum(y * r)`; inputs `[x, r]`.
fn max_pool(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [x, r] = v else { unreachable!() };
    let y = crate::max_pool_3x3_s2(x)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    with_grads(vec![("y".into(), y)], &grads, &[("x", x)])
}

/// `add_relu(a, b)` and the gradients of `sum(y * r)`; inputs `[a, b, r]`.
fn add_relu(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [a, b, r] = v else { unreachable!() };
    let y = crate::add_relu(a, b)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    with_grads(vec![("y".into(), y)], &grads, &[("a", a), ("b", b)])
}

/// A stride-2 basic block with its downsample branch and the gradients of `sum(y * r)`; inputs
/// `[x, (w, gamma, beta) of a, b and the downsample, r]`.
fn basic_block(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [x, p @ .., r] = v else { unreachable!() };
    let conv = |i: usize, stride: usize, padding: usize| crate::ConvBnArgs {
        weight: p[3 * i].as_tensor(),
        stride,
        padding,
        gamma: p[3 * i + 1].as_tensor(),
        beta: p[3 * i + 2].as_tensor(),
    };
    let (y, _) =
        crate::basic_block_train(x, conv(0, 2, 1), conv(1, 1, 1), Some(conv(2, 2, 0)), 1e-5)?;
    let grads = (&y * r.as_tensor())?.sum_all()?.backward()?;
    let names = [
        "w a", "gamma a", "beta a", "w b", "gamma b", "beta b", "w d", "gamma d", "beta d",
    ];
    let mut named: Vec<(&str, &Var)> = vec![("x", x)];
    named.extend(names.iter().copied().zip(p));
    with_grads(vec![("y".into(), y)], &grads, &named)
}

/// `position_attention(p, w, b, v)` and the gradients of `sum(ug * r_ug) + sum(alpha * r_a)`;
/// inputs `[p, w, b, v, r_ug, r_a]`.
fn attention(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [p, w, b, sv, r_ug, r_a] = v else {
        unreachable!()
    };
    let pool = crate::position_attention(p, w, b, sv)?;
    let loss = ((&pool.ug * r_ug.as_tensor())?.sum_all()?
        + (&pool.alpha * r_a.as_tensor())?.sum_all()?)?;
    let grads = loss.backward()?;
    let outputs = vec![("ug".into(), pool.ug), ("alpha".into(), pool.alpha)];
    with_grads(outputs, &grads, &[("p", p), ("w", w), ("b", b), ("v", sv)])
}

/// `lstm_cell(gx, gh, c)` and the gradients of `sum(h' * r_h) + sum(c' * r_c)`;
/// inputs `[gx, gh, c, r_h, r_c]`.
fn lstm(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [gx, gh, c, r_h, r_c] = v else {
        unreachable!()
    };
    let (h2, c2) = crate::lstm_cell(gx, gh, c)?;
    let loss = ((&h2 * r_h.as_tensor())?.sum_all()? + (&c2 * r_c.as_tensor())?.sum_all()?)?;
    let grads = loss.backward()?;
    let outputs = vec![("h".into(), h2), ("c".into(), c2)];
    with_grads(outputs, &grads, &[("gx", gx), ("gh", gh), ("c", c)])
}

/// `gru_cell(gx, gh, h)` and the gradients of `sum(h' * r)`; inputs `[gx, gh, h, r]`.
fn gru(v: &[Var]) -> Result<Vec<(String, Tensor)>> {
    let [gx, gh, h, r] = v else { unreachable!() };
    let h2 = crate::gru_cell(gx, gh, h)?;
    let grads = (&h2 * r.as_tensor())?.sum_all()?.backward()?;
    with_grads(
        vec![("h".into(), h2)],
        &grads,
        &[("gx", gx), ("gh", gh), ("h", h)],
    )
}

fn with_grads(
    mut outputs: Vec<(String, Tensor)>,
    grads: &GradStore,
    vars: &[(&str, &Var)],
) -> Result<Vec<(String, Tensor)>> {
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
        outputs.push((format!("grad {name}"), g.clone()));
    }
    Ok(outputs)
}

/// Every case of [`CASES`] on `dev` against the CPU: one row per output and gradient.
/// Every kernel output is poisoned (NaN) first, so unwritten elements fail.
pub fn compare_devices(dev: &Device) -> Result<Vec<CheckRow>> {
    // Restored afterwards: a test build runs poisoned throughout (the `poison` feature).
    let was = crate::support::out::set_poison(true);
    let rows = CASES
        .iter()
        .map(|case| compare_case(case, case.run, dev))
        .collect::<Result<Vec<_>>>();
    crate::support::out::set_poison(was);
    rows.map(|r| r.concat())
}

/// `case` on the CPU (the reference) against `run` on `dev`.
fn compare_case(case: &Case, run: RunFn, dev: &Device) -> Result<Vec<CheckRow>> {
    let inputs = case
        .shapes
        .iter()
        .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu))
        .collect::<Result<Vec<_>>>()?;
    let on = |d: &Device| -> Result<Vec<Var>> {
        inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(d)?))
            .collect()
    };
    let want = (case.run)(&on(&Device::Cpu)?)?;
    let there = on(dev)?;
    let ran = backend(
        case.kernel,
        &there.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(),
    );
    let got = run(&there)?;
    if want.len() != got.len() {
        return Err(crate::KernelError::Storage(format!(
            "{}: {} outputs on the CPU, {} on the device",
            case.op,
            want.len(),
            got.len()
        ))
        .into());
    }
    want.iter()
        .zip(&got)
        .map(|((name, w), (_, g))| {
            Ok(CheckRow {
                op: case.op,
                output: name.clone(),
                backend: ran,
                rel_err: rel_err(g, w)?,
            })
        })
        .collect()
}

/// max |got - want| / max |want|, in f64 on the CPU; infinite when the shapes differ.
fn rel_err(got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        return Ok(f32::INFINITY);
    }
    let got = got
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?;
    let want = want.to_dtype(candle_core::DType::F64)?;
    let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f64>()?;
    let e = diff / scale.max(1e-12);
    // NaN compares false with everything: report it as infinite so that it fails.
    Ok(if e.is_nan() { f32::INFINITY } else { e as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_against_itself_is_exact_and_covers_every_case() {
        let rows = compare_devices(&Device::Cpu).unwrap();
        for case in CASES {
            assert!(rows.iter().any(|r| r.op == case.op), "{} not run", case.op);
        }
        // conv: y + 2 grads; batch norm: y, mean, var + 3 grads; max-pool: y + 1 grad;
        // add_relu: y + 2 grads; attention: ug, alpha + 4 grads; LSTM: h, c + 3 grads;
        // GRU: h + 3 grads; conv + batch norm (two cases): y, mean, var + 4 grads; projection:
        // p + 3 grads; basic block: y + 10 grads; eval conv + batch norm: y + 4 grads.
        assert_eq!(
            rows.len(),
            3 * 3 + 2 * 6 + 2 + 3 + 6 + 5 + 4 + 2 * 7 + 4 + 11 + 5,
            "{rows:#?}"
        );
        for r in &rows {
            assert!(r.rel_err <= 1e-6, "{r:?}");
        }
    }

    /// An op that is off by a little more than the tolerance in one gradient is flagged, in that
    /// row only.
    #[test]
    fn a_wrong_gradient_is_flagged() {
        let wrong: RunFn = |v| {
            let mut out = conv(v, 1, 1)?;
            let (_, dw) = &mut out[2];
            let scale = dw.abs()?.max_all()?.to_scalar::<f32>()?;
            let bump = Tensor::full(3.0 * TOLERANCE * scale, dw.dims(), dw.device())?
                .narrow(0, 0, 1)?
                .pad_with_zeros(0, 0, dw.dim(0)? - 1)?;
            *dw = (&*dw + bump)?;
            Ok(out)
        };
        let rows = compare_case(&CASES[0], wrong, &Device::Cpu).unwrap();
        let bad: Vec<_> = rows.iter().filter(|r| !r.ok()).collect();
        assert_eq!(bad.len(), 1, "{rows:#?}");
        assert_eq!(bad[0].output, "grad w");
        let e = bad[0].rel_err;
        assert!((e - 3.0 * TOLERANCE).abs() < 1e-5, "{e}");
    }

    #[test]
    fn nan_and_shape_mismatches_fail() {
        let a = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let nan = Tensor::new(&[f32::NAN, 2.0], &Device::Cpu).unwrap();
        let longer = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        assert_eq!(rel_err(&nan, &a).unwrap(), f32::INFINITY);
        assert_eq!(rel_err(&longer, &a).unwrap(), f32::INFINITY);
    }
}
