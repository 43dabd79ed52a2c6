//! The kill-and-resume soak. A run is SIGKILLed at seeded random moments (mid-epoch,
//! mid-evaluation, mid-checkpoint write, at start-up, in the final evaluation) and started
//! again each time with `--resume`, the first time into a folder that does not exist yet; it
//! must end with exactly the files of an uninterrupted run of the same seed (see [`compare`]).
//! Shared by `cargo xtask soak` and the trainer's soak test.

mod child;
pub mod compare;
mod landing;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};
pub use child::Trigger;
use child::{is_evaluation, is_progress, Ending, Watched};
use landing::classify;
pub use landing::{position, Phase, Position};

/// What to soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `trainer` binary.
    pub trainer: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    /// More `trainer train` arguments, the same for every invocation (e.g. `--epochs 4`).
    pub extra: Vec<String>,
    pub threads: usize,
    /// Work folder: the runs go to `reference/` and `killed/`, which must not exist yet.
    pub dir: PathBuf,
    pub kills: usize,
    pub seed: u64,
}

/// One kill that landed.
#[derive(Debug, Clone)]
pub struct Kill {
    pub trigger: Trigger,
    /// After the invocation's start.
    pub at: Duration,
    /// The checkpoint (`last.safetensors`) before the invocation and after the kill.
    pub before: Position,
    pub after: Position,
    pub phase: Phase,
    pub detail: String,
}

/// The soak's outcome.
#[derive(Debug)]
pub struct SoakReport {
    pub kills: Vec<Kill>,
    /// `trainer` processes started on the killed run (kills, runs to the end, the last one).
    pub invocations: usize,
    pub comparison: compare::Comparison,
    pub reference_seconds: f64,
    pub seconds: f64,
}

impl SoakReport {
    pub fn identical(&self) -> bool {
        self.comparison.mismatches.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} kills over {} invocations (the reference run took {:.2} s, the soak {:.1} s)\n",
            self.kills.len(),
            self.invocations,
            self.reference_seconds,
            self.seconds
        );
        s.push_str("  #   at (ms)  checkpoint before -> after        landed\n");
        for (i, k) in self.kills.iter().enumerate() {
            s.push_str(&format!(
                "{:>3} {:>9.1}  {:<32}  {}: {} [{}]\n",
                i + 1,
                k.at.as_secs_f64() * 1e3,
                format!("{} -> {}", k.before, k.after),
                k.phase.name(),
                k.detail,
                k.trigger
            ));
        }
        let mut phases: Vec<Phase> = self.kills.iter().map(|k| k.phase).collect();
        phases.sort();
        phases.dedup();
        let tally: Vec<String> = phases
            .iter()
            .map(|p| {
                let n = self.kills.iter().filter(|k| k.phase == *p).count();
                format!("{} {n}", p.name())
            })
            .collect();
        s.push_str(&format!("landed: {}\n", tally.join(", ")));
        let early = self
            .kills
            .iter()
            .filter(|k| k.after == Position::None)
            .count();
        s.push_str(&format!("before the first checkpoint: {early}\n"));
        let c = &self.comparison;
        if self.identical() {
            s.push_str(&format!(
                "result: identical to the uninterrupted run: {} checkpoints ({} tensors, bit for \
                 bit, and their metadata), metrics.json, metrics.jsonl, config.toml, the same \
                 files and no leftovers\n",
                c.checkpoints, c.tensors
            ));
        } else {
            s.push_str("result: DIFFERENT from the uninterrupted run:\n");
            for m in &c.mismatches {
                s.push_str(&format!("  {m}\n"));
            }
        }
        s
    }
}

/// Times measured on the reference run, to aim the kills.
#[derive(Debug)]
struct Timeline {
    /// Progress lines in an epoch.
    lines_per_epoch: usize,
    /// Between two progress lines of an epoch.
    line_gap: Duration,
    /// From "evaluating on val" to the epoch's summary line.
    eval: Duration,
    /// Start to the first progress line.
    startup: Duration,
    /// Between two evaluations.
    epoch: Duration,
    /// Epochs of the whole run.
    epochs: usize,
}

fn median(v: Vec<Duration>) -> Duration {
    let mut secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    fer_measure::median(&mut secs).map_or(Duration::from_millis(1), Duration::from_secs_f64)
}

fn timeline(lines: &[(Duration, String)], total: Duration) -> Timeline {
    let first_eval = lines.iter().position(|(_, l)| is_evaluation(l));
    let lines_per_epoch = lines[..first_eval.unwrap_or(0)]
        .iter()
        .filter(|(_, l)| is_progress(l))
        .count()
        .max(1);
    let evals_at: Vec<Duration> = lines
        .iter()
        .filter(|(_, l)| is_evaluation(l))
        .map(|(t, _)| *t)
        .collect();
    let epochs = evals_at.windows(2).map(|w| w[1] - w[0]).collect();
    let startup = lines
        .iter()
        .find(|(_, l)| is_progress(l))
        .map_or(total, |(t, _)| *t);
    let mut gaps = vec![];
    let mut evals = vec![];
    for w in lines.windows(2) {
        let gap = w[1].0.saturating_sub(w[0].0);
        if is_progress(&w[0].1) && is_progress(&w[1].1) {
            gaps.push(gap);
        }
        if is_evaluation(&w[0].1) {
            evals.push(gap);
        }
    }
    Timeline {
        lines_per_epoch,
        line_gap: median(gaps),
        eval: median(evals),
        startup,
        epoch: median(epochs),
        epochs: evals_at.len(),
    }
}

fn train_args(cfg: &SoakConfig, out: &Path, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--threads".into(),
        cfg.threads.to_string(),
        "train".into(),
        "--data".into(),
        cfg.data.display().to_string(),
        "--config".into(),
        cfg.config.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if resume {
        a.push("--resume".into());
    }
    a.extend(cfg.extra.iter().cloned());
    a
}

fn spawn(cfg: &SoakConfig, out: &Path, resume: bool) -> Result<Watched> {
    child::spawn(&cfg.trainer, &train_args(cfg, out, resume), out)
        .map_err(|e| Error::io(&cfg.trainer, e))
}

fn failed(w: &Watched, what: &str) -> Error {
    Error::Checkpoint(format!(
        "soak: {what} failed; its stderr ends with:\n{}",
        w.stderr_tail(15)
    ))
}

/// How far past its start an invocation may get before the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The first kill: before the first checkpoint, so that the resume starts the run afresh.
    First,
    /// Within the invocation's first epoch.
    Narrow,
    /// Within its first two epochs (or the fourth checkpoint file).
    Wide,
}

/// The trigger of the next kill; `finished` is how long an invocation took once the run had
/// reached its end (kills then land in start-up, the final evaluation or the report).
fn plan(rng: &mut ChaCha8Rng, reach: Reach, t: &Timeline, finished: Option<Duration>) -> Trigger {
    let frac = |rng: &mut ChaCha8Rng, d: Duration| d.mul_f64(rng.random::<f64>());
    if let Some(d) = finished {
        return Trigger::Delay(frac(rng, d));
    }
    let epochs = if reach == Reach::Wide { 2 } else { 1 };
    match rng.random_range(0..if reach == Reach::First { 3 } else { 4 }) {
        0 => Trigger::Training {
            line: rng.random_range(1..=t.lines_per_epoch * epochs),
            delay: frac(rng, t.line_gap),
        },
        1 => Trigger::Evaluation {
            n: rng.random_range(1..=epochs),
            delay: frac(
                rng,
                if reach == Reach::First {
                    t.eval / 2
                } else {
                    t.eval
                },
            ),
        },
        2 => Trigger::CheckpointWrite {
            // A fresh run's first checkpoint temp file is best-stage1's, before last's.
            n: if reach == Reach::Wide {
                rng.random_range(1..=4)
            } else {
                1
            },
        },
        _ => Trigger::Delay(frac(rng, t.startup + t.epoch * epochs as u32)),
    }
}

/// Runs the soak: the reference run, `kills` kills each followed by `--resume`, a last
/// `--resume` to the end, then the comparison.
pub fn soak(cfg: &SoakConfig) -> Result<SoakReport> {
    let t0 = Instant::now();
    let (reference, killed) = (cfg.dir.join("reference"), cfg.dir.join("killed"));
    for d in [&reference, &killed] {
        if d.exists() {
            return Err(Error::Checkpoint(format!(
                "soak: {} exists already: give the soak a fresh --dir",
                d.display()
            )));
        }
    }
    let mut w = spawn(cfg, &reference, false)?;
    let at = match w
        .run_until(Trigger::Never)
        .map_err(|e| Error::io(&reference, e))?
    {
        Ending::Exited { status, at } if status.success() => at,
        _ => return Err(failed(&w, "the reference run")),
    };
    let lines = w.lines.lock().expect("lines lock").clone();
    let tl = timeline(&lines, at);
    let reference_seconds = at.as_secs_f64();

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut kills = vec![];
    let mut invocations = 0;
    let mut finished = None;
    while kills.len() < cfg.kills {
        if invocations > 4 * cfg.kills + 8 {
            return Err(Error::Checkpoint(format!(
                "soak: only {} of {} kills landed in {invocations} invocations",
                kills.len(),
                cfg.kills
            )));
        }
        let (before, done) = position(&killed)?;
        // The last eighth of the kills go to the resume of a trained run (final evaluation,
        // report): the run is let finish first.
        let for_training = cfg.kills - cfg.kills / 8;
        // Spread the others over the training: a narrow kill gains a third of an epoch on
        // average, a wide one about one.
        let left = tl.epochs.saturating_sub(done) as f64
            / for_training.saturating_sub(kills.len()).max(1) as f64;
        let reach = if kills.is_empty() {
            Reach::First
        } else if rng.random::<f64>() < (left - 0.15).clamp(0.0, 1.0) {
            Reach::Wide
        } else {
            Reach::Narrow
        };
        let trigger = if finished.is_none() && kills.len() >= for_training.max(1) {
            Trigger::Never
        } else {
            plan(&mut rng, reach, &tl, finished)
        };
        let mut w = spawn(cfg, &killed, true)?;
        invocations += 1;
        match w.run_until(trigger).map_err(|e| Error::io(&killed, e))? {
            Ending::Exited { status, at } => {
                if !status.success() {
                    return Err(failed(&w, &format!("invocation {invocations}")));
                }
                // The run reached its end before the trigger; later kills aim at what a
                // resume of a finished run does.
                finished = Some(at);
            }
            Ending::Killed { at } => {
                let (after, _) = position(&killed)?;
                let lines = w.lines.lock().expect("lines lock").clone();
                let (phase, detail) = classify(&killed, w.pid(), &lines, &after);
                kills.push(Kill {
                    trigger,
                    at,
                    before,
                    after,
                    phase,
                    detail,
                });
            }
        }
    }
    let mut w = spawn(cfg, &killed, true)?;
    invocations += 1;
    match w
        .run_until(Trigger::Never)
        .map_err(|e| Error::io(&killed, e))?
    {
        Ending::Exited { status, .. } if status.success() => {}
        _ => return Err(failed(&w, "the last resume")),
    }
    let comparison = compare::compare(&reference, &killed)?;
    Ok(SoakReport {
        kills,
        invocations,
        comparison,
        reference_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
