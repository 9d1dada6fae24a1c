//! The repository marker (`kompose-dr.json`), read as `Repository::marker`
//! reads it after its signature: parsed, its version checked. What a
//! reader does with a good one (compare recipients, print it) must not
//! panic either.
#![no_main]

use kompose_dr::repository::{FORMAT_VERSION, Marker, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > validate::MAX_DOCUMENT {
        return;
    }
    let Ok(marker) = serde_json::from_slice::<Marker>(data) else {
        return;
    };
    if marker.version > FORMAT_VERSION {
        return;
    }
    let _ = marker.recipients == [kompose_dr_fuzz::RECIPIENT.to_owned()];
    let _ = format!("{marker:?}");
    let _ = serde_json::to_vec_pretty(&marker).expect("a marker serialises");
});
