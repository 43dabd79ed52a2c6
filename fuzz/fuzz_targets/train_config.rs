//! `TrainConfig::from_toml_str` on arbitrary text; an accepted config must round-trip through
//! `to_toml` unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trainer::config::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = TrainConfig::from_toml_str(text, Path::new("fuzz.toml")) else {
        return;
    };
    let toml = cfg.to_toml().expect("an accepted config serialises");
    let back = TrainConfig::from_toml_str(&toml, Path::new("again.toml"))
        .expect("a serialised config parses");
    // `to_toml` always writes `model.aux_head`, so the copy reads it as set.
    let mut cfg = cfg;
    cfg.aux_head_set = back.aux_head_set;
    assert_eq!(cfg, back);
});
