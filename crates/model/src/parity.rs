//! The model against the PyTorch reference, on any device: the fixtures written by
//! `tests/reference/model/gen_fixtures.py` hold a config, the weights (`w.<name>`), an input
//! `x`, PyTorch's outputs in eval and train mode, the BatchNorm running statistics after the
//! train forward, and the gradients of a few weights of a fixed scalar (`r.*` weights it).
//!
//! [`compare`] redoes all of it with this crate and returns one row per compared tensor; the
//! `parity` test and `trainer gpu-check` both use it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::{is_running_stat, Error, ModelConfig, ModelOutput, Result, TwoAttTwoMt};

/// The fixture cases, file names without `.safetensors`.
pub const CASES: [&str; 8] = [
    "r18_w0625_lstm_aux",
    "r18_w0625_small_gru_k7",
    "r18_w0625_small_s2_no_att1",
    "r18_w0625_small_s2_no_att2",
    "r18_w0625_small_s2_va_only",
    "r50_w0625_lstm",
    "r34_w0625_gru",
    "r18_torchvision_layer1",
];

/// float32 against the float64 reference. The worst case seen is ~7e-5, on gradients reaching
/// through train-mode BatchNorm over few values and sharp softmaxes.
pub const TOL_F32: f32 = 1e-4;
/// float64 against the float64 reference: what remains is the fixtures' float32 rounding, so any
/// difference in the computation itself shows up here far above the noise.
pub const TOL_F64: f32 = 1e-6;

/// The tolerance of a computation in `dtype`.
pub fn tolerance(dtype: DType) -> f32 {
    if dtype == DType::F64 {
        TOL_F64
    } else {
        TOL_F32
    }
}

/// One fixture file: the model config and its tensors (on the CPU).
pub struct Fixture {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(path: impl AsRef<Path>) -> Result<Fixture> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("config"))
            .ok_or_else(|| bad("no `config` metadata: not a parity fixture".into()))?;
        let config: ModelConfig =
            serde_json::from_str(json).map_err(|e| bad(format!("config metadata: {e}")))?;
        config.validate()?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        Ok(Fixture {
            path: path.to_path_buf(),
            config,
            tensors,
        })
    }

    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| self.bad(format!("no tensor {key}")))
    }

    pub fn opt(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    fn bad(&self, msg: String) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            msg,
        }
    }

    /// Builds the model on `dev` and copies the fixture weights in, after checking that the two
    /// sides name exactly the same variables with the same shapes.
    pub fn build(&self, dtype: DType, dev: &Device) -> Result<(VarMap, TwoAttTwoMt)> {
        let varmap = VarMap::new();
        let model = TwoAttTwoMt::new(&self.config, VarBuilder::from_varmap(&varmap, dtype, dev))?;
        let want: BTreeSet<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("w.").map(String::from))
            .collect();
        let data = varmap.data().lock().expect("varmap lock");
        let have: BTreeSet<String> = data.keys().cloned().collect();
        if have != want {
            let only_rust: Vec<_> = have.difference(&want).collect();
            let only_torch: Vec<_> = want.difference(&have).collect();
            return Err(self.bad(format!(
                "variable names differ: only in Rust {only_rust:?}, only in PyTorch {only_torch:?}"
            )));
        }
        for (name, var) in data.iter() {
            let w = self.get(&format!("w.{name}"))?;
            if w.dims() != var.dims() {
                return Err(self.bad(format!(
                    "shape of {name}: Rust {:?}, PyTorch {:?}",
                    var.dims(),
                    w.dims()
                )));
            }
            var.set(&w.to_dtype(dtype)?.to_device(dev)?)?;
        }
        drop(data);
        Ok((varmap, model))
    }
}

/// One compared tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// e.g. `eval.logits`, `train.alpha.0`, `running stat backbone.bn1.running_mean`,
    /// `grad cat_fc.weight`.
    pub what: String,
    /// max |got - want| / max |want|; infinite for a shape mismatch or a NaN.
    pub rel_err: f32,
    pub tol: f32,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.rel_err <= self.tol
    }
}

/// Runs the fixture at `path` with the model in `dtype` on `dev`: outputs in eval and train
/// mode, running statistics after the train forward, gradients. Missing or extra outputs, or
/// too little compared, are errors; numbers out of tolerance are rows that are not [`Row::ok`].
pub fn compare(path: impl AsRef<Path>, dtype: DType, dev: &Device) -> Result<Vec<Row>> {
    let fx = Fixture::load(path)?;
    let tol = tolerance(dtype);
    let (varmap, model) = fx.build(dtype, dev)?;
    let x = fx.get("x")?.to_dtype(dtype)?.to_device(dev)?;
    let mut rows = vec![];
    let mut row = |what: String, got: &Tensor, want: &Tensor| -> Result<()> {
        rows.push(Row {
            rel_err: rel_err(got, want)?,
            what,
            tol,
        });
        Ok(())
    };

    let eval = model.forward(&x, false)?;
    for (key, got, want) in output_pairs(&fx, "eval", &eval)? {
        row(key, got, want)?;
    }
    let train = model.forward(&x, true)?;
    for (key, got, want) in output_pairs(&fx, "train", &train)? {
        row(key, got, want)?;
    }

    let vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    let mut n_running = 0;
    for (name, var) in vars.iter().filter(|(n, _)| is_running_stat(n)) {
        let want = fx.get(&format!("train.running.{name}"))?;
        row(format!("running stat {name}"), var.as_tensor(), want)?;
        n_running += 1;
    }
    if n_running == 0 {
        return Err(fx.bad("no BatchNorm running statistics to compare".into()));
    }

    let grads = scalar(&fx, &train)?.backward()?;
    let mut n_grads = 0;
    for (name, var) in &vars {
        if let Some(want) = fx.opt(&format!("grad.{name}")) {
            let got = grads
                .get(var.as_tensor())
                .ok_or_else(|| fx.bad(format!("no gradient for {name}")))?;
            row(format!("grad {name}"), got, want)?;
            n_grads += 1;
        }
    }
    if n_grads < 8 {
        return Err(fx.bad(format!("only {n_grads} gradients compared")));
    }
    Ok(rows)
}

/// The outputs of `out` with the fixture's `<mode>.<name>` next to each; an output that only
/// one side has is an error.
fn output_pairs<'a>(
    fx: &'a Fixture,
    mode: &str,
    out: &'a ModelOutput,
) -> Result<Vec<(String, &'a Tensor, &'a Tensor)>> {
    let key = |k: &str| format!("{mode}.{k}");
    let mut pairs = vec![];
    let named: [(&str, Option<&Tensor>); 6] = [
        ("logits", out.logits.as_ref()),
        ("c", out.c.as_ref()),
        ("beta", out.beta.as_ref()),
        ("aux", out.aux_logits.as_ref()),
        ("valence", Some(&out.valence)),
        ("arousal", Some(&out.arousal)),
    ];
    for (name, got) in named {
        match (got, fx.opt(&key(name))) {
            (Some(g), Some(w)) => pairs.push((key(name), g, w)),
            (None, None) => {}
            (g, w) => {
                return Err(fx.bad(format!(
                    "{}: Rust has it: {}, PyTorch has it: {}",
                    key(name),
                    g.is_some(),
                    w.is_some()
                )))
            }
        }
    }
    let prefix = key("alpha.");
    let n_alpha = fx.tensors.keys().filter(|k| k.starts_with(&prefix)).count();
    if out.alpha.len() != n_alpha {
        return Err(fx.bad(format!(
            "{mode}: {} alpha maps in Rust, {n_alpha} in PyTorch",
            out.alpha.len()
        )));
    }
    for (i, a) in out.alpha.iter().enumerate() {
        let k = key(&format!("alpha.{i}"));
        pairs.push((k.clone(), a, fx.get(&k)?));
    }
    Ok(pairs)
}

/// sum(r.logits * logits) + sum(r.valence * valence) + ..., as in gen_fixtures.py.
fn scalar(fx: &Fixture, out: &ModelOutput) -> Result<Tensor> {
    let mut terms = vec![];
    for (name, t) in [
        ("logits", out.logits.as_ref()),
        ("valence", Some(&out.valence)),
        ("arousal", Some(&out.arousal)),
        ("aux", out.aux_logits.as_ref()),
    ] {
        if let Some(t) = t {
            let r = fx
                .get(&format!("r.{name}"))?
                .to_dtype(t.dtype())?
                .to_device(t.device())?;
            terms.push((t * r)?.sum_all()?);
        }
    }
    Ok(Tensor::stack(&terms, 0)?.sum_all()?)
}

/// max |got - want| / max |want|, in f64 on the CPU: the error relative to the tensor's scale.
/// Infinite for different shapes or a NaN, so that such a row fails.
pub fn rel_err(got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        return Ok(f32::INFINITY);
    }
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f64>()?;
    let e = diff / scale.max(1e-12);
    Ok(if e.is_nan() { f32::INFINITY } else { e as f32 })
}
