//! `fer_dist::from_env`, through `fer-dist-check info` run without a launcher and with the
//! variables a launcher would set.

use std::process::{Command, Output};

const CHECK: &str = env!("CARGO_BIN_EXE_fer-dist-check");

/// Runs `fer-dist-check info` with exactly the given fer-dist and launcher variables.
fn info(env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CHECK);
    cmd.arg("info");
    for var in [
        "FER_DIST_BACKEND",
        "FER_DIST_TIMEOUT_S",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn says(out: &Output, text: &str) -> bool {
    String::from_utf8_lossy(&out.stdout).contains(text)
        || String::from_utf8_lossy(&out.stderr).contains(text)
}

#[track_caller]
fn assert_ok(out: &Output, text: &str) {
    assert!(
        out.status.success() && says(out, text),
        "{text:?} expected: {out:?}"
    );
}

#[track_caller]
fn assert_refused(out: &Output, text: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(says(out, text), "{text:?} expected: {out:?}");
}

#[test]
fn a_plain_run_is_single() {
    assert_ok(&info(&[]), "rank 0 of 1 (single)");
    assert_ok(
        &info(&[("FER_DIST_BACKEND", "single")]),
        "rank 0 of 1 (single)",
    );
}

#[test]
fn unknown_backends_and_bad_timeouts_are_refused() {
    assert_refused(
        &info(&[("FER_DIST_BACKEND", "gloo")]),
        "invalid FER_DIST_BACKEND=\"gloo\": expected single, mpi or nccl",
    );
    for bad in ["0", "-3", "soon"] {
        assert_refused(
            &info(&[("FER_DIST_TIMEOUT_S", bad)]),
            "expected a positive number of seconds",
        );
    }
    assert_ok(
        &info(&[("FER_DIST_TIMEOUT_S", "30")]),
        "rank 0 of 1 (single)",
    );
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_launcher_without_the_mpi_feature_is_refused() {
    for (var, value) in [
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("PMI_SIZE", "4"),
        ("PMIX_RANK", "1"),
    ] {
        assert_refused(
            &info(&[(var, value)]),
            "fer-dist was built without the `mpi` feature, so every rank would train alone",
        );
    }
    // One rank alone trains alone anyway.
    for (var, value) in [
        ("OMPI_COMM_WORLD_SIZE", "1"),
        ("PMI_SIZE", "1"),
        ("PMIX_RANK", "0"),
    ] {
        assert_ok(&info(&[(var, value)]), "rank 0 of 1 (single)");
    }
    assert_refused(
        &info(&[("FER_DIST_BACKEND", "mpi")]),
        "FER_DIST_BACKEND=mpi, but fer-dist was built without the `mpi` feature",
    );
}

#[cfg(feature = "mpi")]
#[test]
fn the_mpi_backend_runs_without_a_launcher() {
    // MPI's singleton start: a world of one MPI process.
    assert_ok(&info(&[("FER_DIST_BACKEND", "mpi")]), "rank 0 of 1 (mpi)");
}

#[cfg(not(feature = "nccl"))]
#[test]
fn nccl_needs_its_feature() {
    assert_refused(
        &info(&[("FER_DIST_BACKEND", "nccl")]),
        "FER_DIST_BACKEND=nccl, but fer-dist was built without the `nccl` feature",
    );
}
