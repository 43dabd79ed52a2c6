//! `conv_bn_eval` against the same conv + eval BatchNorm (+ ReLU) in candle's own ops in f64:
//! the output and the gradients in the input, the weight, the scale and the shift, on shapes that
//! take each of the conv's CPU paths (the direct kernels for 10x10 maps and up, sixteen images
//! to a vector below, im2col + GEMM for everything else) and so each place where the
//! normalisation is applied to a finished block.

use candle_core::{DType, Device, Tensor, Var};

fn vals(dims: &[usize], k: f64, offset: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * k).sin() + offset) as f32)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Output and gradients of `sum(y * r)` in x, w, gamma, beta, all in `dtype`.
fn run(
    x: &Tensor,
    w: &Tensor,
    (stride, padding): (usize, usize),
    relu: bool,
    dtype: DType,
) -> Vec<Vec<f64>> {
    let o = w.dims()[0];
    let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
    let (xv, wv) = (var(x), var(w));
    let (gamma, beta) = (var(&vals(&[o], 0.7, 1.0)), var(&vals(&[o], 0.3, 0.0)));
    let mean = vals(&[o], 0.5, 0.0).to_dtype(dtype).unwrap();
    let v = vals(&[o], 0.9, 1.5).to_dtype(dtype).unwrap();
    let y = fer_kernels::conv_bn_eval(
        xv.as_tensor(),
        wv.as_tensor(),
        stride,
        padding,
        gamma.as_tensor(),
        beta.as_tensor(),
        &mean,
        &v,
        1e-5,
        relu,
    )
    .unwrap();
    let r = vals(y.dims(), 0.37, 0.0).to_dtype(dtype).unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| -> Vec<f64> {
        let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        t.to_vec1().unwrap()
    };
    let mut all = vec![flat(&y)];
    for v in [&xv, &wv, &gamma, &beta] {
        all.push(flat(grads.get(v).expect("a gradient")));
    }
    all
}

fn compare(x: [usize; 4], o: usize, k: usize, sp: (usize, usize), relu: bool) {
    let x = vals(&x, 0.31, 0.0);
    let w = vals(&[o, x.dims()[1], k, k], 0.17, 0.0);
    let got = run(&x, &w, sp, relu, DType::F32);
    let want = run(&x, &w, sp, relu, DType::F64);
    let what = format!("{:?} -> {o}, {k}x{k}, {sp:?}, relu {relu}", x.dims());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} tensor {i}");
        let scale = w.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let err = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{what} tensor {i}: relative error {err:.2e}");
    }
}

#[test]
fn direct_kernel_maps() {
    compare([2, 8, 12, 12], 16, 3, (1, 1), true);
    compare([2, 8, 12, 12], 8, 3, (1, 1), false);
}

#[test]
fn sixteen_images_to_a_vector() {
    // 32 images: a sixteen per thread on two threads (one thread runs both).
    compare([32, 8, 4, 4], 8, 3, (1, 1), true);
}

#[test]
fn im2col_maps() {
    compare([2, 3, 11, 11], 6, 3, (2, 1), true);
    compare([3, 5, 7, 7], 4, 1, (1, 0), false);
}

#[test]
fn mismatched_statistics_are_an_error() {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((1, 2, 4, 4), DType::F32, dev).unwrap();
    let w = Tensor::zeros((3, 2, 3, 3), DType::F32, dev).unwrap();
    let (c3, c2) = (
        Tensor::ones(3, DType::F32, dev).unwrap(),
        Tensor::ones(2, DType::F32, dev).unwrap(),
    );
    let r = fer_kernels::conv_bn_eval(&x, &w, 1, 1, &c3, &c3, &c2, &c3, 1e-5, false);
    assert!(r.is_err());
}
