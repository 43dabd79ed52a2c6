//! `--resume` where there is nothing to resume starts afresh, clearing what a killed run left
//! but never someone else's files; a write that fails keeps the last checkpoint intact.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn train(out: &Path, extra: &[&str]) -> Output {
    train_tiny(tiny_affectnet(), out, extra)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What two runs of one seed must share: metrics.json and metrics.jsonl without timings.
fn numbers(run: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut m = read_json(&run.join("metrics.json"));
    m.as_object_mut().unwrap().remove("train_seconds");
    (m, history_without_timings(run))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn temps(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn resume_with_nothing_to_resume_starts_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ok(&train(&full, &[]));
    let want = numbers(&full);

    // No folder, and an empty one.
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for out in [&missing, &empty] {
        let o = train(out, &["--resume"]);
        ok(&o);
        let e = stderr(&o);
        let said = format!("no checkpoint in {}: starting a new run", out.display());
        assert!(e.contains(&said), "{e}");
        assert_eq!(numbers(out), want);
    }

    // A run killed before its first checkpoint: between its history and its last.safetensors,
    // the latter half written. A stopped run without its checkpoint is exactly that.
    let killed = dir.path().join("killed");
    ok(&train(&killed, &["--stop-after-epochs", "1"]));
    let last = std::fs::read(killed.join("last.safetensors")).unwrap();
    std::fs::remove_file(killed.join("last.safetensors")).unwrap();
    // Not a pid of a process that could be writing it now.
    let half = ".last.safetensors.tmp4000000000";
    std::fs::write(killed.join(half), &last[..last.len() / 2]).unwrap();
    assert!(killed.join("metrics.jsonl").is_file());
    assert!(killed.join("best-stage1.safetensors").is_file());
    let o = train(&killed, &["--resume"]);
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("starting a new run"), "{e}");
    assert!(
        e.contains("removing what a run killed before its first checkpoint left")
            && e.contains(half),
        "{e}"
    );
    assert_eq!(numbers(&killed), want);
    assert_eq!(temps(&killed), Vec::<String>::new());
    assert_eq!(names(&killed), names(&full));
}

#[test]
fn resume_refuses_a_folder_that_is_not_a_run() {
    let dir = tempfile::tempdir().unwrap();
    // Someone's files, one of them with a run file's name.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    std::fs::write(theirs.join("best.safetensors"), "also mine").unwrap();
    let e = err(&train(&theirs, &["--resume"]));
    assert!(
        e.contains(&format!("{} is not a run folder", theirs.display())) && e.contains("notes.txt"),
        "{e}"
    );
    // Nothing written, nothing removed.
    assert_eq!(names(&theirs), ["best.safetensors", "notes.txt"]);
    assert_eq!(std::fs::read(theirs.join("notes.txt")).unwrap(), b"mine");

    // Run file names without the config.toml every run writes first.
    std::fs::remove_file(theirs.join("notes.txt")).unwrap();
    let e = err(&train(&theirs, &["--resume"]));
    assert!(e.contains("no config.toml"), "{e}");
    assert_eq!(names(&theirs), ["best.safetensors"]);

    // --out naming a file.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = err(&train(&file, &["--resume"]));
    assert!(e.contains("is a file, not a run folder"), "{e}");
}

/// The bytes of `run`'s last checkpoint, after checking that it loads.
fn loaded_last(run: &Path) -> Vec<u8> {
    let p = run.join("last.safetensors");
    fer_model::checkpoint::load(&p, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::fs::read(p).unwrap()
}

#[test]
fn a_failed_checkpoint_write_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ok(&train(&full, &[]));

    // Stopped at the stage boundary, so the next epoch (stage 2's first) is always its best
    // and writes best-stage2.safetensors, which cannot replace a folder: the write fails as
    // it would on a full disk, whoever runs the test.
    let run = dir.path().join("run");
    ok(&train(&run, &["--stop-after-epochs", "2"]));
    let before = loaded_last(&run);
    let blocker = run.join("best-stage2.safetensors");
    std::fs::create_dir(&blocker).unwrap();
    let e = err(&train(&run, &["--resume"]));
    assert!(e.contains("writing the run folder failed"), "{e}");
    assert!(e.contains(blocker.to_str().unwrap()), "{e}");
    let last = run.join("last.safetensors");
    assert!(
        e.contains(&format!(
            "the last checkpoint, {}, is intact",
            last.display()
        )) && e.contains("--resume"),
        "{e}"
    );
    assert_eq!(loaded_last(&run), before, "the last checkpoint changed");
    assert_eq!(temps(&run), Vec::<String>::new());

    // Nothing lost: once the cause is gone the run ends as if never stopped.
    std::fs::remove_dir(&blocker).unwrap();
    ok(&train(&run, &["--resume"]));
    assert_eq!(numbers(&run), numbers(&full));
}

#[cfg(unix)]
#[test]
fn a_read_only_run_folder_fails_clearly_and_keeps_the_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(&train(&run, &["--stop-after-epochs", "1"]));
    let before = loaded_last(&run);
    let set = |mode| std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o555);
    // Root (CAP_DAC_OVERRIDE) writes into read-only folders: then there is no failure to
    // provoke this way; a_failed_checkpoint_write_keeps_the_last_checkpoint provokes one
    // that does not depend on the user.
    let probe = run.join("probe");
    if std::fs::write(&probe, "x").is_ok() {
        std::fs::remove_file(&probe).unwrap();
        set(0o755);
        eprintln!("skipped: this user writes into read-only folders (root), chmod cannot stop it");
        return;
    }
    let o = train(&run, &["--resume"]);
    set(0o755);
    let e = err(&o);
    assert!(e.contains(run.to_str().unwrap()), "{e}");
    assert!(
        e.contains("Permission denied") || e.contains("permission denied"),
        "{e}"
    );
    assert!(e.contains("writable"), "{e}");
    assert_eq!(loaded_last(&run), before, "the last checkpoint changed");
}
