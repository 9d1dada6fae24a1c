//! Planning from manifests read back from a repository, as `restore` does:
//! a damaged manifest among good ones is reported beside them and does not
//! stop the plan.

use std::sync::Arc;

use super::*;
use crate::model::manifest::fixtures::{artifact as art, manifest as snap, t};
use crate::repository::Repository;
use crate::storage::memory::MemoryBackend;

#[tokio::test]
async fn a_damaged_manifest_is_reported_and_the_good_ones_still_plan() {
    let mem = MemoryBackend::new();
    let repo = Repository::with_backend("mem", Arc::new(mem.clone()));
    for (id, day, redis_ok) in [
        ("20261125T030000Z-000025", 25, true),
        ("20261126T030000Z-000026", 26, false),
        ("20261127T030000Z-000027", 27, true),
    ] {
        let at = format!("2026-11-{day}T03:00:00Z");
        // A committed snapshot always holds some good artifact.
        let artifacts = vec![art("redis", &at, redis_ok), art("files/acme", &at, true)];
        repo.commit(&snap(id, &at, artifacts)).await.unwrap();
    }
    mem.insert("snapshots/20261128T030000Z-000028.json", "{ truncated");

    let (good, damaged) = repo.snapshots().await.unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].key, "snapshots/20261128T030000Z-000028.json");
    let ids: Vec<&str> = good.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "20261127T030000Z-000027",
            "20261126T030000Z-000026",
            "20261125T030000Z-000025"
        ],
        "newest first"
    );

    let c = choose(
        &good,
        &Selector::PointInTime(t("2026-11-26T12:00:00Z")),
        None,
    )
    .unwrap();
    assert_eq!(
        (c[0].snapshot.as_str(), c[0].skipped_failed.clone()),
        (
            "20261125T030000Z-000025",
            vec!["20261126T030000Z-000026".to_owned()]
        )
    );
}
