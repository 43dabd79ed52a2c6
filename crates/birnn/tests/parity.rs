//! Outputs and gradients against PyTorch's `nn.LSTM` / `nn.GRU`
//! (fixtures from `tests/reference/birnn/gen.py`).
//!
//! Error measure: `max|rust - torch| / max(max|torch|, 1e-6)` per tensor, against float64
//! PyTorch values; the Rust RNN runs in f32 (tolerance 1e-5) and in f64 (tolerance 1e-10).

use std::path::Path;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use fer_birnn::{BiRnn, BiRnnConfig, RnnKind};
use fer_test_support::{check_parity, Fixture};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

const PRECISIONS: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::F64, 1e-10)];

fn birnn(
    kind: RnnKind,
) -> impl Fn(&Fixture, VarBuilder, &Tensor) -> Result<Vec<(&'static str, Tensor)>> {
    move |fx, vb, x| {
        let hidden = fx["param.weight_hh_l0"].dim(1)?;
        let rnn = BiRnn::new(x.dim(2)?, &BiRnnConfig { kind, hidden }, vb)?;
        Ok(vec![("h", rnn.forward(x)?)])
    }
}

// Cases: batch 2 and 1; sequence lengths 1, 3 and 6.
const CASES: [&str; 4] = ["b2_l3", "b1_l1", "b1_l3", "b2_l6"];

#[test]
fn bilstm_matches_pytorch() {
    for (dtype, tol) in PRECISIONS {
        for case in CASES {
            check_parity(
                fixtures(),
                &format!("lstm_{case}"),
                dtype,
                tol,
                birnn(RnnKind::Lstm),
            );
        }
    }
}

#[test]
fn bigru_matches_pytorch() {
    for (dtype, tol) in PRECISIONS {
        for case in CASES {
            check_parity(
                fixtures(),
                &format!("gru_{case}"),
                dtype,
                tol,
                birnn(RnnKind::Gru),
            );
        }
    }
}
