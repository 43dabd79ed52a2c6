//! Checkpoint loading (`fer_model::checkpoint::load`): safetensors header, the `config` metadata
//! key and the tensors, on arbitrary bytes.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fer_fuzz::scratch_file("checkpoint.safetensors", data);
    let Ok(ck) = fer_model::checkpoint::load(&path, &Device::Cpu) else {
        return;
    };
    ck.config.validate().expect("a loaded config is valid");
    let _ = ck.model_tensors().count() + ck.train_tensors().count();
});
