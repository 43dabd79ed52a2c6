//! The run folder's summary: `metrics.json`, `report.md` and the figures.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fer_data::loader::{normalize_images, Dataset};
use fer_losses::{Metrics, RegressionMetrics};
use fer_model::TwoAttTwoMt;
use serde::{Deserialize, Serialize};

use crate::evaluate::Evaluation;
use crate::plots::{self, AttentionFace};
use crate::state::EpochRecord;
use crate::{Error, Result};

/// The exact shape of `metrics.json` (and of `trainer eval`'s output): `null` for what the data
/// lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsJson {
    pub valence: Option<RegressionMetrics>,
    pub arousal: Option<RegressionMetrics>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub confusion: Option<Vec<Vec<u64>>>,
    pub classes: Vec<String>,
    pub stage: String,
    pub epochs: usize,
    pub train_seconds: f64,
}

impl MetricsJson {
    pub fn new(
        m: &Metrics,
        classes: Vec<String>,
        stage: &str,
        epochs: usize,
        train_seconds: f64,
    ) -> Self {
        Self {
            valence: m.valence,
            arousal: m.arousal,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            confusion: m.confusion.clone(),
            classes,
            stage: stage.to_string(),
            epochs,
            train_seconds,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.4}"))
}

/// The final table printed at the end of a run and at the top of `report.md`.
pub fn table(m: &MetricsJson) -> String {
    let mut t = String::from("| metric | valence | arousal |\n| --- | --- | --- |\n");
    let r = |g: fn(&RegressionMetrics) -> f64| {
        (f(m.valence.as_ref().map(g)), f(m.arousal.as_ref().map(g)))
    };
    for (name, (v, a)) in [
        ("CCC", r(|x| x.ccc)),
        ("PCC", r(|x| x.pcc)),
        ("RMSE", r(|x| x.rmse)),
        ("SAGR", r(|x| x.sagr)),
    ] {
        t.push_str(&format!("| {name} | {v} | {a} |\n"));
    }
    t.push_str(&format!(
        "\n| accuracy | macro-F1 |\n| --- | --- |\n| {} | {} |\n",
        f(m.accuracy),
        f(m.macro_f1)
    ));
    t
}

pub struct ReportInput<'a> {
    pub out: &'a Path,
    pub metrics: &'a MetricsJson,
    pub history: &'a [EpochRecord],
    pub stages: &'a [&'a str],
    pub notes: &'a [String],
    pub config_toml: &'a str,
    pub data: &'a Path,
    pub evaluation: &'a Evaluation,
    pub model: &'a TwoAttTwoMt,
    pub val: &'a Dataset,
    pub faces: usize,
    pub device: &'a Device,
}

/// Writes `metrics.json`, the figures and `report.md` into the run folder.
pub fn write(r: &ReportInput) -> Result<()> {
    fer_data::atomic::write_atomic(&r.out.join("metrics.json"), r.metrics.to_json().as_bytes())?;
    let mut figures = vec![];
    for stage in r.stages {
        let recs: Vec<&EpochRecord> = r.history.iter().filter(|h| h.stage == *stage).collect();
        if recs.is_empty() {
            continue;
        }
        let name = format!("curves-{stage}.png");
        plots::curves(&r.out.join(&name), stage, &recs)?;
        figures.push((format!("Training curves, {stage}"), name));
    }
    if let (Some(v), Some(a)) = (&r.metrics.valence, &r.metrics.arousal) {
        plots::va_scatter(
            &r.out.join("va-scatter.png"),
            &r.evaluation.samples,
            (v.ccc, a.ccc),
        )?;
        figures.push((
            "Valence and arousal: prediction vs truth".into(),
            "va-scatter.png".into(),
        ));
    }
    if let Some(cm) = &r.metrics.confusion {
        plots::confusion(&r.out.join("confusion.png"), cm, &r.metrics.classes)?;
        figures.push(("Confusion matrix".into(), "confusion.png".into()));
    }
    if r.faces > 0 && !r.val.is_empty() {
        let faces = attention_faces(
            r.model,
            r.val,
            r.faces,
            &r.metrics.classes,
            crate::plan::trains_va(r.stages),
            r.device,
        )?;
        plots::attention(
            &r.out.join("attention.png"),
            &faces,
            &r.model.config().backbone.taps,
        )?;
        figures.push((
            "First-level attention over a few validation faces".into(),
            "attention.png".into(),
        ));
    }

    let mut md = String::from("# Training report\n\n");
    md.push_str(&format!(
        "Data: `{}`. Stages: {}. Final model: the best epoch of `{}`, {} epochs trained in {:.0} s.\n\n",
        r.data.display(),
        r.stages.join(", "),
        r.metrics.stage,
        r.metrics.epochs,
        r.metrics.train_seconds
    ));
    for n in r.notes {
        md.push_str(&format!("> Note: {n}\n\n"));
    }
    md.push_str("## Validation metrics\n\n");
    md.push_str(&table(r.metrics));
    md.push_str("\n## Epochs\n\n| stage | epoch | lr | train loss | val acc | val F1 | CCC v | CCC a | s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for h in r.history {
        md.push_str(&format!(
            "| {} | {}{} | {:.2e} | {:.4} | {} | {} | {} | {} | {:.1} |\n",
            h.stage,
            h.epoch,
            if h.best { " *" } else { "" },
            h.lr,
            h.train_loss,
            f(h.val_accuracy),
            f(h.val_macro_f1),
            f(h.val_valence_ccc),
            f(h.val_arousal_ccc),
            h.seconds
        ));
    }
    md.push_str("\n`*` marks the best epoch of a stage so far.\n\n## Figures\n\n");
    for (title, file) in &figures {
        md.push_str(&format!("### {title}\n\n![{title}]({file})\n\n"));
    }
    md.push_str("## Configuration\n\n```toml\n");
    md.push_str(r.config_toml);
    md.push_str("```\n");
    fer_data::atomic::write_atomic(&r.out.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// Runs the first `n` validation faces through the model for their attention maps.
fn attention_faces(
    model: &TwoAttTwoMt,
    val: &Dataset,
    n: usize,
    classes: &[String],
    va_trained: bool,
    device: &Device,
) -> Result<Vec<AttentionFace>> {
    let n = n.min(val.len());
    let size = val.image_size();
    // Spread the picks over the split rather than taking one class's block.
    let picks: Vec<usize> = (0..n).map(|i| i * val.len() / n).collect();
    let mut chw = Vec::with_capacity(n * 3 * size * size);
    for &i in &picks {
        chw.extend_from_slice(val.image(i));
    }
    let x = normalize_images(&chw, n, size, device)?;
    let out = model.forward(&x, false)?;
    let maps: Vec<Vec<Vec<f32>>> = out
        .alpha
        .iter()
        .map(|a| -> Result<Vec<Vec<f32>>> {
            let a = a.to_dtype(DType::F32)?;
            (0..n)
                .map(|i| Ok(a.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                .collect()
        })
        .collect::<Result<_>>()?;
    let dims: Vec<(usize, usize)> = out
        .alpha
        .iter()
        .map(|a| a.dims3().map(|(_, h, w)| (h, w)))
        .collect::<candle_core::Result<_>>()?;
    let probs = match &out.logits {
        Some(l) => Some(candle_nn::ops::softmax(l, 1)?),
        None => None,
    };
    let cls = |t: &Tensor, i: usize| -> Result<(usize, f32)> {
        let p = t.get(i)?.to_vec1::<f32>()?;
        let (k, v) = p
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (k, &v)| if v > b.1 { (k, v) } else { b });
        Ok((k, v))
    };
    let (vals, ars) = (out.valence.to_vec1::<f32>()?, out.arousal.to_vec1::<f32>()?);
    picks
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let label = val.label(i);
            let truth = usize::try_from(label.expression)
                .ok()
                .and_then(|k| classes.get(k).cloned())
                .unwrap_or_else(|| "-".into());
            let pred = match &probs {
                Some(p) => {
                    let (k, pk) = cls(p, j)?;
                    format!(
                        "{} {:.0}%",
                        classes.get(k).map(String::as_str).unwrap_or("?"),
                        pk * 100.0
                    )
                }
                None => String::new(),
            };
            Ok(AttentionFace {
                image: val.image(i).to_vec(),
                size,
                maps: dims
                    .iter()
                    .zip(&maps)
                    .map(|(&(h, w), m)| (h, w, m[j].clone()))
                    .collect(),
                // An untrained V/A head's values mean nothing.
                caption: if va_trained {
                    format!(
                        "truth {truth} | pred {pred} | V {:+.2} A {:+.2}",
                        vals[j], ars[j]
                    )
                } else {
                    format!("truth {truth} | pred {pred}")
                },
            })
        })
        .collect::<Result<Vec<_>>>()
        .map_err(|e: Error| e)
}
