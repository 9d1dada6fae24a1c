//! Backup runs on repositories in memory: what is committed where when a
//! repository fails, and that the manifest is written last.

use std::sync::Arc;

use super::*;
use crate::storage::memory::{Failure as Fault, MemoryBackend, Op};

/// A configuration with one file source and a key; its `[[repository]]` is
/// never used, since the tests pass their own repositories.
struct Setup {
    _dir: tempfile::TempDir,
    config: Config,
    recipient: age::x25519::Recipient,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.json");
    std::fs::write(&file, br#"{"resolver":{}}"#).unwrap();
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public();
    let text = format!(
        r#"
[[repository]]
name = "unused"
url = "{repo}"

[encryption]
recipients = ["{recipient}"]

[[files]]
name = "acme"
path = "{file}"
"#,
        repo = dir.path().join("repo").display(),
        file = file.display(),
    );
    let path = dir.path().join("kompose-dr.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    Setup {
        _dir: dir,
        config,
        recipient,
    }
}

async fn repository(name: &str, s: &Setup) -> (Repository, MemoryBackend) {
    let mem = MemoryBackend::new();
    let repo = Repository::with_backend(name, Arc::new(mem.clone()));
    repo.init(
        std::slice::from_ref(&s.recipient),
        &crate::repository::stack::new_id(),
    )
    .await
    .unwrap();
    (repo, mem)
}

fn manifests(mem: &MemoryBackend) -> Vec<String> {
    mem.keys()
        .into_iter()
        .filter(|k| k.starts_with(crate::storage::keys::SNAPSHOTS) && k.ends_with(".json"))
        .collect()
}

fn data(mem: &MemoryBackend) -> Vec<String> {
    mem.keys()
        .into_iter()
        .filter(|k| k.starts_with(crate::storage::keys::DATA))
        .collect()
}

#[tokio::test]
async fn the_manifest_is_written_after_every_archive_is_finished() {
    let s = setup();
    let (repo, mem) = repository("a", &s).await;
    let report = run_on(&s.config, &BackupOptions::default(), vec![repo])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{report:?}");
    let calls = mem.calls();
    let manifest_at = calls
        .iter()
        .position(|c| c.op == Op::Put && c.key.starts_with("snapshots/"))
        .expect("a manifest was written");
    let last_finish = calls
        .iter()
        .rposition(|c| c.op == Op::Finish)
        .expect("archives were finished");
    assert!(last_finish < manifest_at, "{calls:?}");
    assert_eq!(manifests(&mem).len(), 1);
    // The archive, the configuration and the facts sidecar.
    assert_eq!(data(&mem).len(), 3, "{:?}", data(&mem));
}

/// The configuration goes with every run that has something to commit;
/// alone it is no snapshot: when every data source fails it is not even
/// written.
#[tokio::test]
async fn the_configuration_alone_is_not_committed() {
    let s = setup();
    let (repo, mem) = repository("a", &s).await;
    std::fs::remove_file(&s.config.files[0].path).unwrap();
    let report = run_on(&s.config, &BackupOptions::default(), vec![repo])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert!(
        report.artifacts.iter().all(|a| a.source != "config"),
        "{report:?}"
    );
    assert!(manifests(&mem).is_empty(), "{:?}", mem.keys());
    assert!(data(&mem).is_empty(), "{:?}", mem.keys());
}

#[tokio::test]
async fn a_repository_that_cannot_store_gets_no_manifest_and_the_other_does() {
    let s = setup();
    let (good, good_mem) = repository("good", &s).await;
    let (full, full_mem) = repository("full", &s).await;
    full_mem
        .faults()
        .fail_writer_after("data/", 0, Fault::DiskFull);
    let report = run_on(&s.config, &BackupOptions::default(), vec![good, full])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Partial, "{report:?}");
    assert_eq!(report.outcome(), Outcome::Partial);
    assert_eq!(manifests(&good_mem).len(), 1);
    assert!(manifests(&full_mem).is_empty(), "{:?}", full_mem.keys());
    assert!(data(&full_mem).is_empty(), "{:?}", full_mem.keys());
    let full = report
        .repositories
        .iter()
        .find(|r| r.name == "full")
        .unwrap();
    assert!(!full.committed);
    assert!(
        full.errors.iter().any(|e| e.contains("disk is full")),
        "{full:?}"
    );
    assert_eq!(report.artifacts[0].repositories, vec!["good".to_owned()]);
}

#[tokio::test]
async fn when_every_repository_fails_nothing_is_committed_anywhere() {
    let s = setup();
    let (a, a_mem) = repository("a", &s).await;
    let (b, b_mem) = repository("b", &s).await;
    for m in [&a_mem, &b_mem] {
        m.faults()
            .fail_prefix(Op::Create, "data/", Fault::Unavailable);
    }
    let report = run_on(&s.config, &BackupOptions::default(), vec![a, b])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.outcome(), Outcome::Failed);
    for m in [&a_mem, &b_mem] {
        assert!(manifests(m).is_empty());
        assert!(m.pending_writes().is_empty());
    }
}

#[tokio::test]
async fn a_failed_manifest_write_leaves_the_run_failed_and_reports_the_commit() {
    let s = setup();
    let (repo, mem) = repository("a", &s).await;
    mem.faults()
        .fail_prefix(Op::Put, "snapshots/", Fault::PermissionDenied);
    let report = run_on(&s.config, &BackupOptions::default(), vec![repo])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert!(manifests(&mem).is_empty());
    assert!(
        report.repositories[0]
            .errors
            .iter()
            .any(|e| e.starts_with("commit:")),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_uninitialised_repository_is_skipped_and_the_other_gets_the_backup() {
    let s = setup();
    let (good, good_mem) = repository("good", &s).await;
    let bare = Repository::with_backend("bare", Arc::new(MemoryBackend::new()));
    let report = run_on(&s.config, &BackupOptions::default(), vec![bare, good])
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Partial, "{report:?}");
    assert_eq!(manifests(&good_mem).len(), 1);
    let bare = report
        .repositories
        .iter()
        .find(|r| r.name == "bare")
        .unwrap();
    assert!(
        bare.errors.iter().any(|e| e.contains("not initialised")),
        "{bare:?}"
    );
}

#[tokio::test]
async fn no_repository_that_answers_is_a_failure_of_the_right_class() {
    let s = setup();
    let bare = Repository::with_backend("bare", Arc::new(MemoryBackend::new()));
    let f = run_on(&s.config, &BackupOptions::default(), vec![bare])
        .await
        .unwrap_err();
    // Not initialised: run `init` (exit 2).
    assert_eq!(f.class, Class::Usage, "{}", f.message);
}

/// The lease of the only repository is lost while a source is still being
/// written (its renewals fail, its upload hangs): the run stops there,
/// commits nothing and says why, instead of waiting for the upload.
#[tokio::test]
async fn a_run_whose_every_lease_is_lost_stops_and_commits_nothing() {
    let s = setup();
    let (repo, mem) = repository("a", &s).await;
    let repo = repo.with_lease_ttl(std::time::Duration::from_secs(2));
    // The lease is written once, then never again.
    mem.faults().fail_after(
        Op::Put,
        crate::storage::keys::LOCKS,
        1,
        usize::MAX,
        Fault::Unavailable,
    );
    mem.faults()
        .hang_prefix(Op::Create, crate::storage::keys::DATA);
    let start = std::time::Instant::now();
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run_on(&s.config, &BackupOptions::default(), vec![repo]),
    )
    .await
    .expect("the run stops once the lease is lost")
    .unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert!(e.message.contains("lost the repository lock of a"), "{e:?}");
    assert!(e.message.contains("nothing was committed"), "{e:?}");
    assert!(manifests(&mem).is_empty());
}
