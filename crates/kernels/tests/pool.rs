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
        [1, 2, 12, 13],
        [2, 1, 11, 10],
    ] {
        let x0 = distinct(&mut rng, &[b, c, h, w]);
        let x = Var::from_slice(&x0, (b, c, h, w), &Device::Cpu).unwrap();
        let y = fer_kernels::max_pool_3x3_s2(&x).unwrap();
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
    let y = fer_kernels::max_pool_3x3_s2(&x).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = values(g.get(&x).unwrap());
    // Outputs (0,0), (0,1), (1,0), (1,1) have windows starting at (0,0), (0,1), (1,0), (1,1).
    assert_eq!(g, vec![1., 1., 0., 1., 1., 0., 0., 0., 0.]);
}

/// The definition of the backward: each output's gradient goes to the first element of its
/// window, in row-major order, that no later element beats (greater, or NaN over a number).
fn naive_backward(x: &[f32], dy: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut dx = vec![0f32; x.len()];
    for p in 0..x.len() / (h * w) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best: Option<usize> = None;
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let i = (p * h + iy) * w + ix;
                        let wins = match best {
                            None => true,
                            Some(b) => x[i] > x[b] || (x[i].is_nan() && !x[b].is_nan()),
                        };
                        if wins {
                            best = Some(i);
                        }
                    }
                }
                dx[best.unwrap()] += dy[(p * ho + oy) * wo + ox];
            }
        }
    }
    dx
}

#[test]
fn ties_and_nans_on_large_planes_follow_the_definition() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &[b, c, h, w] in &[[2, 3, 56, 56], [1, 2, 17, 30], [1, 1, 31, 2], [1, 1, 3, 3]] {
        let n = b * c * h * w;
        // Three levels: ties everywhere; one element in 50 is NaN.
        let mut x0: Vec<f32> = (0..n).map(|i| ((i * 7919) % 3) as f32).collect();
        x0.shuffle(&mut rng);
        for v in x0.iter_mut().step_by(50) {
            *v = f32::NAN;
        }
        let x = Var::from_slice(&x0, (b, c, h, w), &Device::Cpu).unwrap();
        let y = fer_kernels::max_pool_3x3_s2(&x).unwrap();
        let dy: Vec<f32> = (0..y.elem_count()).map(|i| 1.0 + i as f32).collect();
        let dyt = Tensor::from_slice(&dy, y.dims(), &Device::Cpu).unwrap();
        let g = (y.clone() * &dyt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got: Vec<f32> = values(g.get(&x).unwrap());
        assert_eq!(got, naive_backward(&x0, &dy, h, w), "{b}x{c}x{h}x{w}");
        // The forward is the value at that same element (NaN where the window has one).
        let want = naive_values(&x0, b * c, h, w);
        let fwd: Vec<f32> = values(&y);
        assert_eq!(fwd.len(), want.len());
        for (i, (a, e)) in fwd.iter().zip(&want).enumerate() {
            assert!(
                a == e || (a.is_nan() && e.is_nan()),
                "{b}x{c}x{h}x{w} output {i}"
            );
        }
    }
}

/// Forward by the definition with NaN propagating (`naive` uses `max`, which drops NaN).
fn naive_values(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut y = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f32::NEG_INFINITY;
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let v = x[(p * h + iy) * w + ix];
                        if v.is_nan() || m.is_nan() {
                            m = f32::NAN;
                        } else {
                            m = m.max(v);
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    y
}
