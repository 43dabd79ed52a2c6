//! Finite-difference gradient checks (f64 central differences) and the "every weight learns"
//! check, on freshly initialised LSTMs and GRUs.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fer_birnn::{BiRnn, BiRnnConfig, RnnKind};
use fer_test_support::{finite_difference_error, weights_without_gradient};

/// `sum(out * p)` with a fixed, non-symmetric probe.
fn loss(kind: RnnKind) -> impl Fn(VarBuilder, &Tensor) -> Result<Tensor> {
    move |vb, x| {
        let rnn = BiRnn::new(x.dim(2)?, &BiRnnConfig { kind, hidden: 3 }, vb)?;
        let out = rnn.forward(x)?;
        let p: Vec<f64> = (0..out.elem_count())
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 5.0)
            .collect();
        (out * Tensor::from_vec(p, (x.dim(0)?, x.dim(1)?, 6), x.device())?)?.sum_all()
    }
}

#[test]
fn gradients_match_finite_differences() {
    for kind in [RnnKind::Lstm, RnnKind::Gru] {
        for (b, l) in [(2, 4), (1, 1)] {
            let varmap = VarMap::new();
            let x = Tensor::randn(0f64, 1.0, (b, l, 2), &Device::Cpu).unwrap();
            let e = finite_difference_error(&varmap, &x, loss(kind));
            assert!(e < 1e-6, "{kind:?} B={b} L={l}: worst relative error {e:e}");
        }
    }
}

#[test]
fn every_weight_gets_a_gradient() {
    for kind in [RnnKind::Lstm, RnnKind::Gru] {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let rnn = BiRnn::new(5, &BiRnnConfig { kind, hidden: 4 }, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let target = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let out = rnn.forward(&x).unwrap();
        let loss = (out - target).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(varmap.all_vars().len(), 8);
        assert_eq!(
            weights_without_gradient(&varmap, &grads),
            Vec::<String>::new(),
            "{kind:?}"
        );
    }
}
