//! A snapshot manifest from the repository (`snapshots/<ID>.json`), read as
//! `Repository::snapshots` reads it: bounded in size, parsed, its version
//! checked, then `repository::validate::manifest`. One that passes is used
//! as readers use it: restore plans (`restore::plan::choose`), retention
//! (`model::retention::decide`, as prune does), sizes and labels. None of
//! it may panic, whatever the bytes.
#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use kompose_dr::model::manifest::{MANIFEST_VERSION, Manifest};
use kompose_dr::model::retention::{Retention, decide};
use kompose_dr::repository::validate;
use kompose_dr::restore::plan::{Selector, choose};
use kompose_dr::storage::keys;
use libfuzzer_sys::fuzz_target;

/// Another good snapshot beside the fuzzed one, so that plans and retention
/// compare two.
const OTHER: &str = r#"{"version":1,"id":"20261127T030000Z-abcdef","repository":"local",
"hostname":"h","tool_version":"0.1.0","policy":null,"started_at":"2026-11-27T03:00:00Z",
"finished_at":"2026-11-27T03:00:01Z","status":"ok","artifacts":[{"source":"files/plain",
"kind":"file","path":"data/20261127T030000Z-abcdef/files/plain.zst.age",
"captured_at":"2026-11-27T03:00:00Z","plaintext_bytes":6,"stored_bytes":347,
"sha256":"a03240ebeb9ef4bd8a723afd2845ee768af08bdd16fb50bfe9880a0f6e5212b1","status":"ok",
"error":null,"tool_version":null,"server_version":null,"duration_seconds":0.1}],"facts":null}"#;

fn other() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        let m: Manifest = serde_json::from_str(OTHER).expect("the fixed manifest parses");
        validate::manifest(&m, &keys::manifest_key(&m.id)).expect("the fixed manifest is good");
        m
    })
}

fn every_rule() -> Retention {
    Retention {
        keep_last: Some(2),
        keep_hourly: Some(3),
        keep_daily: Some(3),
        keep_weekly: Some(3),
        keep_monthly: Some(3),
        keep_yearly: Some(3),
        keep_within: Some(std::time::Duration::from_secs(14 * 86400)),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > validate::MAX_DOCUMENT {
        return;
    }
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    if m.version > MANIFEST_VERSION {
        return;
    }
    // Under another snapshot's name it must be refused (unless it is that
    // snapshot), and the message built without panicking.
    let fixed = keys::manifest_key(kompose_dr_fuzz::SEED_SNAPSHOT);
    let under_fixed = validate::manifest(&m, &fixed);
    assert!(
        under_fixed.is_err() || m.id == kompose_dr_fuzz::SEED_SNAPSHOT,
        "a manifest with id {:?} passed under {fixed}",
        m.id
    );
    let key = keys::manifest_key(&m.id);
    if validate::manifest(&m, &key).is_err() {
        return;
    }
    // What readers do with a manifest that passed.
    let _ = m.stored_bytes();
    for a in &m.artifacts {
        let _ = kompose_dr::restore::stream::label(a);
        let _ = a.kind.extension();
    }
    let _ = serde_json::to_vec_pretty(&m).expect("a manifest serialises");
    let now: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
    let mut both = vec![m.clone(), other().clone()];
    both.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
    for snaps in [std::slice::from_ref(&m), &both[..]] {
        let _ = decide(snaps, &every_rule(), now, &Utc);
        let _ = decide(snaps, &every_rule(), now, &chrono_tz::Europe::Berlin);
        let _ = decide(snaps, &every_rule(), now, &chrono_tz::Pacific::Kiritimati);
        for sel in [
            Selector::Latest,
            Selector::Snapshot(m.id.clone()),
            Selector::PointInTime(now),
            Selector::PointInTime(m.started_at),
            Selector::PointInTime(DateTime::<Utc>::MIN_UTC),
            Selector::PointInTime(DateTime::<Utc>::MAX_UTC),
        ] {
            let _ = choose(snaps, &sel, None);
        }
    }
});
