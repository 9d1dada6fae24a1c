//! A writer lock for repositories without a local directory (S3): a lease
//! object with owner and expiry, renewed while held.
//!
//! Every contender writes its own lease object `locks/<host>-<pid>-<rand>.json`
//! and then lists `locks/`. It holds the lock only if no *other* live lease
//! is there; otherwise it deletes its own and waits (or fails, naming the
//! holder). Two writers that race both see each other and both back off, so
//! the protocol needs no conditional writes, only S3's read-after-write
//! consistency. A lease that has not been renewed for [`TTL`] — its writer
//! was killed or lost its network — counts as expired: the next writer
//! removes it and takes over, saying so in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Held, Holder, LockError, RepoLock};
use crate::storage::{Backend, PutMode, StorageError};

/// How long a lease lives without renewal.
pub const TTL: Duration = Duration::from_secs(300);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Where leases live in the repository.
pub const PREFIX: &str = crate::storage::keys::LOCKS;

/// The body of a lease object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it.
    #[serde(flatten)]
    pub holder: Holder,
    /// When it expires unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A held lease; dropping it stops the renewal and removes the object.
#[derive(Debug)]
pub struct Lease {
    key: String,
    backend: Arc<dyn Backend>,
    renew: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Lease {
    /// Whether renewal failed for so long that another writer may have
    /// taken the lease over: the holder must then not commit or delete.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (backend, key) = (self.backend.clone(), self.key.clone());
        crate::storage::spawn_cleanup(async move {
            if let Err(e) = backend.delete(&key).await {
                tracing::warn!(error = %e, "could not remove the lock lease; it expires by itself");
            }
        });
    }
}

/// The live and the expired leases other than `own`.
async fn others(
    backend: &dyn Backend,
    own: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Vec<LeaseBody>, Vec<(String, LeaseBody)>), StorageError> {
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for o in backend.list(PREFIX).await? {
        if Some(o.key.as_str()) == own || !o.key.ends_with(".json") {
            continue;
        }
        let body = match backend.get(&o.key).await {
            Ok(b) => b,
            Err(StorageError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<LeaseBody>(&body) {
            Ok(l) if l.expires_at < now => expired.push((o.key, l)),
            Ok(l) => live.push(l),
            // An unreadable lease is treated as held, never silently taken.
            Err(_) => live.push(LeaseBody {
                holder: Holder {
                    host: "unknown".into(),
                    pid: 0,
                    command: format!("(unreadable lease {})", o.key),
                    since: now,
                },
                expires_at: now,
            }),
        }
    }
    Ok((live, expired))
}

fn body(holder: &Holder) -> Bytes {
    let b = LeaseBody {
        holder: holder.clone(),
        expires_at: Utc::now() + chrono::Duration::from_std(TTL).expect("small"),
    };
    Bytes::from(serde_json::to_vec(&b).expect("lease serialises"))
}

/// Takes the lease lock of the repository on `backend`, waiting up to `wait`.
pub async fn acquire(
    backend: Arc<dyn Backend>,
    command: &str,
    wait: Duration,
) -> Result<RepoLock, LockError> {
    let me = Holder::me(command);
    let key = format!(
        "{PREFIX}{}-{}-{:08x}.json",
        crate::storage::keys::path_component(&me.host),
        me.pid,
        rand::random::<u32>()
    );
    let deadline = Instant::now() + wait;
    loop {
        let (live, _) = others(&*backend, None, Utc::now()).await?;
        let contended = if live.is_empty() {
            backend.put(&key, body(&me), PutMode::Overwrite).await?;
            let (live, expired) = match others(&*backend, Some(&key), Utc::now()).await {
                Ok(x) => x,
                Err(e) => {
                    // Ours is written: leave none behind to block every writer.
                    let _ = backend.delete(&key).await;
                    return Err(e.into());
                }
            };
            if live.is_empty() {
                for (k, l) in expired {
                    tracing::warn!(
                        holder = %l.holder,
                        expired_at = %l.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "took over an expired lock (its holder stopped renewing it)"
                    );
                    let _ = backend.delete(&k).await;
                }
                let lost = Arc::new(AtomicBool::new(false));
                let renew = tokio::spawn(renew(
                    backend.clone(),
                    key.clone(),
                    me.clone(),
                    lost.clone(),
                ));
                return Ok(RepoLock {
                    _held: Held::Lease(Lease {
                        key,
                        backend,
                        renew,
                        lost,
                    }),
                });
            }
            backend.delete(&key).await?;
            live
        } else {
            live
        };
        if Instant::now() >= deadline {
            let holders = contended
                .iter()
                .map(|l| {
                    format!(
                        "{} (lease expires {})",
                        l.holder,
                        l.expires_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(LockError::Held {
                location: backend.describe(),
                holders,
            });
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
        tokio::time::sleep(Duration::from_millis(500) + jitter).await;
    }
}

async fn renew(backend: Arc<dyn Backend>, key: String, me: Holder, lost: Arc<AtomicBool>) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match backend.put(&key, body(&me), PutMode::Overwrite).await {
            Ok(()) => renewed = tokio::time::Instant::now(),
            Err(e) => {
                // One more missed renewal and the lease may have expired
                // by the others' clocks: stop trusting it now.
                if renewed.elapsed() + RENEW_EVERY >= TTL && !lost.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %e, "lost the repository lock: it could not be renewed and may be taken over; nothing more is committed or deleted");
                } else {
                    tracing::warn!(error = %e, "could not renew the repository lock; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalBackend;

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_cannot_be_renewed_is_marked_lost_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&root));
        let held = acquire(backend.clone(), "backup", Duration::ZERO)
            .await
            .unwrap();
        assert!(!held.is_lost());
        // The store goes away: every renewal fails from now on.
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        tokio::time::sleep(RENEW_EVERY * 2 + Duration::from_secs(1)).await;
        assert!(!held.is_lost(), "lost too early");
        tokio::time::sleep(TTL).await;
        assert!(held.is_lost());
    }

    #[tokio::test]
    async fn a_live_lease_is_respected_and_an_expired_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let held = acquire(backend.clone(), "backup", Duration::ZERO)
            .await
            .unwrap();
        let e = acquire(backend.clone(), "prune", Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kompose-dr backup`"), "{e}");
        drop(held);
        crate::storage::finish_cleanups(Duration::from_secs(5)).await;

        // A lease of a killed writer, expired a minute ago.
        let stale = LeaseBody {
            holder: Holder {
                host: "gone".into(),
                pid: 4242,
                command: "backup".into(),
                since: Utc::now() - chrono::Duration::hours(1),
            },
            expires_at: Utc::now() - chrono::Duration::minutes(1),
        };
        backend
            .put(
                "locks/gone-4242-00000000.json",
                Bytes::from(serde_json::to_vec(&stale).unwrap()),
                PutMode::CreateNew,
            )
            .await
            .unwrap();
        let held = acquire(backend.clone(), "prune", Duration::ZERO)
            .await
            .unwrap();
        let left = backend.list(PREFIX).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        drop(held);
    }

    use crate::storage::memory::{Failure, MemoryBackend, Op};

    /// A lease of another writer, expiring `in_minutes` from now (negative:
    /// already expired).
    fn foreign(backend: &MemoryBackend, host: &str, pid: u32, in_minutes: i64) -> String {
        let key = format!("{PREFIX}{host}-{pid}-00000000.json");
        let body = LeaseBody {
            holder: Holder {
                host: host.into(),
                pid,
                command: "backup".into(),
                since: Utc::now() - chrono::Duration::hours(1),
            },
            expires_at: Utc::now() + chrono::Duration::minutes(in_minutes),
        };
        backend.insert(&key, serde_json::to_vec(&body).unwrap());
        key
    }

    fn lease_keys(backend: &MemoryBackend) -> Vec<String> {
        backend
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(PREFIX))
            .collect()
    }

    #[tokio::test]
    async fn on_memory_a_lease_is_written_with_its_holder_and_removed_on_release() {
        let mem = MemoryBackend::new();
        let held = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap();
        let keys = lease_keys(&mem);
        assert_eq!(keys.len(), 1, "{keys:?}");
        let body: LeaseBody = serde_json::from_slice(&mem.object(&keys[0]).unwrap()).unwrap();
        assert_eq!(body.holder.command, "backup");
        assert_eq!(body.holder.pid, std::process::id());
        assert!(body.expires_at > Utc::now() + chrono::Duration::minutes(4));
        drop(held);
        crate::storage::finish_cleanups(Duration::from_secs(5)).await;
        assert!(lease_keys(&mem).is_empty());
    }

    #[tokio::test]
    async fn a_foreign_live_lease_refuses_naming_its_holder_and_leaves_no_lease_of_ours() {
        let mem = MemoryBackend::new();
        let theirs = foreign(&mem, "db1", 77, 3);
        let e = acquire(Arc::new(mem.clone()), "prune", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pid 77 on db1") && e.contains("--lock-wait"),
            "{e}"
        );
        assert_eq!(lease_keys(&mem), vec![theirs]);
    }

    #[tokio::test]
    async fn an_unreadable_lease_counts_as_held() {
        let mem = MemoryBackend::new();
        mem.insert("locks/odd.json", "{ not a lease");
        let e = acquire(Arc::new(mem.clone()), "prune", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreadable lease locks/odd.json"), "{e}");
        assert_eq!(lease_keys(&mem), vec!["locks/odd.json"]);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_removed() {
        let mem = MemoryBackend::new();
        let stale = foreign(&mem, "gone", 4242, -1);
        let held = acquire(Arc::new(mem.clone()), "prune", Duration::ZERO)
            .await
            .unwrap();
        let keys = lease_keys(&mem);
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_ne!(keys[0], stale);
        drop(held);
    }

    #[tokio::test]
    async fn a_failed_listing_fails_acquisition_with_the_store_error() {
        let mem = MemoryBackend::new();
        mem.faults().fail_next(Op::List, 1, Failure::Unavailable);
        let e = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot take the lock:") && e.contains("no answer from the store"),
            "{e}"
        );
        assert!(lease_keys(&mem).is_empty());
    }

    #[tokio::test]
    async fn a_failed_lease_write_fails_acquisition() {
        let mem = MemoryBackend::new();
        mem.faults().fail_next(Op::Put, 1, Failure::DiskFull);
        let e = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk is full"), "{e}");
        assert!(lease_keys(&mem).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_gets_the_lock_once_the_holder_releases_it() {
        let mem = MemoryBackend::new();
        let backend: Arc<dyn Backend> = Arc::new(mem.clone());
        let first = acquire(backend.clone(), "backup", Duration::ZERO)
            .await
            .unwrap();
        let waiter = tokio::spawn(acquire(backend.clone(), "prune", Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(lease_keys(&mem).len(), 1);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_on_memory_mark_the_lease_lost_only_near_expiry() {
        let mem = MemoryBackend::new();
        let held = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap();
        mem.faults()
            .fail_prefix(Op::Put, PREFIX, Failure::Unavailable);
        // Three missed renewals (minutes 1, 2, 3): not lost yet.
        tokio::time::sleep(RENEW_EVERY * 3 + Duration::from_secs(1)).await;
        assert!(!held.is_lost(), "lost too early");
        // The fourth leaves less than one renewal period: lost.
        tokio::time::sleep(RENEW_EVERY).await;
        assert!(held.is_lost());
        let failed_puts = mem
            .calls()
            .iter()
            .filter(|c| c.op == Op::Put && !c.ok)
            .count();
        assert_eq!(failed_puts, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn one_failed_renewal_is_retried_and_the_lease_stays_held() {
        let mem = MemoryBackend::new();
        let held = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap();
        let key = lease_keys(&mem).remove(0);
        mem.faults().fail_next(Op::Put, 1, Failure::Unavailable);
        tokio::time::sleep(RENEW_EVERY * 2 + Duration::from_secs(1)).await;
        assert!(!held.is_lost());
        // Written on acquisition, refused at minute 1, renewed at minute 2.
        let puts: Vec<bool> = mem
            .calls()
            .iter()
            .filter(|c| c.op == Op::Put && c.key == key)
            .map(|c| c.ok)
            .collect();
        assert_eq!(puts, vec![true, false, true]);
    }

    /// A listing that fails after our lease is written must not leave that
    /// lease behind: it would block every writer until it expires (5 minutes).
    #[tokio::test]
    async fn a_listing_failure_after_writing_our_lease_removes_it() {
        let mem = MemoryBackend::new();
        mem.faults()
            .fail_after(Op::List, PREFIX, 1, 1, Failure::Unavailable);
        acquire(Arc::new(mem.clone()), "backup", Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(lease_keys(&mem).is_empty(), "{:?}", lease_keys(&mem));
    }
}
