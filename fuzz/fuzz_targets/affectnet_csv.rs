//! The AffectNet list reader (`fer_data::affectnet::read_list`) on arbitrary CSV bytes, then the
//! stratified val carve preparation runs on what it read.
#![no_main]

use fer_data::prepare::Listing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let csv = fer_fuzz::scratch_file("affectnet/training.csv", data);
    let images = fer_fuzz::scratch().join("affectnet/Manually_Annotated_Images");
    for num_classes in [7, 8] {
        let Ok(split) = fer_data::affectnet::read_list(&csv, &images, "train", num_classes) else {
            continue;
        };
        assert_eq!(split.candidates.len() + split.skipped.len(), split.rows);
        let mut listing = Listing::default();
        listing.splits[0] = split;
        let _ = listing.carve_val(0.1, 7);
    }
});
