//! add_relu against candle's add + ReLU (forward and both gradients), and its errors.

use candle_core::{Device, Tensor, Var};

fn case(dims: &[usize], seed: u64) {
    let dev = Device::Cpu;
    let n: usize = dims.iter().product();
    // Deterministic values spread around 0, none summing to exactly 0.
    let vals = |k: u64| -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 * 2654435761 + k * 97) % 1000) as f32 - 499.7) / 250.0)
            .collect()
    };
    let a = Tensor::from_vec(vals(seed), dims, &dev).unwrap();
    let b = Tensor::from_vec(vals(seed + 1), dims, &dev).unwrap();
    let r = Tensor::from_vec(vals(seed + 2), dims, &dev).unwrap();
    let run = |fused: bool| {
        let (va, vb) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        let y = if fused {
            fer_kernels::add_relu(&va, &vb).unwrap()
        } else {
            (va.as_tensor() + vb.as_tensor()).unwrap().relu().unwrap()
        };
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (
            flat(&y),
            flat(g.get(&va).unwrap()),
            flat(g.get(&vb).unwrap()),
        )
    };
    assert_eq!(run(true), run(false), "{dims:?}");
}

#[test]
fn matches_candle_add_and_relu() {
    case(&[2, 3, 5, 7], 1);
    case(&[1, 1, 1, 1], 2);
    case(&[3, 64, 17, 9], 3);
    case(&[4, 100_003], 4);
}

#[test]
fn strided_inputs_and_mismatched_shapes() {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap().t().unwrap();
    let want = (&a + &b).unwrap().relu().unwrap().to_vec2::<f32>().unwrap();
    let got = fer_kernels::add_relu(&a, &b)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(got, want);
    let e = fer_kernels::add_relu(&a, &a.t().unwrap()).unwrap_err();
    assert!(e.to_string().contains("[6, 4] and [4, 6]"), "{e}");
}

/// NaN passes through the ReLU, as in PyTorch, instead of becoming 0.
#[test]
fn nan_passes_through() {
    let a = Tensor::new(&[[f32::NAN, -1.0, 2.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[1f32, -1.0, 1.0]], &Device::Cpu).unwrap();
    let y: Vec<f32> = fer_kernels::add_relu(&a, &b)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(y[0].is_nan(), "{y:?}");
    assert_eq!(&y[1..], &[0.0, 3.0]);
}
