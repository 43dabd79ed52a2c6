//! Backbone pieces checked against hand-written references: the differentiable max-pool against
//! a naive loop and finite differences, the initialisation against torchvision's rules, the tap
//! shapes against the arithmetic of strides.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fer_model::{max_pool_3x3_s2, BackboneConfig, ResNet, Stem};

/// Naive 3x3 stride-2 max-pool with -inf padding of 1, as PyTorch's `MaxPool2d(3, 2, 1)`.
fn naive_pool(x: &[f32], c: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let mut out = vec![f32::NEG_INFINITY; c * ho * wo];
    for ch in 0..c {
        for i in 0..ho {
            for j in 0..wo {
                for di in 0..3 {
                    for dj in 0..3 {
                        let (y, xx) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            continue;
                        }
                        let v = x[ch * h * w + y as usize * w + xx as usize];
                        let o = &mut out[ch * ho * wo + i * wo + j];
                        *o = o.max(v);
                    }
                }
            }
        }
    }
    (out, ho, wo)
}

#[test]
fn max_pool_matches_naive_loop_on_odd_and_even_sizes() {
    for (h, w) in [(8, 8), (7, 9), (5, 4), (1, 1), (2, 3)] {
        let x = Tensor::randn(0f32, 1.0, (1, 3, h, w), &Device::Cpu).unwrap();
        let got = max_pool_3x3_s2(&x).unwrap();
        let (want, ho, wo) = naive_pool(&x.flatten_all().unwrap().to_vec1().unwrap(), 3, h, w);
        assert_eq!(got.dims(), &[1, 3, ho, wo], "{h}x{w}");
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want,
            "{h}x{w}"
        );
    }
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let (h, w) = (5, 6);
    let dev = Device::Cpu;
    // Distinct values (a permutation) so that no window has a tie and the max is differentiable.
    let n = 2 * h * w;
    let vals: Vec<f64> = (0..n).map(|i| ((i * 37) % n) as f64 * 0.1).collect();
    let x = Var::from_tensor(&Tensor::from_vec(vals.clone(), (1, 2, h, w), &dev).unwrap()).unwrap();
    let out = max_pool_3x3_s2(x.as_tensor()).unwrap();
    let r = Tensor::randn(0f64, 1.0, out.dims(), &dev).unwrap();
    let f = |t: &Tensor| -> f64 {
        (max_pool_3x3_s2(t).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g: Vec<f64> = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let eps = 1e-3;
    for i in 0..n {
        let mut plus = vals.clone();
        plus[i] += eps;
        let mut minus = vals.clone();
        minus[i] -= eps;
        let fp = f(&Tensor::from_vec(plus, (1, 2, h, w), &dev).unwrap());
        let fm = f(&Tensor::from_vec(minus, (1, 2, h, w), &dev).unwrap());
        let fd = (fp - fm) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() < 1e-6,
            "element {i}: fd {fd} vs autograd {}",
            g[i]
        );
    }
    assert!(g.iter().any(|&v| v != 0.0));
}

fn build(cfg: &BackboneConfig) -> (VarMap, ResNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = ResNet::new(cfg, vb).unwrap();
    (varmap, net)
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

fn stats(t: &Tensor) -> (f64, f64) {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn initialisation_follows_torchvision() {
    let (varmap, _) = build(&BackboneConfig::default());
    // Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out * k * k)).
    for (name, fan_out) in [
        ("conv1.weight", 64 * 49),
        ("layer3.1.conv2.weight", 256 * 9),
        ("layer4.0.downsample.0.weight", 512),
    ] {
        let (mean, std) = stats(&var(&varmap, name));
        let want = (2.0 / fan_out as f64).sqrt();
        assert!(mean.abs() < 0.05 * want, "{name}: mean {mean}");
        assert!(
            (std / want - 1.0).abs() < 0.05,
            "{name}: std {std} vs {want}"
        );
    }
    for (name, value) in [
        ("layer2.1.bn1.weight", 1.0),
        ("layer2.1.bn1.bias", 0.0),
        ("layer2.1.bn1.running_mean", 0.0),
        ("layer2.1.bn1.running_var", 1.0),
    ] {
        let v: Vec<f32> = var(&varmap, name).to_vec1().unwrap();
        assert!(v.iter().all(|&x| x == value), "{name}");
    }
}

#[test]
fn tap_shapes_follow_the_strides() {
    let x = Tensor::zeros((2, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let cases = [
        // (depth, width, stem, stem_stride, taps, expected [C, H] per tap)
        (
            18,
            1.0,
            Stem::Imagenet,
            1,
            vec!["layer2", "layer3", "layer4"],
            vec![(128, 8), (256, 4), (512, 2)],
        ),
        (
            50,
            0.25,
            Stem::Imagenet,
            1,
            vec!["layer1", "layer4"],
            vec![(64, 16), (512, 2)],
        ),
        (
            34,
            0.5,
            Stem::Small,
            1,
            vec!["layer1", "layer2"],
            vec![(32, 64), (64, 32)],
        ),
        (18, 0.5, Stem::Small, 2, vec!["layer3"], vec![(128, 8)]),
    ];
    for (depth, width, stem, stem_stride, taps, want) in cases {
        let cfg = BackboneConfig {
            depth,
            width,
            stem,
            stem_stride,
            taps: taps.iter().map(|s| s.to_string()).collect(),
        };
        let (varmap, net) = build(&cfg);
        let maps = net.forward(&x, false).unwrap();
        let got: Vec<(usize, usize)> = maps
            .iter()
            .map(|m| (m.dim(1).unwrap(), m.dim(2).unwrap()))
            .collect();
        assert_eq!(got, want, "{cfg:?}");
        let chans: Vec<usize> = want.iter().map(|w| w.0).collect();
        assert_eq!(net.tap_channels(), chans.as_slice());
        // Stages deeper than the deepest tap are not built.
        let deepest = taps.last().unwrap();
        let names = varmap.data().lock().unwrap();
        for later in fer_model::STAGES
            .iter()
            .skip_while(|s| *s != deepest)
            .skip(1)
        {
            assert!(
                !names.keys().any(|k| k.starts_with(later)),
                "{later} built for {cfg:?}"
            );
        }
    }
}

#[test]
fn parameter_counts_match_torchvision() {
    // torchvision's resnet18/50 without fc: 11,176,512 and 23,508,032 parameters
    // (sum of numel over named_parameters(), fc excluded).
    for (depth, want) in [(18, 11_176_512usize), (50, 23_508_032)] {
        let cfg = BackboneConfig {
            depth,
            ..Default::default()
        };
        let (varmap, _) = build(&cfg);
        let n: usize = fer_model::trainable_vars(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(n, want, "resnet{depth}");
    }
}

/// `conv_shapes` lists exactly the conv weights the trunk holds, with their dims, and its size
/// arithmetic agrees with the maps a forward pass returns.
#[test]
fn conv_shapes_list_every_conv_with_its_input_size() {
    let cases = [
        (18, 0.5, Stem::Small, 2, 48),
        (50, 0.25, Stem::Imagenet, 1, 64),
        (34, 0.25, Stem::Small, 1, 20),
    ];
    for (depth, width, stem, stem_stride, size) in cases {
        let cfg = BackboneConfig {
            depth,
            width,
            stem,
            stem_stride,
            taps: vec!["layer3".into(), "layer4".into()],
        };
        let (varmap, net) = build(&cfg);
        let shapes = net.conv_shapes(size);
        let names = varmap.data().lock().unwrap();
        let conv_weights = names
            .iter()
            .filter(|(k, v)| k.ends_with(".weight") && v.as_tensor().rank() == 4)
            .count();
        assert_eq!(shapes.len(), conv_weights, "{cfg:?}");
        for s in &shapes {
            let w = names[&format!("{}.weight", s.label)].as_tensor();
            let (k, c, o) = (s.kernel, s.in_channels, s.out_channels);
            assert_eq!(w.dims(), &[o, c, k, k], "{}", s.label);
        }
        // Each tapped stage ends with its last block's main conv; the forward's maps say how big.
        let x = Tensor::zeros((1, 3, size, size), DType::F32, &Device::Cpu).unwrap();
        let maps = net.forward(&x, false).unwrap();
        for (tap, map) in ["layer3", "layer4"].iter().zip(&maps) {
            let last = shapes
                .iter()
                .rfind(|s| s.label.starts_with(tap) && !s.label.contains("downsample"))
                .unwrap();
            assert_eq!(map.dim(2).unwrap(), last.out_size(), "{tap} of {cfg:?}");
        }
    }
    // By hand, the FER-2013 trunk (R18 x0.5, 3x3 stride-2 stem) at 48 px: 20 convs.
    let cfg = BackboneConfig {
        depth: 18,
        width: 0.5,
        stem: Stem::Small,
        stem_stride: 2,
        taps: vec!["layer4".into()],
    };
    let shapes = build(&cfg).1.conv_shapes(48);
    let brief: Vec<(usize, usize, usize, usize, usize)> = shapes
        .iter()
        .map(|s| (s.in_channels, s.out_channels, s.kernel, s.stride, s.in_size))
        .collect();
    let mut want = vec![(3, 32, 3, 2, 48)];
    for (c_in, c, size) in [(32, 32, 24), (32, 64, 24), (64, 128, 12), (128, 256, 6)] {
        let (stride, inner) = if c_in == c { (1, size) } else { (2, size / 2) };
        want.push((c_in, c, 3, stride, size));
        want.push((c, c, 3, 1, inner));
        if stride == 2 {
            want.push((c_in, c, 1, 2, size));
        }
        want.push((c, c, 3, 1, inner));
        want.push((c, c, 3, 1, inner));
    }
    assert_eq!(brief, want);
    assert_eq!(shapes[5].label, "layer2.0.conv1");
    assert_eq!(shapes[7].label, "layer2.0.downsample.0");
    // layer1's four convs are one geometry under four names; the stem is another.
    assert!(shapes[1..5].iter().all(|s| s.same_geometry(&shapes[1])));
    assert!(shapes[1].label != shapes[2].label && !shapes[0].same_geometry(&shapes[1]));
    // 32 x 288 multiply-adds for each of 24 x 24 outputs of layer1's first conv, per image.
    assert_eq!(shapes[1].forward_flops(1), 2.0 * 32.0 * 288.0 * 576.0);
}
