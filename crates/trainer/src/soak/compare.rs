//! Two run folders compared on everything but wall time: every tensor of every checkpoint bit
//! for bit, the checkpoints' metadata, `metrics.json`, `metrics.jsonl` and `config.toml`, and
//! which files there are (a killed write's temp file must not survive the runs).

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::safetensors::SliceSafetensors;
use candle_core::Device;
use serde_json::Value;

use crate::run_folder::LOCK;
use crate::state::keys;
use crate::{Error, Result};

/// What was compared, and every difference found.
#[derive(Debug, Default)]
pub struct Comparison {
    pub checkpoints: usize,
    pub tensors: usize,
    pub mismatches: Vec<String>,
}

/// Fields that hold time, not results.
const TIMINGS: [&str; 3] = ["seconds", "images_per_second", "train_seconds"];

/// `v` with every timing field removed, at any depth.
pub fn without_timings(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for t in TIMINGS {
                    o.remove(t);
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn json(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::Checkpoint(format!("{}: not JSON: {e}", path.display())))
}

fn names(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != LOCK {
            out.insert(n);
        }
    }
    Ok(out)
}

/// Compares the run in `got` with the reference run in `want`.
pub fn compare(want: &Path, got: &Path) -> Result<Comparison> {
    let mut c = Comparison::default();
    let (w, g) = (names(want)?, names(got)?);
    for n in w.symmetric_difference(&g) {
        let side = if w.contains(n) { "missing" } else { "extra" };
        c.mismatches
            .push(format!("{n}: {side} in {}", got.display()));
    }
    for n in w.intersection(&g) {
        let (a, b) = (want.join(n), got.join(n));
        if n.ends_with(".safetensors") {
            c.checkpoints += 1;
            c.tensors += compare_checkpoint(&a, &b, &mut c.mismatches)?;
        } else if n == "metrics.json" {
            let (x, y) = (read(&a)?, read(&b)?);
            let x = without_timings(json(&a, &String::from_utf8_lossy(&x))?);
            let y = without_timings(json(&b, &String::from_utf8_lossy(&y))?);
            if x != y {
                c.mismatches.push(format!("{n}: values differ"));
            }
        } else if n == crate::run_folder::HISTORY {
            let lines = |p: &Path| -> Result<Vec<Value>> {
                String::from_utf8_lossy(&read(p)?)
                    .lines()
                    .map(|l| json(p, l).map(without_timings))
                    .collect()
            };
            let (x, y) = (lines(&a)?, lines(&b)?);
            if x != y {
                let first = x.iter().zip(&y).position(|(p, q)| p != q);
                c.mismatches.push(format!(
                    "{n}: {} vs {} epochs, first difference at line {}",
                    x.len(),
                    y.len(),
                    first.map_or("-".into(), |i| (i + 1).to_string())
                ));
            }
        } else if n == crate::run_folder::CONFIG && read(&a)? != read(&b)? {
            c.mismatches.push(format!("{n}: differs"));
        }
    }
    Ok(c)
}

fn st<'a>(bytes: &'a [u8], p: &Path) -> Result<SliceSafetensors<'a>> {
    SliceSafetensors::new(bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: not safetensors: {e}", p.display())))
}

/// Compares two checkpoints, returning the number of tensors compared.
fn compare_checkpoint(a: &Path, b: &Path, out: &mut Vec<String>) -> Result<usize> {
    let name = a.file_name().unwrap_or_default().to_string_lossy();
    let (x, y) = (read(a)?, read(b)?);
    let (sx, sy) = (st(&x, a)?, st(&y, b)?);
    let (mut tx, mut ty) = (sx.tensors(), sy.tensors());
    tx.sort_by(|p, q| p.0.cmp(&q.0));
    ty.sort_by(|p, q| p.0.cmp(&q.0));
    let nx: Vec<&str> = tx.iter().map(|t| t.0.as_str()).collect();
    let ny: Vec<&str> = ty.iter().map(|t| t.0.as_str()).collect();
    if nx != ny {
        out.push(format!("{name}: holds other tensors"));
        return Ok(0);
    }
    let mut differing = vec![];
    for ((n, p), (_, q)) in tx.iter().zip(&ty) {
        if p.dtype() != q.dtype() || p.shape() != q.shape() || p.data() != q.data() {
            differing.push(n.as_str());
        }
    }
    if !differing.is_empty() {
        out.push(format!(
            "{name}: {} of {} tensors differ (first: {})",
            differing.len(),
            tx.len(),
            differing[0]
        ));
    }
    // The metadata: the run's state (minus its timings), config, stage, epoch, step, ...
    let (mx, my) = (
        fer_model::checkpoint::load(a, &Device::Cpu)?.meta,
        fer_model::checkpoint::load(b, &Device::Cpu)?.meta,
    );
    let keys_x: Vec<&String> = mx.keys().collect();
    let keys_y: Vec<&String> = my.keys().collect();
    if keys_x != keys_y {
        out.push(format!("{name}: other metadata keys"));
    }
    for (k, v) in &mx {
        let same = match my.get(k) {
            Some(w) if k == keys::STATE => {
                without_timings(json(a, v)?) == without_timings(json(b, w)?)
            }
            Some(w) => v == w,
            None => true,
        };
        if !same {
            out.push(format!("{name}: metadata {k:?} differs"));
        }
    }
    Ok(tx.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_go_at_any_depth_and_nothing_else() {
        let v: Value = serde_json::json!({
            "train_seconds": 3.0, "epochs": 4,
            "history": [{"seconds": 1.0, "images_per_second": 9.0, "train_loss": 0.5}]
        });
        assert_eq!(
            without_timings(v),
            serde_json::json!({"epochs": 4, "history": [{"train_loss": 0.5}]})
        );
    }
}
