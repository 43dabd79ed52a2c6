//! Kill anywhere, lose nothing: a run SIGKILLed at random moments (the first kill before its
//! first checkpoint) and resumed with `--resume` after each kill ends bit-identical to an
//! uninterrupted run. `cargo xtask soak` is the long version of this test.

mod common;

use common::*;
use trainer::soak::compare::compare;
use trainer::soak::{soak, SoakConfig};

#[test]
fn killed_three_times_and_resumed_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SoakConfig {
        trainer: env!("CARGO_BIN_EXE_trainer").into(),
        data: tiny_affectnet().to_path_buf(),
        config: TINY.into(),
        extra: vec![],
        threads: 2,
        dir: dir.path().to_path_buf(),
        kills: 3,
        seed: 5,
    };
    let report = soak(&cfg).unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.kills.len(), 3);
    assert!(report.identical(), "{}", report.summary());
    // last, best, best-stage1 and best-stage2, every tensor compared.
    assert_eq!(report.comparison.checkpoints, 4);
    assert!(report.comparison.tensors > 4 * 100);

    // The comparison sees a single flipped bit in one tensor.
    let reference = dir.path().join("reference");
    let tampered = dir.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    for e in std::fs::read_dir(&reference).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tampered.join(p.file_name().unwrap())).unwrap();
    }
    assert!(compare(&reference, &tampered)
        .unwrap()
        .mismatches
        .is_empty());
    let last = tampered.join("last.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&last, bytes).unwrap();
    let m = compare(&reference, &tampered).unwrap().mismatches;
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("last.safetensors: 1 of "), "{m:?}");
}
