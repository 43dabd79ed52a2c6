//! The shard reader on arbitrary bytes: `Shard::open` (every image read back), `open_checked`
//! against the entry the file itself implies, and the loader's `Dataset::open` of a split folder
//! holding it.
#![no_main]

use fer_data::loader::Dataset;
use fer_data::manifest::ShardEntry;
use fer_data::shard::Shard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fer_fuzz::scratch_file("shards/train/shard-00000.safetensors", data);
    let Ok(shard) = Shard::open(&path) else {
        return;
    };
    let side = shard.size();
    for i in 0..shard.len() {
        assert_eq!(shard.image(i).len(), 3 * side * side);
    }
    let entry = ShardEntry {
        file: "shard-00000.safetensors".into(),
        count: shard.len(),
        bytes: Some(shard.file_len()),
        checksum: Some(shard.checksum()),
    };
    drop(shard);
    Shard::open_checked(&path, &entry).expect("the file matches its own entry");
    if let Ok(ds) = Dataset::open(path.parent().expect("split folder")) {
        assert_eq!(ds.len(), entry.count);
    }
});
