//! Copies between repositories in memory: the plan (what is copied, in
//! which order), the commit point, a damaged object, a resumed copy, and
//! the backfill plan.

use std::sync::Arc;

use sha2::Digest;

use super::backfill::{self, Holding};
use super::*;
use crate::model::config::Trust;
use crate::model::manifest::fixtures::{artifact, manifest as fixture, t};
use crate::model::manifest::{ArtifactKind, StoredObject};
use crate::model::retention::Retention;
use crate::model::secret::Secret;
use crate::storage::memory::{Failure as Fault, MemoryBackend};

fn signing() -> Trust {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    Trust {
        public_key: Some(kp.pk.to_base64()),
        signing_key: Some(Secret::new(kp.sk.to_box(None).unwrap().into_string())),
        allow_unsigned: false,
        seen_dir: None,
    }
}

/// The stack every repository of these tests belongs to, as `init` gives
/// one configuration's repositories one stack.
const STACK: &str = "0b8b7a52-6f2e-4a47-9d3c-5b1f7e2a9c10";

async fn repository(name: &str, trust: &Trust) -> (Repository, MemoryBackend) {
    let mem = MemoryBackend::new();
    let repo = Repository::with_backend(name, Arc::new(mem.clone())).trusting(trust.clone());
    let r = age::x25519::Identity::generate().to_public();
    repo.init(&[r], STACK).await.unwrap();
    (repo, mem)
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Commits a snapshot of `files/acme` holding `payload`, with a facts
/// sidecar, as a backup would.
async fn snapshot(repo: &Repository, mem: &MemoryBackend, id: &str, at: &str, payload: &[u8]) {
    let mut a = artifact("files/acme", at, true);
    a.stored_bytes = payload.len() as u64;
    a.sha256 = Some(sha(payload));
    let mut failed = artifact("postgres/app", at, false);
    failed.stored_bytes = 0;
    let mut m = fixture(id, at, vec![a, failed]);
    m.policy = Some("nightly".into());
    m.repository = repo.name().into();
    mem.insert(
        &keys::artifact_key(id, "files/acme", ArtifactKind::File),
        payload.to_vec(),
    );
    let facts = format!("facts of {id}").into_bytes();
    mem.insert(&keys::facts_key(id), facts.clone());
    m.facts = Some(StoredObject {
        path: keys::facts_key(id),
        stored_bytes: facts.len() as u64,
        sha256: sha(&facts),
    });
    repo.commit(&m).await.unwrap();
}

const A: &str = "20261125T030000Z-aaaaaa";
const B: &str = "20261126T030000Z-bbbbbb";
const C: &str = "20261127T030000Z-cccccc";

/// Options for one copy. The lease of the copy before (in this same
/// process) is released in the background: wait for it a moment, as the
/// backfill does.
fn opts(selection: Selection) -> CopyOptions {
    CopyOptions {
        selection,
        dry_run: false,
        lock_wait: std::time::Duration::from_secs(10),
    }
}

fn manifests(mem: &MemoryBackend) -> Vec<String> {
    mem.keys()
        .into_iter()
        .filter(|k| k.starts_with(keys::SNAPSHOTS) && k.ends_with(".json"))
        .collect()
}

#[test]
fn missing_plans_oldest_first_and_skips_what_the_target_has() {
    let good = vec![
        fixture(C, "2026-11-27T03:00:00Z", vec![]),
        fixture(A, "2026-11-25T03:00:00Z", vec![]),
        fixture(B, "2026-11-26T03:00:00Z", vec![]),
    ];
    let in_target: BTreeSet<String> = [B.to_owned()].into();
    let p = plan(&Selection::Missing, &good, &[], &in_target, "local").unwrap();
    let ids: Vec<&str> = p.copy.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [A, C]);
    let p = plan(
        &Selection::Snapshots(vec![C.into(), B.into(), C.into()]),
        &good,
        &[],
        &in_target,
        "local",
    )
    .unwrap();
    assert_eq!(p.copy.len(), 1);
    assert_eq!(p.skipped, [B]);
}

#[test]
fn an_unknown_or_malformed_snapshot_is_a_usage_error_and_a_damaged_one_fails() {
    let good = vec![fixture(A, "2026-11-25T03:00:00Z", vec![])];
    let damaged = vec![crate::repository::DamagedManifest {
        key: keys::manifest_key(B),
        message: "wrongly signed".into(),
    }];
    let none = BTreeSet::new();
    let e = plan(
        &Selection::Snapshots(vec![C.into()]),
        &good,
        &damaged,
        &none,
        "local",
    )
    .unwrap_err();
    assert_eq!(e.class, crate::error::Class::Usage);
    assert!(e.message.contains("has no such snapshot"), "{}", e.message);
    let e = plan(
        &Selection::Snapshots(vec!["../x".into()]),
        &good,
        &damaged,
        &none,
        "local",
    )
    .unwrap_err();
    assert!(e.message.contains("not a snapshot id"), "{}", e.message);
    let p = plan(&Selection::Missing, &good, &damaged, &none, "local").unwrap();
    assert_eq!(p.damaged, [(B.to_owned(), "wrongly signed".to_owned())]);
}

#[tokio::test]
async fn a_signed_snapshot_is_copied_byte_for_byte_and_verifies_in_the_target() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    snapshot(&src, &src_mem, B, "2026-11-26T03:00:00Z", b"second").await;
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert_eq!(report.count(CopyStatus::Copied), 2, "{report:?}");
    assert!(report.snapshots.iter().all(|s| s.signed && s.objects == 2));
    for id in [A, B] {
        let key = keys::manifest_key(id);
        assert_eq!(src_mem.object(&key), dst_mem.object(&key));
        let sig = keys::signature_key(&key);
        assert_eq!(src_mem.object(&sig), dst_mem.object(&sig));
    }
    // Readers of the target, with the same public key, accept them.
    let (good, damaged) = dst.snapshots().await.unwrap();
    assert_eq!(good.len(), 2);
    assert!(damaged.is_empty(), "{damaged:?}");
    // Nothing left to copy.
    let again = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert!(again.snapshots.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_damaged_object_aborts_its_snapshot_and_commits_nothing() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    snapshot(&src, &src_mem, B, "2026-11-26T03:00:00Z", b"second").await;
    let key = keys::artifact_key(B, "files/acme", ArtifactKind::File);
    src_mem.insert(&key, b"secOnd".to_vec());
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert_eq!(report.outcome(), Outcome::Failed);
    let failed = report.snapshots.iter().find(|s| s.snapshot == B).unwrap();
    let e = failed.error.as_deref().unwrap();
    for want in [B, key.as_str(), "`local`", "`offsite`", "check --read-data"] {
        assert!(e.contains(want), "{want}: {e}");
    }
    assert_eq!(manifests(&dst_mem), [keys::manifest_key(A)]);
    assert!(dst_mem.object(&key).is_none());
    assert!(dst_mem.pending_writes().is_empty());
}

#[tokio::test]
async fn an_interrupted_copy_is_resumed_keeping_the_objects_already_there() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    // The facts sidecar fails to be written: the archive is there, the
    // snapshot is not.
    dst_mem
        .faults()
        .fail_writer_after(&keys::facts_key(A), 0, Fault::DiskFull);
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert_eq!(report.failed(), 1, "{report:?}");
    assert!(manifests(&dst_mem).is_empty());
    dst_mem.faults().clear();
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    let s = &report.snapshots[0];
    assert_eq!(s.status, CopyStatus::Copied, "{report:?}");
    assert_eq!((s.objects, s.objects_present), (1, 1));
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    let before = dst_mem.keys();
    let mut o = opts(Selection::Missing);
    o.dry_run = true;
    let report = copy(&src, &dst, &o).await.unwrap();
    assert_eq!(report.count(CopyStatus::WouldCopy), 1);
    assert_eq!(
        report.snapshots[0].bytes,
        5 + format!("facts of {A}").len() as u64
    );
    assert_eq!(dst_mem.keys(), before);
}

fn holding(name: &str, snapshots: &[(&str, &str)]) -> Holding {
    let snapshots: Vec<Manifest> = snapshots
        .iter()
        .map(|(id, at)| {
            let mut m = fixture(id, at, vec![artifact("files/acme", at, true)]);
            m.policy = Some("nightly".into());
            m
        })
        .collect();
    Holding {
        repository: name.into(),
        ids: snapshots.iter().map(|m| m.id.clone()).collect(),
        snapshots,
    }
}

#[test]
fn backfill_plans_what_each_repository_lacks_within_retention() {
    let local = holding(
        "local",
        &[
            (A, "2026-11-25T03:00:00Z"),
            (B, "2026-11-26T03:00:00Z"),
            (C, "2026-11-27T03:00:00Z"),
        ],
    );
    let offsite = holding(
        "offsite",
        &[(A, "2026-11-25T03:00:00Z"), (C, "2026-11-27T03:00:00Z")],
    );
    let now = t("2026-11-27T04:00:00Z");
    let steps = backfill::plan(
        &[local.clone(), offsite.clone()],
        &Retention::default(),
        None,
        now,
    );
    assert_eq!(
        steps,
        [backfill::Step {
            from: 0,
            to: 1,
            snapshots: vec![B.into()]
        }]
    );
    // keep_last 1: B would be pruned from the target at once; not copied.
    let keep_last = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    let steps = backfill::plan(&[local, offsite], &keep_last, None, now);
    assert!(steps.is_empty(), "{steps:?}");
}

#[tokio::test]
async fn backfill_fills_in_and_reports_an_unreachable_repository() {
    let trust = signing();
    let (local, local_mem) = repository("local", &trust).await;
    let (offsite, offsite_mem) = repository("offsite", &trust).await;
    snapshot(&local, &local_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    snapshot(&local, &local_mem, B, "2026-11-26T03:00:00Z", b"second").await;
    snapshot(&offsite, &offsite_mem, B, "2026-11-26T03:00:00Z", b"second").await;
    let lost = Repository::with_backend("lost", Arc::new(MemoryBackend::new()));
    let b = backfill::Backfill {
        policy: "nightly".into(),
        repositories: Vec::new(),
        retention: Retention::default(),
        timezone: None,
    };
    let report = backfill::run_on(
        vec![local, offsite, lost],
        &b,
        None,
        t("2026-11-27T04:00:00Z"),
        std::time::Duration::ZERO,
    )
    .await;
    assert!(!report.ok());
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("`lost`"), "{report:?}");
    assert_eq!(report.copies.len(), 1, "{report:?}");
    assert_eq!(
        manifests(&offsite_mem),
        [keys::manifest_key(A), keys::manifest_key(B)]
    );
}

#[tokio::test]
async fn a_forged_manifest_in_the_source_is_never_copied() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    // Someone with write access to the source forges snapshot B: a copy of
    // A's manifest under B's name, without a valid signature for it.
    let body = String::from_utf8(src_mem.object(&keys::manifest_key(A)).unwrap().to_vec())
        .unwrap()
        .replace(A, B);
    src_mem.insert(&keys::manifest_key(B), body.into_bytes());
    src_mem.insert(
        &keys::signature_key(&keys::manifest_key(B)),
        src_mem
            .object(&keys::signature_key(&keys::manifest_key(A)))
            .unwrap(),
    );
    src_mem.insert(
        &keys::artifact_key(B, "files/acme", ArtifactKind::File),
        b"first".to_vec(),
    );
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert_eq!(report.count(CopyStatus::Copied), 1, "{report:?}");
    let forged = report.snapshots.iter().find(|s| s.snapshot == B).unwrap();
    assert_eq!(forged.status, CopyStatus::Failed);
    assert!(
        forged.error.as_deref().unwrap().contains("wrongly signed"),
        "{forged:?}"
    );
    assert_eq!(manifests(&dst_mem), [keys::manifest_key(A)]);
    assert!(!dst_mem.keys().iter().any(|k| k.contains(B)));
    // Asked for by name, it is refused the same way.
    let report = copy(&src, &dst, &opts(Selection::Snapshots(vec![B.into()])))
        .await
        .unwrap();
    assert_eq!(report.failed(), 1, "{report:?}");
}

#[tokio::test]
async fn a_garbage_manifest_in_the_target_is_replaced_and_reported() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    snapshot(&src, &src_mem, B, "2026-11-26T03:00:00Z", b"second").await;
    // `echo '{}' > OFFSITE/snapshots/A.json`, with a stale signature beside
    // B's; readers refuse both.
    let (key_a, key_b) = (keys::manifest_key(A), keys::manifest_key(B));
    dst_mem.insert(&key_a, b"{}\n".to_vec());
    dst_mem.insert(&key_b, b"{}\n".to_vec());
    dst_mem.insert(&keys::signature_key(&key_b), b"garbage".to_vec());
    let (_, damaged) = dst.snapshots().await.unwrap();
    assert_eq!(damaged.len(), 2);

    let mut dry = opts(Selection::Missing);
    dry.dry_run = true;
    let report = copy(&src, &dst, &dry).await.unwrap();
    assert_eq!(report.count(CopyStatus::WouldCopy), 2, "{report:?}");
    assert_eq!(report.replaced(), 2, "{report:?}");
    assert_eq!(dst_mem.object(&key_a).unwrap().as_ref(), b"{}\n");

    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert_eq!(report.count(CopyStatus::Copied), 2, "{report:?}");
    assert_eq!(report.replaced(), 2, "{report:?}");
    assert!(report.snapshots.iter().all(|s| s.replaced.is_some()));
    for key in [&key_a, &key_b] {
        assert_eq!(src_mem.object(key), dst_mem.object(key));
        let sig = keys::signature_key(key);
        assert_eq!(src_mem.object(&sig), dst_mem.object(&sig));
    }
    let (good, damaged) = dst.snapshots().await.unwrap();
    assert_eq!(good.len(), 2);
    assert!(damaged.is_empty(), "{damaged:?}");
    // Present now: nothing left to copy or replace.
    let again = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    assert!(again.snapshots.is_empty(), "{again:?}");
}

#[tokio::test]
async fn an_altered_object_of_the_right_size_in_the_target_is_copied_again() {
    let trust = signing();
    let (src, src_mem) = repository("local", &trust).await;
    let (dst, dst_mem) = repository("offsite", &trust).await;
    snapshot(&src, &src_mem, A, "2026-11-25T03:00:00Z", b"first").await;
    // An interrupted copy left both objects; one was altered since, one
    // truncated: neither is kept.
    let archive = keys::artifact_key(A, "files/acme", ArtifactKind::File);
    dst_mem.insert(&archive, b"firsT".to_vec());
    dst_mem.insert(&keys::facts_key(A), b"facts".to_vec());
    let report = copy(&src, &dst, &opts(Selection::Missing)).await.unwrap();
    let s = &report.snapshots[0];
    assert_eq!(s.status, CopyStatus::Copied, "{report:?}");
    assert_eq!((s.objects, s.objects_present), (2, 0), "{report:?}");
    assert_eq!(dst_mem.object(&archive).unwrap().as_ref(), b"first");
    assert_eq!(
        src_mem.object(&keys::facts_key(A)),
        dst_mem.object(&keys::facts_key(A))
    );
}
