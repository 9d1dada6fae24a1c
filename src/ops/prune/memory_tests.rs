//! Prune against a repository on [`MemoryBackend`]: what goes, in which
//! order, and what is left when a removal fails halfway.
//!
//! The invariant every test checks after a failure: no manifest names data
//! that is gone (the manifest is removed first), so a restore never starts
//! from a snapshot it cannot finish.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::*;
use crate::model::manifest::ArtifactKind;
use crate::model::manifest::fixtures::{artifact, manifest};
use crate::storage::Backend;
use crate::storage::keys::{artifact_key, snapshot_data_prefix};
use crate::storage::memory::{Failure, MemoryBackend, Op};

/// A configuration keeping the newest `keep_last` snapshots made without a
/// policy, with calendar buckets in UTC.
fn config(keep_last: u32) -> Config {
    let text = format!(
        "timezone = \"UTC\"\n\n[[repository]]\nname = \"mem\"\nurl = \"/nonexistent\"\n\n[retention]\nkeep_last = {keep_last}\n"
    );
    Config::from_toml(&text, Path::new("/etc/kompose-dr/test.toml")).unwrap()
}

fn options(dry_run: bool) -> PruneOptions {
    PruneOptions {
        dry_run,
        policy: None,
        grace: Duration::from_secs(6 * 3600),
    }
}

/// A repository on memory with one snapshot per entry of `days_ago`, each
/// with one archive; ids are returned oldest first.
struct Fixture {
    mem: MemoryBackend,
    repo: Repository,
    ids: Vec<String>,
    now: DateTime<Utc>,
}

async fn fixture(days_ago: &[i64]) -> Fixture {
    let mem = MemoryBackend::new();
    let repo = Repository::with_backend("mem", Arc::new(mem.clone()));
    let now = Utc::now();
    let mut ids = Vec::new();
    for d in days_ago {
        let at = now - chrono::Duration::days(*d);
        let at_text = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let id = crate::model::time::snapshot_id(at);
        let key = artifact_key(&id, "postgres/app", ArtifactKind::PostgresDump);
        mem.insert(&key, "archive");
        let mut a = artifact("postgres/app", &at_text, true);
        a.path = Some(key);
        repo.commit(&manifest(&id, &at_text, vec![a]))
            .await
            .unwrap();
        ids.push(id);
    }
    ids.sort();
    Fixture {
        mem,
        repo,
        ids,
        now,
    }
}

impl Fixture {
    async fn prune(&self, keep_last: u32, dry_run: bool) -> Result<PruneReport, String> {
        run(
            &config(keep_last),
            &[],
            &self.repo,
            None,
            &options(dry_run),
            self.now,
        )
        .await
        .map_err(|e| e.to_string())
    }

    fn has_manifest(&self, id: &str) -> bool {
        self.mem.object(&manifest_key(id)).is_some()
    }

    fn has_data(&self, id: &str) -> bool {
        self.mem
            .keys()
            .iter()
            .any(|k| k.starts_with(&snapshot_data_prefix(id)))
    }

    /// Every manifest left names only data that is still there.
    async fn assert_no_manifest_names_missing_data(&self) {
        let (good, damaged) = self.repo.snapshots().await.unwrap();
        assert!(damaged.is_empty(), "{damaged:?}");
        for m in good {
            for a in &m.artifacts {
                let path = a.path.as_deref().expect("good artifacts have a path");
                assert!(
                    self.mem.object(path).is_some(),
                    "{} names {path}, which is gone",
                    m.id
                );
            }
        }
    }
}

#[tokio::test]
async fn retention_removes_old_snapshots_manifest_first() {
    let f = fixture(&[4, 3, 2, 1]).await;
    let report = f.prune(2, false).await.unwrap();
    let removed: Vec<&str> = report
        .snapshots
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.snapshot.as_str())
        .collect();
    assert_eq!(removed, vec![f.ids[1].as_str(), f.ids[0].as_str()]);
    for id in &f.ids[..2] {
        assert!(
            !f.has_manifest(id) && !f.has_data(id),
            "{id} is still there"
        );
    }
    for id in &f.ids[2..] {
        assert!(f.has_manifest(id) && f.has_data(id), "{id} was removed");
    }
    // For each removed snapshot, its manifest went before its data.
    let calls = f.mem.calls();
    for id in &f.ids[..2] {
        let at = |op: Op, key: &str| {
            calls
                .iter()
                .position(|c| c.op == op && c.key == key && c.ok)
                .unwrap_or_else(|| panic!("no {op:?} {key}"))
        };
        assert!(
            at(Op::Delete, &manifest_key(id)) < at(Op::DeletePrefix, &snapshot_data_prefix(id)),
            "{calls:?}"
        );
    }
    f.assert_no_manifest_names_missing_data().await;
}

#[tokio::test]
async fn a_dry_run_removes_nothing_but_reports_everything() {
    let f = fixture(&[4, 3, 2, 1]).await;
    // Data no manifest names, from a run ten days ago, and a write that
    // was never finished.
    let orphan = crate::model::time::snapshot_id(f.now - chrono::Duration::days(10));
    f.mem.insert(&format!("data/{orphan}/redis/r.tar"), "x");
    std::mem::forget(f.mem.create("data/x/unfinished").await.unwrap());
    let before = f.mem.keys();
    let setup_calls = f.mem.calls().len();

    let report = run(
        &config(1),
        &[],
        &f.repo,
        None,
        &options(true),
        f.now + chrono::Duration::days(1),
    )
    .await
    .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.snapshots.iter().filter(|d| !d.keep).count(), 3);
    assert_eq!(report.unreferenced, vec![format!("data/{orphan}/")]);
    assert_eq!(report.abandoned.len(), 1, "{:?}", report.abandoned);

    assert_eq!(f.mem.keys(), before);
    assert_eq!(f.mem.pending_writes(), vec!["data/x/unfinished"]);
    let removals: Vec<_> = f
        .mem
        .calls()
        .into_iter()
        .skip(setup_calls)
        .filter(|c| matches!(c.op, Op::Delete | Op::DeletePrefix | Op::Put))
        .collect();
    assert!(removals.is_empty(), "{removals:?}");
}

#[tokio::test]
async fn a_failed_data_removal_leaves_unreferenced_data_that_the_next_prune_removes() {
    let f = fixture(&[4, 3, 2, 1]).await;
    // The data of the second snapshot to go cannot be removed.
    f.mem
        .faults()
        .fail_after(Op::DeletePrefix, "data/", 1, 1, Failure::Unavailable);
    let e = f.prune(2, false).await.unwrap_err().to_string();
    assert!(e.contains("no answer from the store"), "{e}");
    // Both manifests are gone; the data of one of them is left over.
    assert!(!f.has_manifest(&f.ids[0]) && !f.has_manifest(&f.ids[1]));
    assert_eq!(
        f.ids[..2].iter().filter(|id| f.has_data(id)).count(),
        1,
        "{:?}",
        f.mem.keys()
    );
    f.assert_no_manifest_names_missing_data().await;

    // The store is back: the leftover is unreferenced and older than the
    // grace period, so it goes.
    f.mem.faults().clear();
    let report = f.prune(2, false).await.unwrap();
    assert_eq!(report.unreferenced.len(), 1, "{report:?}");
    assert!(!f.has_data(&f.ids[0]) && !f.has_data(&f.ids[1]));
    assert!(
        f.ids[2..]
            .iter()
            .all(|id| f.has_manifest(id) && f.has_data(id))
    );
}

#[tokio::test]
async fn a_failed_manifest_removal_stops_prune_with_that_snapshot_whole() {
    let f = fixture(&[4, 3, 2, 1]).await;
    // The second manifest to go (ids[0]) cannot be removed.
    f.mem.faults().fail_after(
        Op::Delete,
        &format!("snapshots/{}", f.ids[0]),
        0,
        1,
        Failure::PermissionDenied,
    );
    let e = f.prune(2, false).await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    // Newest first: the first to go (ids[1]) went entirely; the second
    // (ids[0]) is untouched, manifest and data.
    assert!(!f.has_manifest(&f.ids[1]) && !f.has_data(&f.ids[1]));
    assert!(f.has_manifest(&f.ids[0]) && f.has_data(&f.ids[0]));
    f.assert_no_manifest_names_missing_data().await;
}

#[tokio::test]
async fn a_damaged_manifest_stops_prune_before_anything_is_removed() {
    let f = fixture(&[3, 2, 1]).await;
    f.mem
        .insert("snapshots/20260101T000000Z-bad000.json", "{ not json");
    let before = f.mem.keys();
    let e = f.prune(1, false).await.unwrap_err().to_string();
    assert!(
        e.contains("snapshots/20260101T000000Z-bad000.json") && e.contains("cannot be read"),
        "{e}"
    );
    assert_eq!(f.mem.keys(), before);
}

#[tokio::test]
async fn a_failed_listing_fails_prune_before_anything_is_removed() {
    let f = fixture(&[3, 2, 1]).await;
    f.mem.faults().fail_next(Op::List, 1, Failure::Unavailable);
    let before = f.mem.keys();
    let e = f.prune(1, false).await.unwrap_err().to_string();
    assert!(e.contains("no answer from the store"), "{e}");
    assert_eq!(f.mem.keys(), before);
}

#[tokio::test]
async fn unreferenced_data_stays_until_the_grace_period_is_over() {
    let f = fixture(&[1]).await;
    let young = crate::model::time::snapshot_id(f.now - chrono::Duration::hours(1));
    let old = crate::model::time::snapshot_id(f.now - chrono::Duration::days(2));
    f.mem.insert(&format!("data/{young}/files/f"), "x");
    f.mem.insert(&format!("data/{old}/files/f"), "x");
    // Not a snapshot id: its age is unknown, so it is never taken.
    f.mem.insert("data/not-an-id/files/f", "x");
    let report = f.prune(5, false).await.unwrap();
    assert_eq!(report.unreferenced, vec![format!("data/{old}/")]);
    assert!(f.has_data(&young) && !f.has_data(&old) && f.has_data("not-an-id"));
    assert!(f.has_manifest(&f.ids[0]) && f.has_data(&f.ids[0]));
}

#[tokio::test]
async fn abandoned_writes_older_than_the_grace_period_are_removed() {
    let f = fixture(&[1]).await;
    std::mem::forget(f.mem.create("data/x/killed").await.unwrap());
    // Six hours of grace have not passed yet: it stays.
    let report = f.prune(5, false).await.unwrap();
    assert!(report.abandoned.is_empty(), "{report:?}");
    let later = f.now + chrono::Duration::hours(7);
    let report = run(&config(5), &[], &f.repo, None, &options(false), later)
        .await
        .unwrap();
    assert_eq!(report.abandoned.len(), 1, "{report:?}");
    assert!(f.mem.pending_writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_prune_before_the_first_removal() {
    let f = fixture(&[3, 2, 1]).await;
    let lock = f
        .repo
        .lock("prune", Duration::ZERO)
        .await
        .unwrap()
        .expect("a memory repository is locked with a lease");
    // Renewals fail until the lease counts as lost.
    f.mem
        .faults()
        .fail_prefix(Op::Put, crate::storage::keys::LOCKS, Failure::Unavailable);
    tokio::time::sleep(crate::repository::lock::lease::TTL + Duration::from_secs(1)).await;
    assert!(lock.is_lost());
    let before: Vec<String> = f
        .mem
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with(crate::storage::keys::LOCKS))
        .collect();
    let e = run(
        &config(1),
        &[],
        &f.repo,
        Some(&lock),
        &options(false),
        f.now,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("lost the repository lock"), "{e}");
    let after: Vec<String> = f
        .mem
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with(crate::storage::keys::LOCKS))
        .collect();
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_grace_longer_than_the_calendar_keeps_everything_instead_of_panicking() {
    let f = fixture(&[1]).await;
    std::mem::forget(f.mem.create("data/x/killed").await.unwrap());
    let mut opts = options(false);
    opts.grace = std::time::Duration::from_secs(300_000 * 365 * 24 * 3600);
    let report = run(&config(5), &[], &f.repo, None, &opts, f.now)
        .await
        .unwrap();
    assert!(report.abandoned.is_empty(), "{report:?}");
    assert_eq!(f.mem.pending_writes().len(), 1);
}
