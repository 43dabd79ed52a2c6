//! One `trainer train` process under watch: its stderr lines, time-stamped as they come, the
//! temp files its atomic writes create in the run folder, and a SIGKILL when the trigger fires.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub type Lines = Arc<Mutex<Vec<(Duration, String)>>>;

/// When to kill, counted within one invocation.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// `delay` after the `line`-th training progress line.
    Training { line: usize, delay: Duration },
    /// `delay` after the `n`-th "evaluating on val" line.
    Evaluation { n: usize, delay: Duration },
    /// As soon as the `n`-th temp file of a `.safetensors` write appears.
    CheckpointWrite { n: usize },
    /// This long after the start.
    Delay(Duration),
    /// Never: the invocation runs to its end.
    Never,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        match self {
            Trigger::Training { line, delay } => {
                write!(f, "{:.1} ms after progress line {line}", ms(delay))
            }
            Trigger::Evaluation { n, delay } => {
                write!(f, "{:.1} ms into evaluation {n}", ms(delay))
            }
            Trigger::CheckpointWrite { n } => write!(f, "at checkpoint temp file {n}"),
            Trigger::Delay(d) => write!(f, "{:.1} ms after the start", ms(d)),
            Trigger::Never => write!(f, "no kill"),
        }
    }
}

pub fn is_progress(line: &str) -> bool {
    line.contains(" batches, loss ")
}

pub fn is_evaluation(line: &str) -> bool {
    line.contains(": evaluating on val (")
}

/// `.<name>.tmp<pid>`: the name `fer_data::atomic` gives a file while it is being written.
pub fn temp_of(name: &str, pid: u32) -> Option<&str> {
    name.strip_prefix('.')?
        .strip_suffix(&format!(".tmp{pid}"))
        .filter(|t| !t.is_empty())
}

pub struct Watched {
    child: Child,
    pub lines: Lines,
    reader: Option<JoinHandle<()>>,
    start: Instant,
    out: PathBuf,
}

/// How an invocation ended.
pub enum Ending {
    /// SIGKILLed while running, `at` after its start.
    Killed { at: Duration },
    /// Ended by itself (perhaps just before the kill).
    Exited { status: ExitStatus, at: Duration },
}

pub fn spawn(exe: &Path, args: &[String], out: &Path) -> std::io::Result<Watched> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let lines: Lines = Arc::default();
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            sink.lock()
                .expect("lines lock")
                .push((start.elapsed(), line));
            buf.clear();
        }
    });
    Ok(Watched {
        child,
        lines,
        reader: Some(reader),
        start,
        out: out.to_path_buf(),
    })
}

impl Watched {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the `n`-th (1-based) line matching `pred` came.
    fn nth_line(&self, pred: fn(&str) -> bool, n: usize) -> Option<Duration> {
        let lines = self.lines.lock().expect("lines lock");
        lines
            .iter()
            .filter(|(_, l)| pred(l))
            .nth(n.saturating_sub(1))
            .map(|(t, _)| *t)
    }

    fn checkpoint_temps(&self) -> HashSet<String> {
        let pid = self.pid();
        let Ok(rd) = std::fs::read_dir(&self.out) else {
            return HashSet::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| temp_of(n, pid).is_some_and(|t| t.ends_with(".safetensors")))
            .collect()
    }

    /// Runs until `trigger` fires (then SIGKILL) or the process ends; the stderr reader is
    /// drained either way, so `lines` is complete on return.
    pub fn run_until(&mut self, trigger: Trigger) -> std::io::Result<Ending> {
        let mut seen = HashSet::new();
        let mut appeared = 0usize;
        let ending = loop {
            if let Some(status) = self.child.try_wait()? {
                break Ending::Exited {
                    status,
                    at: self.start.elapsed(),
                };
            }
            let now = self.start.elapsed();
            let fire = match trigger {
                Trigger::Training { line, delay } => self
                    .nth_line(is_progress, line)
                    .is_some_and(|t| now >= t + delay),
                Trigger::Evaluation { n, delay } => self
                    .nth_line(is_evaluation, n)
                    .is_some_and(|t| now >= t + delay),
                Trigger::CheckpointWrite { n } => {
                    let temps = self.checkpoint_temps();
                    appeared += temps.difference(&seen).count();
                    seen = temps;
                    appeared >= n
                }
                Trigger::Delay(d) => now >= d,
                Trigger::Never => false,
            };
            if fire {
                // SIGKILL on Unix: no handler, no flush, no destructor runs.
                self.child.kill()?;
                let status = self.child.wait()?;
                break if killed_by_signal(&status) {
                    Ending::Killed { at: now }
                } else {
                    Ending::Exited { status, at: now }
                };
            }
            // Short enough to catch a checkpoint write (milliseconds on the tiny runs).
            std::thread::sleep(Duration::from_micros(50));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(ending)
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("lines lock");
        let skip = lines.len().saturating_sub(n);
        lines[skip..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(unix)]
fn killed_by_signal(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal().is_some()
}

#[cfg(not(unix))]
fn killed_by_signal(status: &ExitStatus) -> bool {
    !status.success()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_matched_by_pid() {
        assert_eq!(
            temp_of(".last.safetensors.tmp42", 42),
            Some("last.safetensors")
        );
        assert_eq!(temp_of(".last.safetensors.tmp42", 4), None);
        assert_eq!(temp_of(".last.safetensors.tmp421", 42), None);
        assert_eq!(temp_of("last.safetensors", 42), None);
    }

    #[test]
    fn trainer_lines_are_told_apart() {
        assert!(is_progress(
            "stage1 epoch 1: 2/4 batches, loss 4.2065, lr 5.00e-2, 650 img/s"
        ));
        assert!(!is_progress(
            "stage1 epoch 1/2: loss 4.2928 | val acc 0.1250 f1 0.0278"
        ));
        assert!(is_evaluation(
            "stage2 epoch 3: evaluating on val (16 faces)"
        ));
    }
}
