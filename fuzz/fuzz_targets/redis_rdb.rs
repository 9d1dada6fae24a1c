//! An RDB file, as `sources::redis::rdb::scan` counts its keys: the
//! restored `dump.rdb` or AOF base that verify counts before a scratch
//! Redis loads it (from a repository anyone with write access to the store
//! can forge), and the file a backup saves. Whatever the bytes, the scan
//! answers — counts or an error — without a panic, a hang, or memory
//! beyond what the keys it counted take.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = kompose_dr::sources::redis::rdb::scan(data) {
        let _ = keys.counts_at(0);
        let _ = keys.counts_at(i64::MAX);
        let _ = keys.counts_at(i64::MIN);
    }
});
