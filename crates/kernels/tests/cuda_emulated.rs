//! The CUDA kernels (cuda/fer_kernels.cu) run on the CPU through a small emulation harness
//! (tests/cuda_emulated/harness.cpp, built here with g++), composed exactly as the ops' `cuda.rs`
//! files compose them, against the CPU ops that the other tests hold against candle. A GPU checks the
//! same again in `trainer gpu-check`; this catches indexing and formula mistakes on any machine.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};

/// Threads per block in the emulation: odd and small, so every strided loop wraps.
const THREADS: usize = 7;

/// The harness binary, built once; `None` (the test skips) where there is no g++, unless
/// `FER_REQUIRE_ASSETS` is set, as CI does, where a missing compiler fails the tests.
fn harness() -> Option<&'static PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulated");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fer-cuda-harness");
        let status = match Command::new("g++")
            .args(["-std=c++20", "-O1", "-pthread"])
            .arg(dir.join("harness.cpp"))
            .arg("-o")
            .arg(&out)
            .status()
        {
            Ok(status) => status,
            Err(e) if std::env::var_os("FER_REQUIRE_ASSETS").is_none() => {
                eprintln!("skipped: the CUDA emulation needs g++ (C++20): {e}");
                return None;
            }
            Err(e) => panic!("g++ (C++20) is needed to emulate the CUDA kernels: {e}"),
        };
        assert!(status.success(), "g++ failed on the harness: {status}");
        Some(out)
    })
    .as_ref()
}

/// Runs kernel `name` with int arguments `ints` on `inputs`; returns outputs of `out_lens`.
fn run(name: &str, ints: &[usize], inputs: &[&Tensor], out_lens: &[usize]) -> Vec<Vec<f32>> {
    let join =
        |v: &mut dyn Iterator<Item = usize>| v.map(|x| x.to_string()).collect::<Vec<_>>().join(" ");
    let data: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let mut header = format!("{name}\n{THREADS}\n");
    header += &(join(&mut ints.iter().copied()) + "\n");
    header += &(join(&mut data.iter().map(|d| d.len())) + "\n");
    header += &(join(&mut out_lens.iter().copied()) + "\n");
    let mut child = Command::new(harness().expect("checked by the test"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(header.as_bytes()).unwrap();
        for d in &data {
            let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
            stdin.write_all(&bytes).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{name}: harness failed ({})",
        out.status
    );
    let floats: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(floats.len(), out_lens.iter().sum::<usize>(), "{name}");
    let mut rest = floats.as_slice();
    out_lens
        .iter()
        .map(|&n| {
            let (a, b) = rest.split_at(n);
            rest = b;
            a.to_vec()
        })
        .collect()
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    // Deterministic without an RNG crate in the call: sin of a scrambled index.
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 * 6.0 - 3.0)
        .map(|x| x.sin() * 1.5)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn var(dims: &[usize], seed: u64) -> Var {
    Var::from_tensor(&randn(dims, seed)).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |got - want| <= 1e-4 * max |want| (and nothing NaN: unwritten outputs are NaN).
fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: kernel {g}, CPU {w} (scale {scale})"
        );
    }
}

#[test]
fn lstm_cell_kernels_match_the_cpu_op() {
    if harness().is_none() {
        return;
    }
    let (b, h) = (3, 5);
    let (gx, gh, c) = (var(&[b, 4 * h], 1), var(&[b, 4 * h], 2), var(&[b, h], 3));
    let (dh, dc) = (randn(&[b, h], 4), randn(&[b, h], 5));
    let (hn, cn) = fer_kernels::lstm_cell(&gx, &gh, &c).unwrap();
    let loss = ((&hn * &dh).unwrap().sum_all().unwrap() + (&cn * &dc).unwrap().sum_all().unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let out = run("fer_lstm_fwd", &[b, h], &[&gx, &gh, &c], &[2 * b * h]);
    let want = Tensor::cat(&[&hn, &cn], 0).unwrap();
    close("lstm out", &out[0], &vec(&want));
    let dout = Tensor::cat(&[&dh, &dc], 0).unwrap();
    let outs = Tensor::from_vec(out[0].clone(), 2 * b * h, &Device::Cpu).unwrap();
    let g = run(
        "fer_lstm_bwd",
        &[b, h],
        &[&gx, &gh, &c, &outs, &dout],
        &[b * 4 * h, b * h],
    );
    close("lstm dpre", &g[0], &vec(grads.get(&gx).unwrap()));
    close("lstm dpre (gh)", &g[0], &vec(grads.get(&gh).unwrap()));
    close("lstm dc", &g[1], &vec(grads.get(&c).unwrap()));
}

#[test]
fn gru_cell_kernels_match_the_cpu_op() {
    if harness().is_none() {
        return;
    }
    let (b, h) = (4, 3);
    let (gx, gh, hp) = (var(&[b, 3 * h], 6), var(&[b, 3 * h], 7), var(&[b, h], 8));
    let dh = randn(&[b, h], 9);
    let hn = fer_kernels::gru_cell(&gx, &gh, &hp).unwrap();
    let grads = (&hn * &dh).unwrap().sum_all().unwrap().backward().unwrap();
    let out = run("fer_gru_fwd", &[b, h], &[&gx, &gh, &hp], &[b * h]);
    close("gru out", &out[0], &vec(&hn));
    let lens = [b * 3 * h, b * 3 * h, b * h];
    let g = run("fer_gru_bwd", &[b, h], &[&gx, &gh, &hp, &dh], &lens);
    close("gru dgx", &g[0], &vec(grads.get(&gx).unwrap()));
    close("gru dgh", &g[1], &vec(grads.get(&gh).unwrap()));
    close("gru dh", &g[2], &vec(grads.get(&hp).unwrap()));
}

#[test]
fn attention_kernels_with_the_products_around_them_match_the_cpu_op() {
    if harness().is_none() {
        return;
    }
    // More positions and features than threads per block: the strided loops wrap.
    let (b, n, d, a) = (3, 11, 9, 5);
    let (p, w) = (var(&[b, n, d], 10), var(&[a, d], 11));
    let (bias, v) = (var(&[a], 12), var(&[a], 13));
    let pool = fer_kernels::position_attention(&p, &w, &bias, &v).unwrap();
    let (du, dg, dal) = (randn(&[b, d], 14), randn(&[b, d], 15), randn(&[b, n], 16));
    let loss = [(&pool.u, &du), (&pool.g, &dg), (&pool.alpha, &dal)]
        .iter()
        .map(|(t, r)| (*t * *r).unwrap().sum_all().unwrap())
        .reduce(|x, y| (x + y).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();

    // As cuda.rs: s = p W^T (a cuBLAS product there), then the pooling kernel.
    let s = p
        .reshape((b * n, d))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap();
    let bv = Tensor::stack(&[bias.as_tensor(), v.as_tensor()], 0).unwrap();
    let packed_len = b * (2 * d + n);
    let out = run("fer_attn_fwd", &[n, d, a, b], &[&s, &p, &bv], &[packed_len]);
    let ug = Tensor::cat(&[&pool.u, &pool.g], 1).unwrap();
    let want: Vec<f32> = [vec(&ug), vec(&pool.alpha)].concat();
    close("attention packed", &out[0], &want);

    let dout: Vec<f32> = [vec(&Tensor::cat(&[&du, &dg], 1).unwrap()), vec(&dal)].concat();
    let dout = Tensor::from_vec(dout, packed_len, &Device::Cpu).unwrap();
    let outs = Tensor::from_vec(out[0].clone(), packed_len, &Device::Cpu).unwrap();
    let g = run(
        "fer_attn_bwd",
        &[n, d, a, b],
        &[&s, &p, &bv, &outs, &dout],
        &[b * n * d, b * n * a, b * 2 * a],
    );
    let t = |v: &[f32], dims: &[usize]| Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap();
    let ds = t(&g[1], &[b * n, a]);
    // The matmul's own backward adds ds W to dp and gives dW = ds^T p.
    let dp = (t(&g[0], &[b * n, d]) + ds.matmul(&w).unwrap()).unwrap();
    let dw = ds
        .t()
        .unwrap()
        .matmul(&p.reshape((b * n, d)).unwrap())
        .unwrap();
    let dbv = t(&g[2], &[b, 2, a]).sum(0).unwrap();
    close("attention dp", &vec(&dp), &vec(grads.get(&p).unwrap()));
    close("attention dw", &vec(&dw), &vec(grads.get(&w).unwrap()));
    close(
        "attention db",
        &vec(&dbv.get(0).unwrap()),
        &vec(grads.get(&bias).unwrap()),
    );
    close(
        "attention dv",
        &vec(&dbv.get(1).unwrap()),
        &vec(grads.get(&v).unwrap()),
    );
}

#[test]
fn conv_gradient_kernels_with_the_products_around_them_match_the_cpu_op() {
    if harness().is_none() {
        return;
    }
    for (b, c, hw, o, k, stride, pad) in [
        (2, 3, 9, 4, 3, 1, 1),
        (2, 3, 11, 5, 3, 2, 1),
        (1, 2, 13, 3, 7, 2, 3),
        (3, 4, 7, 6, 1, 2, 0),
    ] {
        let case = format!("k{k} s{stride} p{pad}");
        let x = var(&[b, c, hw, hw + 1], 20);
        let w = var(&[o, c, k, k], 21);
        let y = fer_kernels::conv2d(&x, &w, stride, pad).unwrap();
        let (_, _, ho, wo) = y.dims4().unwrap();
        let dy = randn(y.dims(), 22);
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let geom = [b, c, hw, hw + 1, k, k, stride, pad, ho, wo];
        let kk = c * k * k;
        // As cuda.rs: dy as [B*Ho*Wo, O], dcol = dyT w, dx = col2im(dcol), dw = dyT^T im2col(x).
        let dyt = dy
            .permute((0, 2, 3, 1))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b * ho * wo, o))
            .unwrap();
        let dcol = dyt.matmul(&w.reshape((o, kk)).unwrap()).unwrap();
        let dx = run("fer_col2im", &geom, &[&dcol], &[x.elem_count()]);
        close(
            &format!("conv dx {case}"),
            &dx[0],
            &vec(grads.get(&x).unwrap()),
        );
        let col = run("fer_im2col", &geom, &[&x], &[b * ho * wo * kk]);
        let col = Tensor::from_vec(col[0].clone(), (b * ho * wo, kk), &Device::Cpu).unwrap();
        let dw = dyt.t().unwrap().matmul(&col).unwrap();
        close(
            &format!("conv dw {case}"),
            &vec(&dw),
            &vec(grads.get(&w).unwrap()),
        );
    }
}

#[test]
fn the_harness_reports_unwritten_outputs_as_nan() {
    if harness().is_none() {
        return;
    }
    // A kernel asked for fewer elements than the output holds leaves the rest poisoned: the
    // comparisons above would fail on it, so a kernel that skips elements cannot pass.
    let c = randn(&[2, 3], 30);
    let (gx, gh) = (randn(&[2, 12], 31), randn(&[2, 12], 32));
    let out = run("fer_lstm_fwd", &[1, 3], &[&gx, &gh, &c], &[12]);
    // One row: h' in 0..3, c' in 3..6 (the planes are `b * h` apart), nothing after.
    assert!(out[0][..6].iter().all(|x| x.is_finite()));
    assert!(out[0][6..].iter().all(|x| x.is_nan()));
    let fill = run("fer_fill", &[], &[], &[10]);
    assert_eq!(fill[0], vec![2.5; 10]);
}
