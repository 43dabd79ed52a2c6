//! `fer_kernels::max_pool_3x3_s2` against the definition and finite differences.

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::values;

/// Distinct values (a shuffled ramp), so every window has one maximum and small bumps keep it.
fn distinct(rng: &mut ChaCha8Rng, dims: &[usize]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - n as f32 * 0.1).collect();
    v.shuffle(rng);
    v
}

fn naive(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut y = vec![f32::NEG_INFINITY; planes * ho * wo];
    for p in 0..planes {
        for oy in 0..ho {
            for ox in 0..wo {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (iy, ix) = ((2 * oy + dy) as isize - 1, (2 * ox + dx) as isize - 1);
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = x[(p * h + iy as usize) * w + ix as usize];
                            let o = &mut y[(p * ho + oy) * wo + ox];
                            *o = o.max(v);
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn forward_matches_definition_and_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &[b, c, h, w] in &[
        [1, 1, 1, 1],
        [1, 2, 5, 5],
        [2, 3, 8, 6],
        [3, 1, 7, 4],
        [1, 1, 2, 9],
    ] {
        let x0 = distinct(&mut rng, &[b, c, h, w]);
        let x = Var::from_slice(&x0, (b, c, h, w), &Device::Cpu).unwrap();
        let y = fer_kernels::max_pool_3x3_s2(&x)
            .unwrap()
            .expect("CPU f32 runs the kernel");
        assert_eq!(y.dims(), [b, c, h.div_ceil(2), w.div_ceil(2)]);
        let got: Vec<f32> = values(&y);
        assert_eq!(got, naive(&x0, b * c, h, w), "{b}x{c}x{h}x{w}");

        let r: Vec<f32> = (0..got.len()).map(|i| (i as f32 * 0.7).sin()).collect();
        let rt = Tensor::from_slice(&r, y.dims(), &Device::Cpu).unwrap();
        let grads = (y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = values(grads.get(&x).unwrap());
        let f = |v: &[f32]| -> f64 {
            naive(v, b * c, h, w)
                .iter()
                .zip(&r)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        for i in 0..x0.len() {
            let (mut p, mut m) = (x0.clone(), x0.clone());
            p[i] += 0.01;
            m[i] -= 0.01;
            let fd = (f(&p) - f(&m)) / 0.02;
            assert!(
                (fd - g[i] as f64).abs() < 1e-3,
                "{b}x{c}x{h}x{w} index {i}: {fd} vs {}",
                g[i]
            );
        }
    }
}

#[test]
fn ties_send_the_gradient_to_the_first_maximum() {
    let x = Var::from_slice(&[1f32; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
    let y = fer_kernels::max_pool_3x3_s2(&x).unwrap().unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = values(g.get(&x).unwrap());
    // Outputs (0,0), (0,1), (1,0), (1,1) have windows starting at (0,0), (0,1), (1,0), (1,1).
    assert_eq!(g, vec![1., 1., 0., 1., 1., 0., 0., 0., 0.]);
}
