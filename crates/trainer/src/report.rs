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

/// The metrics of one split, single crop; with flip test-time augmentation beside them (same
/// shape) when it was computed. `null` for what the data lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Samples evaluated.
    pub samples: usize,
    pub valence: Option<RegressionMetrics>,
    pub arousal: Option<RegressionMetrics>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    /// `[K][K]` counts, rows = truth, columns = prediction.
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Predictions per class (the confusion matrix's column sums).
    pub predicted: Option<Vec<u64>>,
    /// The same metrics under flip test-time augmentation (the mean of the face and its mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta_flip: Option<Box<SplitMetrics>>,
}

impl SplitMetrics {
    pub fn new(m: &Metrics, samples: usize) -> Self {
        Self {
            samples,
            valence: m.valence,
            arousal: m.arousal,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            predicted: m.confusion.as_ref().map(|cm| predicted_counts(cm)),
            confusion: m.confusion.clone(),
            tta_flip: None,
        }
    }

    pub fn with_tta_flip(mut self, flip: SplitMetrics) -> Self {
        self.tta_flip = Some(Box::new(flip));
        self
    }
}

/// Column sums of a confusion matrix: how often each class was predicted.
pub fn predicted_counts(cm: &[Vec<u64>]) -> Vec<u64> {
    let k = cm.len();
    (0..k).map(|j| cm.iter().map(|row| row[j]).sum()).collect()
}

/// The exact shape of `metrics.json` (and of `trainer eval`'s output, which fills the one split
/// it evaluated). `val` is the split every decision was taken on; `test` is evaluated once, on
/// the final model, and read by nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsJson {
    pub classes: Vec<String>,
    /// The stage whose best epoch is the final model.
    pub stage: String,
    /// Epochs trained over all stages.
    pub epochs: usize,
    /// The final model's epoch within `stage` (chosen on val).
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub val: Option<SplitMetrics>,
    pub test: Option<SplitMetrics>,
}

impl MetricsJson {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.4}"))
}

/// The final table printed at the end of a run and at the top of `report.md`: one column per
/// split (and per flip-TTA evaluation), each labelled.
pub fn table(m: &MetricsJson) -> String {
    let mut cols: Vec<(String, &SplitMetrics)> = vec![];
    for (name, s) in [("val", &m.val), ("test", &m.test)] {
        if let Some(s) = s {
            cols.push((name.to_string(), s));
            if let Some(t) = &s.tta_flip {
                cols.push((format!("{name} (flip TTA)"), t));
            }
        }
    }
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut rule = String::from("| --- |");
        for (name, _) in &cols {
            h.push_str(&format!(" {name} |"));
            rule.push_str(" --- |");
        }
        format!("{h}\n{rule}\n")
    };
    let row = |label: &str, g: &dyn Fn(&SplitMetrics) -> Option<f64>| {
        let mut r = format!("| {label} |");
        for (_, s) in &cols {
            r.push_str(&format!(" {} |", f(g(s))));
        }
        r.push('\n');
        r
    };
    let mut t = String::new();
    let has_va = cols.iter().any(|(_, s)| s.valence.is_some());
    if has_va {
        t.push_str(&header("metric"));
        type Field = fn(&RegressionMetrics) -> f64;
        let reg: [(&str, Field); 4] = [
            ("CCC", |x| x.ccc),
            ("PCC", |x| x.pcc),
            ("RMSE", |x| x.rmse),
            ("SAGR", |x| x.sagr),
        ];
        for (name, g) in reg {
            t.push_str(&row(&format!("valence {name}"), &|s| {
                s.valence.as_ref().map(g)
            }));
            t.push_str(&row(&format!("arousal {name}"), &|s| {
                s.arousal.as_ref().map(g)
            }));
        }
        t.push('\n');
    }
    t.push_str(&header("expression"));
    t.push_str(&row("accuracy", &|s| s.accuracy));
    t.push_str(&row("macro-F1", &|s| s.macro_f1));
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
    /// The final model on val (single crop).
    pub val_eval: &'a Evaluation,
    /// The final model on test (single crop), when the data has a test split.
    pub test_eval: Option<&'a Evaluation>,
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
    let val = r.metrics.val.as_ref();
    if let Some((v, a)) = val.and_then(|m| m.valence.zip(m.arousal)) {
        plots::va_scatter(
            &r.out.join("va-scatter.png"),
            &r.val_eval.samples,
            (v.ccc, a.ccc),
        )?;
        figures.push((
            "Valence and arousal on val: prediction vs truth".into(),
            "va-scatter.png".into(),
        ));
    }
    for (split, m, file) in [
        ("val", val, "confusion.png"),
        ("test", r.metrics.test.as_ref(), "confusion-test.png"),
    ] {
        if let Some(cm) = m.and_then(|m| m.confusion.as_ref()) {
            plots::confusion(&r.out.join(file), cm, &r.metrics.classes)?;
            figures.push((format!("Confusion matrix, {split}"), file.into()));
        }
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
        "Data: `{}`. Stages: {}. Final model: epoch {} of `{}` (the best on val), {} epochs \
         trained in {:.0} s.\n\n",
        r.data.display(),
        r.stages.join(", "),
        r.metrics.best_epoch,
        r.metrics.stage,
        r.metrics.epochs,
        r.metrics.train_seconds
    ));
    for n in r.notes {
        md.push_str(&format!("> Note: {n}\n\n"));
    }
    md.push_str("## Final metrics\n\n");
    md.push_str(
        "`val` took every decision (best epoch, early stopping, the stage-2 start); `test` was \
         evaluated once, on the final model, and decided nothing. Flip TTA: the mean of each \
         face and its mirror.\n\n",
    );
    md.push_str(&table(r.metrics));
    let collapsed: Vec<&EpochRecord> = r.history.iter().filter(|h| h.collapse.is_some()).collect();
    if !collapsed.is_empty() {
        md.push_str("\n## Collapse warnings\n\n");
        for h in collapsed {
            md.push_str(&format!(
                "- **{} epoch {}**: {}\n",
                h.stage,
                h.epoch,
                h.collapse.as_deref().unwrap_or_default()
            ));
        }
    }
    md.push_str("\n## Epochs\n\n| stage | epoch | lr | train loss | val acc | val F1 | CCC v | CCC a | s | img/s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for h in r.history {
        md.push_str(&format!(
            "| {} | {}{}{} | {:.2e} | {:.4} | {} | {} | {} | {} | {:.1} | {:.0} |\n",
            h.stage,
            h.epoch,
            if h.best { " *" } else { "" },
            if h.collapse.is_some() { " ⚠" } else { "" },
            h.lr,
            h.train_loss,
            f(h.val_accuracy),
            f(h.val_macro_f1),
            f(h.val_valence_ccc),
            f(h.val_arousal_ccc),
            h.seconds,
            h.images_per_second
        ));
    }
    md.push_str(
        "\n`*` marks the best epoch of a stage so far; `⚠` an epoch whose val predictions look \
         collapsed.\n\n## Figures\n\n",
    );
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
