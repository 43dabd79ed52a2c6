//! The fused basic block against the same block built from candle's own ops in f64: values,
//! batch statistics and every gradient, with and without the downsample branch, on maps the
//! direct 3x3 kernels take (where the CPU has them) and on maps im2col takes.

use candle_core::{DType, Device, Tensor, Var};
use fer_kernels::{basic_block_train, ConvBnArgs};

struct Block {
    x: Tensor,
    /// `(weight, gamma, beta, stride, padding)` of `a`, `b` and the optional downsample.
    convs: Vec<(Tensor, Tensor, Tensor, usize, usize)>,
}

fn rand(dims: &[usize], seed: usize) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0) * 0.9)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn block(b: usize, c: usize, o: usize, hw: usize, stride: usize) -> Block {
    let mut convs = vec![
        (
            rand(&[o, c, 3, 3], 1),
            rand(&[o], 2),
            rand(&[o], 3),
            stride,
            1,
        ),
        (rand(&[o, o, 3, 3], 4), rand(&[o], 5), rand(&[o], 6), 1, 1),
    ];
    if stride != 1 || c != o {
        convs.push((
            rand(&[o, c, 1, 1], 7),
            rand(&[o], 8),
            rand(&[o], 9),
            stride,
            0,
        ));
    }
    Block {
        x: rand(&[b, c, hw, hw], 0),
        convs,
    }
}

/// Output, statistics and the gradients of a fixed weighting of the output in every input,
/// flattened, with the block's tensors in `dtype`.
fn run(blk: &Block, dtype: DType) -> Vec<Vec<f64>> {
    let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
    let x = var(&blk.x);
    let params: Vec<[Var; 3]> = blk
        .convs
        .iter()
        .map(|(w, g, b, _, _)| [var(w), var(g), var(b)])
        .collect();
    let args: Vec<ConvBnArgs> = params
        .iter()
        .zip(&blk.convs)
        .map(|(p, c)| ConvBnArgs {
            weight: p[0].as_tensor(),
            stride: c.3,
            padding: c.4,
            gamma: p[1].as_tensor(),
            beta: p[2].as_tensor(),
        })
        .collect();
    let (y, stats) =
        basic_block_train(x.as_tensor(), args[0], args[1], args.get(2).copied(), 1e-5).unwrap();
    let n = y.elem_count();
    let r: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let r = Tensor::from_vec(r, y.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| -> Vec<f64> {
        let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        t.to_vec1().unwrap()
    };
    let mut all = vec![flat(&y)];
    for s in &stats {
        all.push(flat(&s.mean));
        all.push(flat(&s.var));
    }
    all.push(flat(grads.get(&x).expect("x has a gradient")));
    for p in params.iter().flatten() {
        all.push(flat(grads.get(p).expect("every parameter has a gradient")));
    }
    all
}

fn compare(blk: &Block, what: &str) {
    let got = run(blk, DType::F32);
    let want = run(blk, DType::F64);
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} tensor {k}");
        let scale = w.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let err = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{what} tensor {k}: relative error {err:.2e}");
    }
}

// Every block below has an output map at least half its weights' size, so the CPU runs the
// fused op (smaller maps compose the unfused ops, which their own tests cover).
#[test]
fn identity_block_on_direct_and_im2col_maps() {
    compare(&block(2, 8, 8, 12, 1), "8 -> 8 at 12x12");
    compare(&block(3, 4, 4, 5, 1), "4 -> 4 at 5x5");
}

#[test]
fn downsample_block() {
    compare(&block(4, 8, 16, 11, 2), "8 -> 16, stride 2, 11x11");
    compare(&block(3, 8, 16, 24, 2), "8 -> 16, stride 2, 24x24 (direct)");
    compare(&block(2, 8, 16, 12, 1), "8 -> 16, stride 1, 12x12");
}

#[test]
fn mismatched_branches_are_an_error() {
    let blk = block(2, 8, 16, 12, 2);
    let (wa, ga, ba, ..) = &blk.convs[0];
    let (wb, gb, bb, ..) = &blk.convs[1];
    let a = ConvBnArgs {
        weight: wa,
        stride: 2,
        padding: 1,
        gamma: ga,
        beta: ba,
    };
    let b = ConvBnArgs {
        weight: wb,
        stride: 1,
        padding: 1,
        gamma: gb,
        beta: bb,
    };
    // No downsample: the identity (8 channels at 12x12) cannot be added to 16 at 6x6.
    assert!(basic_block_train(&blk.x, a, b, None, 1e-5).is_err());
}
