//! Prune's records (`pruned/<ID>.json`), read as `Repository::pruned`
//! reads them after their signature: parsed and checked by
//! `repository::pruned::parse` at the key of the seed record. What a
//! reader does with a good one (collect the ids it names) must not panic.
#![no_main]

use kompose_dr::repository::{pruned, validate};
use kompose_dr::storage::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > validate::MAX_DOCUMENT {
        return;
    }
    let key = keys::prune_record_key("20261201T040000Z-abcdef");
    let Ok(record) = pruned::parse(data, &key) else {
        return;
    };
    assert!(record.removed.len() <= pruned::MAX_REMOVED);
    let removed: std::collections::BTreeSet<&str> =
        record.removed.iter().map(String::as_str).collect();
    let _ = removed.len();
    let _ = format!("{record:?}");
});
