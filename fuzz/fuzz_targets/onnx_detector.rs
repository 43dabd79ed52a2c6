//! The face detector's ONNX reader (`fer_detect::Detector::from_bytes`: protobuf decoding and
//! graph compilation) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = fer_detect::Detector::from_bytes(data) {
        assert!((32..=4096).contains(&d.input_size()));
    }
});
