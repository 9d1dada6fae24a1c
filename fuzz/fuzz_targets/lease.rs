//! Who holds the writer lock, as the repository says: the lease objects of
//! an S3 repository (`locks/*.json`, `repository::lock::lease::LeaseBody`)
//! and the holder written into a local repository's `lock` file
//! (`repository::lock::Holder`). Both are read back and shown to the
//! operator when the lock is taken; neither may panic.
#![no_main]

use chrono::{DateTime, Utc};
use kompose_dr::repository::lock::Holder;
use kompose_dr::repository::lock::lease::LeaseBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
    if let Ok(l) = serde_json::from_slice::<LeaseBody>(data) {
        let _ = l.expires_at < now;
        let _ = l.holder.to_string();
        let _ = serde_json::to_vec(&l).expect("a lease serialises");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(h) = serde_json::from_str::<Holder>(text)
    {
        let _ = h.to_string();
    }
});
