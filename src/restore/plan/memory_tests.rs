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
    for (id, day, redis_ok) in [("s25", 25, true), ("s26", 26, false), ("s27", 27, true)] {
        let at = format!("2026-11-{day}T03:00:00Z");
        let artifacts = vec![art("redis", &at, redis_ok)];
        repo.commit(&snap(id, &at, artifacts)).await.unwrap();
    }
    mem.insert("snapshots/s28.json", "{ truncated");

    let (good, damaged) = repo.snapshots().await.unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].key, "snapshots/s28.json");
    let ids: Vec<&str> = good.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["s27", "s26", "s25"], "newest first");

    let c = choose(
        &good,
        &Selector::PointInTime(t("2026-11-26T12:00:00Z")),
        None,
    )
    .unwrap();
    assert_eq!(
        (c[0].snapshot.as_str(), c[0].skipped_failed.clone()),
        ("s25", vec!["s26".to_owned()])
    );
}
