//! `Manifest::load` on arbitrary bytes; a manifest it accepts must survive save + load unchanged.
#![no_main]

use fer_data::manifest::{Manifest, SkipReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fer_fuzz::scratch_file("prepared/manifest.json", data);
    let Ok(m) = Manifest::load(&path) else {
        return;
    };
    let root = fer_fuzz::scratch().join("prepared");
    for split in m.splits.keys() {
        let _ = m.shard_paths(&root, split);
    }
    let _ = (m.has_test(), m.is_legacy(), m.has_checksums());
    let _ = m.skipped_count(SkipReason::MalformedRow);
    let again = root.join("again.json");
    m.save(&again).expect("an accepted manifest saves");
    let back = Manifest::load(&again).expect("a saved manifest loads");
    assert_eq!(m, back);
});
