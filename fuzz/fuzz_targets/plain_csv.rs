//! The plain CSV reader (`fer_data::plain_csv::read`) on arbitrary CSV bytes, then the val carve.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let csv = fer_fuzz::scratch_file("plain/list.csv", data);
    let images = fer_fuzz::scratch().join("plain");
    let Ok(mut listing) = fer_data::plain_csv::read(&csv, &images, 8) else {
        return;
    };
    for split in &listing.splits {
        assert_eq!(split.candidates.len() + split.skipped.len(), split.rows);
    }
    let _ = listing.carve_val(0.2, 3);
});
