//! A writer lock for repositories without a local directory (S3): a lease
//! object with owner and time to live, renewed while held.
//!
//! Every contender writes its own lease object `locks/<host>-<pid>-<rand>.json`
//! and then lists `locks/`. It holds the lock only if no *other* live lease
//! is there; otherwise it deletes its own and waits (or fails, naming the
//! holder). Two writers that race both see each other and both back off, so
//! the protocol needs no conditional writes, only S3's read-after-write
//! consistency.
//!
//! # Whose clock
//!
//! No host's wall clock decides anything: a writer whose clock is skewed,
//! or whose VM was paused, must not make two holders.
//!
//! - **Someone else's lease** is judged by the *store's* clock: it has
//!   expired when the store's `LastModified` of our own lease, written just
//!   now, is more than its time to live past the `LastModified` of theirs.
//!   Its time to live is `ttl_seconds` in its body ([`TTL`] for leases
//!   without one), but never more than the configured one (`lease_ttl`):
//!   whoever can write to the store writes the body, so a lease that asks
//!   for a year, or whose body cannot be read at all, counts for the
//!   configured time to live after its `LastModified` and is stale after
//!   that; the lock error and doctor name it and say when it goes stale.
//!   (Every writer of a repository should therefore use the same
//!   `lease_ttl`.) The `expires_at` in a body is for people reading it,
//!   never trusted. Its writer was killed or lost its network: the next
//!   writer removes it and takes over, saying so in the log.
//! - **Our own lease** is lost at a **monotonic deadline**: 90% of the time
//!   to live after the *start* of the last renewal that succeeded
//!   ([`tokio::time::Instant`], which no clock change moves). Every renewal
//!   attempt is cut off at that deadline, so a hung request cannot outlive
//!   the lease; once lost, the lease stays lost — a renewal that would have
//!   succeeded later resurrects nothing, and the holder must not commit or
//!   delete (see [`super::RepoLock::is_lost`], [`super::RepoLock::lost`]).
//! - Each renewal also lists our lease back and compares its new
//!   `LastModified` with the previous one: a gap longer than the time to
//!   live (this host was paused, or its requests hung, longer than the
//!   store waits) means another writer may have taken over meanwhile,
//!   whatever this host's clocks say — lost. So is a lease that another
//!   writer removed as expired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Held, Holder, LockError, RepoLock};
use crate::storage::{Backend, ObjectMeta, PutMode, StorageError};

/// How long a lease lives without renewal, unless the repository says
/// otherwise (`lease_ttl`); also the life of a lease whose body names none
/// (written by an older kompose-dr).
pub const TTL: Duration = crate::model::config::repository::DEFAULT_LEASE_TTL;
/// Where leases live in the repository.
pub const PREFIX: &str = crate::storage::keys::LOCKS;

/// The body of a lease object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it.
    #[serde(flatten)]
    pub holder: Holder,
    /// When it expires unless renewed, by its writer's clock: for people
    /// reading the object. Expiry is judged by the store's clock instead.
    pub expires_at: DateTime<Utc>,
    /// How long it lives after its last write (`LastModified`), in
    /// seconds; [`TTL`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

impl LeaseBody {
    /// How long the lease lives after its last write.
    pub fn ttl(&self) -> Duration {
        self.ttl_seconds.map_or(TTL, Duration::from_secs)
    }
}

/// How often a lease of this time to live is renewed.
fn renew_every(ttl: Duration) -> Duration {
    ttl / 5
}

/// How soon a failed renewal is tried again.
fn retry_every(ttl: Duration) -> Duration {
    ttl / 20
}

/// How long after the start of a renewal that succeeded the lease counts
/// as held: a tenth of the time to live is left for the store to have
/// stamped the renewal later than it was sent, and for clock rates.
fn held_for(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

/// A held lease; dropping it stops the renewal and removes the object.
#[derive(Debug)]
pub struct Lease {
    key: String,
    backend: Arc<dyn Backend>,
    state: Arc<State>,
    renew: tokio::task::JoinHandle<()>,
}

/// What the holder and its renewal task share.
#[derive(Debug)]
struct State {
    key: String,
    me: Holder,
    ttl: Duration,
    /// The deadline and the last `LastModified` seen.
    clock: std::sync::Mutex<Clock>,
    /// Set, once and for good, when the lease is lost.
    lost: tokio::sync::watch::Sender<bool>,
    /// One renewal at a time (the task's, or [`Lease::confirm`]'s).
    renewing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Lost from this instant on, unless renewed before.
    deadline: Instant,
    /// The store's `LastModified` of our lease at its last write.
    modified: Option<DateTime<Utc>>,
}

impl State {
    fn deadline(&self) -> Instant {
        self.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deadline
    }

    /// Marks the lease lost (once: the first reason is logged).
    fn lose(&self, why: &str) {
        if self.lost.send_if_modified(|l| !std::mem::replace(l, true)) {
            tracing::error!(
                lease = %self.key,
                reason = why,
                "lost the repository lock: another writer may take it over; nothing more is committed or deleted"
            );
        }
    }

    fn is_lost(&self) -> bool {
        if *self.lost.borrow() {
            return true;
        }
        if Instant::now() >= self.deadline() {
            self.lose("it was not renewed before its deadline");
            return true;
        }
        false
    }

    /// One renewal: write the lease, list it back, check the store's clock.
    /// Never runs past the deadline.
    async fn renew(&self, backend: &dyn Backend) -> Result<(), String> {
        let _one = self.renewing.lock().await;
        if self.is_lost() {
            return Err("the lease is lost".into());
        }
        let Clock { deadline, modified } = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let attempt = async {
            backend
                .put(&self.key, body(&self.me, self.ttl), PutMode::Overwrite)
                .await?;
            let listed = backend.list(PREFIX).await?;
            Ok::<_, StorageError>(listed.into_iter().find(|o| o.key == self.key))
        };
        let own = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => {
                self.lose("a renewal did not finish before the lease's deadline");
                return Err("the renewal did not finish in time".into());
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(own)) => own,
        };
        let Some(own) = own else {
            self.lose("our lease object is gone: another writer removed it as expired");
            return Err("the lease object is gone".into());
        };
        if let (Some(before), Some(now)) = (modified, own.modified)
            && (now - before).to_std().unwrap_or_default() > self.ttl
        {
            self.lose(
                "the store saw no renewal for longer than the lease lives (this host paused, or its requests hung)",
            );
            return Err("renewed too late".into());
        }
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.deadline = start + held_for(self.ttl);
        clock.modified = own.modified.or(modified);
        Ok(())
    }
}

impl Lease {
    /// Whether the lease is lost: its deadline passed without a renewal,
    /// or the store showed it lapsed. The holder must then not commit or
    /// delete; a lost lease is never held again.
    pub fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Renews the lease now, and says whether it is still held: for the
    /// moment before a commit, so that a host that was paused since its
    /// last renewal finds out from the store before it writes.
    ///
    /// If this renewal fails but the lease is not lost yet, it is still
    /// held as long as a tenth of its time to live is left before the
    /// deadline (time for the commit itself); with less, it is not.
    pub async fn confirm(&self) -> bool {
        if let Err(e) = self.state.renew(&*self.backend).await {
            if self.is_lost() {
                return false;
            }
            let left = self
                .state
                .deadline()
                .saturating_duration_since(Instant::now());
            tracing::warn!(error = %e, left_seconds = left.as_secs(), "could not renew the repository lock before committing");
            return left >= self.state.ttl / 10;
        }
        !self.is_lost()
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

/// A lease found in the listing, with its body.
struct Found {
    key: String,
    /// Its body; `None` when it cannot be read as a lease (planted, or
    /// damaged).
    body: Option<LeaseBody>,
    /// When the store last saw it written.
    modified: Option<DateTime<Utc>>,
    /// How long it lives after `modified`: its own time to live, but never
    /// more than the configured one (whoever writes a lease chooses its
    /// body, so one planted object must not stop every writer for longer).
    ttl: Duration,
    /// The time to live its body asks for, when above the configured one.
    asked: Option<Duration>,
}

impl Found {
    /// `body` of the lease at `key`, judged with the configured `ttl`.
    fn new(
        key: &str,
        body: Option<LeaseBody>,
        modified: Option<DateTime<Utc>>,
        ttl: Duration,
    ) -> Found {
        let own = body.as_ref().map(LeaseBody::ttl);
        Found {
            key: key.to_owned(),
            body,
            modified,
            ttl: own.map_or(ttl, |own| own.min(ttl)),
            asked: own.filter(|own| *own > ttl),
        }
    }

    /// Whether it has expired at `store_now` (the store's clock): more
    /// than its time to live after the store last saw it written. Without
    /// the store's times (a backend that keeps none), a readable body's
    /// own expiry is taken, by this host's clock, and an unreadable lease
    /// is held.
    fn expired(&self, store_now: Option<DateTime<Utc>>) -> bool {
        if self.holder_is_gone() {
            return true;
        }
        match (store_now, self.modified, &self.body) {
            (Some(now), Some(then), _) => (now - then).to_std().unwrap_or_default() > self.ttl,
            (_, _, Some(body)) => body.expires_at < Utc::now(),
            (_, _, None) => false,
        }
    }

    /// Whether its holder was a process on this host that no longer exists
    /// (killed with `kill -9`, the machine rebooted): its lease is stale at
    /// once, as restic treats such locks, rather than blocking every writer
    /// until it expires. A pid now used by another process keeps it live.
    fn holder_is_gone(&self) -> bool {
        let Some(h) = self.body.as_ref().map(|b| &b.holder) else {
            return false;
        };
        h.host == crate::model::host::name()
            && h.pid != std::process::id()
            && i32::try_from(h.pid).is_ok_and(crate::process::is_gone)
    }

    /// Who holds it, for logs.
    fn who(&self) -> String {
        match &self.body {
            Some(b) => b.holder.to_string(),
            None => format!("an unreadable lease {}", self.key),
        }
    }

    /// Who holds it, which object it is and when it goes stale, for
    /// messages.
    fn describe(&self) -> String {
        let secs = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let who = match &self.body {
            Some(b) => format!("{} (lease {}", b.holder, self.key),
            None => format!("an unreadable lease {} (", self.key),
        };
        let note = match (self.asked, &self.body) {
            (Some(a), _) => format!(
                "; its body asks for {}s, more than the configured lease_ttl, so it counts for {}s",
                a.as_secs(),
                self.ttl.as_secs()
            ),
            (None, None) => {
                "; it is not a lease kompose-dr wrote: remove it if no writer is running".to_owned()
            }
            (None, Some(_)) => String::new(),
        };
        let sep = if self.body.is_some() { ", " } else { "" };
        match (self.modified, &self.body) {
            (Some(m), _) => format!(
                "{who}{sep}written {}, stale at {} by the store's clock{note})",
                secs(m),
                // A hostile store may report any time: never overflow.
                chrono::Duration::from_std(self.ttl)
                    .ok()
                    .and_then(|ttl| m.checked_add_signed(ttl))
                    .map_or_else(|| "never".to_owned(), secs)
            ),
            (None, Some(b)) => format!("{who}{sep}expires {}{note})", secs(b.expires_at)),
            (None, None) => format!("{who}the store keeps no times, so it never goes stale{note})"),
        }
    }
}

/// Every lease in `listed` other than `own`, with its body, judged with
/// the configured `ttl`.
async fn others(
    backend: &dyn Backend,
    listed: &[ObjectMeta],
    own: &str,
    ttl: Duration,
) -> Result<Vec<Found>, StorageError> {
    let mut out = Vec::new();
    for o in listed {
        if o.key == own || !o.key.ends_with(".json") {
            continue;
        }
        let raw = match backend.get(&o.key).await {
            Ok(b) => b,
            Err(StorageError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let body = serde_json::from_slice::<LeaseBody>(&raw).ok();
        out.push(Found::new(&o.key, body, o.modified, ttl));
    }
    Ok(out)
}

/// A lease another writer (or whoever can write to the store) left in the
/// repository, as [`survey`] judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its key (`locks/…json`).
    pub key: String,
    /// Who holds it, and when it goes stale by the store's clock.
    pub description: String,
    /// Whether it has expired: the next writer removes it.
    pub stale: bool,
    /// Whether kompose-dr did not write it as it is: unreadable, or asking
    /// for more than the configured time to live.
    pub suspect: bool,
}

/// Every lease in the repository on `backend`, judged with the configured
/// `ttl` at `store_now` (a time the store stamped just now), for doctor.
pub async fn survey(
    backend: &dyn Backend,
    ttl: Duration,
    store_now: Option<DateTime<Utc>>,
) -> Result<Vec<Seen>, StorageError> {
    let listed = backend.list(PREFIX).await?;
    let found = others(backend, &listed, "", ttl).await?;
    Ok(found
        .into_iter()
        .map(|f| Seen {
            stale: f.expired(store_now),
            suspect: f.body.is_none() || f.asked.is_some(),
            description: f.describe(),
            key: f.key,
        })
        .collect())
}

fn body(holder: &Holder, ttl: Duration) -> Bytes {
    let b = LeaseBody {
        holder: holder.clone(),
        expires_at: chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        ttl_seconds: Some(ttl.as_secs().max(1)),
    };
    Bytes::from(serde_json::to_vec(&b).expect("lease serialises"))
}

/// Takes the lease lock of the repository on `backend`, waiting up to
/// `wait`; the lease lives `ttl` without renewal (whole seconds, at least
/// one).
pub async fn acquire(
    backend: Arc<dyn Backend>,
    command: &str,
    wait: Duration,
    ttl: Duration,
) -> Result<RepoLock, LockError> {
    let ttl = Duration::from_secs(ttl.as_secs().max(1));
    let me = Holder::me(command);
    let key = format!(
        "{PREFIX}{}-{}-{:08x}.json",
        crate::storage::keys::path_component(&me.host),
        me.pid,
        rand::random::<u32>()
    );
    let give_up = Instant::now() + wait;
    loop {
        let start = Instant::now();
        backend
            .put(&key, body(&me, ttl), PutMode::Overwrite)
            .await?;
        let judged = async {
            let listed = backend.list(PREFIX).await?;
            let own = listed.iter().find(|o| o.key == key).cloned();
            let found = others(&*backend, &listed, &key, ttl).await?;
            Ok::<_, StorageError>((own, found))
        }
        .await;
        let (own, found) = match judged {
            Ok(x) => x,
            Err(e) => {
                // Ours is written: leave none behind to block every writer.
                let _ = backend.delete(&key).await;
                return Err(e.into());
            }
        };
        // The store's clock now: the time it stamped on our lease.
        let store_now = own.as_ref().and_then(|o| o.modified);
        let (expired, live): (Vec<Found>, Vec<Found>) =
            found.into_iter().partition(|f| f.expired(store_now));
        if live.is_empty() && own.is_some() {
            for f in expired {
                tracing::warn!(
                    holder = %f.who(),
                    lease = %f.key,
                    "took over an expired lock (its holder stopped renewing it)"
                );
                let _ = backend.delete(&f.key).await;
            }
            return Ok(hold(backend, key, me, ttl, start, store_now));
        }
        backend.delete(&key).await?;
        if Instant::now() >= give_up {
            let holders = if live.is_empty() {
                "nobody the store lists (it did not list our own lease back: is it consistent?)"
                    .to_owned()
            } else {
                live.iter()
                    .map(Found::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(LockError::Held {
                location: backend.describe(),
                holders,
            });
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
        tokio::time::sleep(Duration::from_millis(500) + jitter).await;
    }
}

/// The lock, held from now: our lease `key`, written at `start` by this
/// host's monotonic clock and at `store_now` by the store's, renewed from
/// now on.
fn hold(
    backend: Arc<dyn Backend>,
    key: String,
    me: Holder,
    ttl: Duration,
    start: Instant,
    store_now: Option<DateTime<Utc>>,
) -> RepoLock {
    let (lost, _) = tokio::sync::watch::channel(false);
    let state = Arc::new(State {
        key: key.clone(),
        me,
        ttl,
        clock: std::sync::Mutex::new(Clock {
            deadline: start + held_for(ttl),
            modified: store_now,
        }),
        lost,
        renewing: tokio::sync::Mutex::new(()),
    });
    let renew = tokio::spawn(renew(backend.clone(), state.clone()));
    RepoLock {
        _held: Held::Lease(Lease {
            key,
            backend,
            state,
            renew,
        }),
    }
}

/// Renews the lease every fifth of its time to live, sooner again after a
/// failure, until it is dropped or lost.
async fn renew(backend: Arc<dyn Backend>, state: Arc<State>) {
    let mut next = renew_every(state.ttl);
    loop {
        // Wake at the deadline at the latest, so that a lease whose
        // renewals keep failing is marked lost on time.
        let at = (Instant::now() + next).min(state.deadline());
        tokio::time::sleep_until(at).await;
        match state.renew(&*backend).await {
            Ok(()) => next = renew_every(state.ttl),
            Err(_) if state.is_lost() => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the repository lock; retrying");
                next = retry_every(state.ttl);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalBackend;
    use crate::storage::memory::{Failure, MemoryBackend, Op};

    const EVERY: Duration = Duration::from_secs(60);

    async fn take(backend: Arc<dyn Backend>, command: &str) -> Result<RepoLock, LockError> {
        acquire(backend, command, Duration::ZERO, TTL).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_cannot_be_renewed_is_marked_lost_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(&root));
        let held = take(backend.clone(), "backup").await.unwrap();
        assert!(!held.is_lost());
        // The store goes away: every renewal fails from now on.
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        tokio::time::sleep(EVERY * 2 + Duration::from_secs(1)).await;
        assert!(!held.is_lost(), "lost too early");
        tokio::time::sleep(TTL).await;
        assert!(held.is_lost());
    }

    #[tokio::test]
    async fn a_live_lease_is_respected_and_an_expired_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let held = take(backend.clone(), "backup").await.unwrap();
        let e = acquire(backend.clone(), "prune", Duration::from_millis(200), TTL)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kompose-dr backup`"), "{e}");
        drop(held);
        crate::storage::finish_cleanups(Duration::from_secs(5)).await;

        // A lease of a killed writer, last written an hour ago (its mtime
        // is the store's clock here).
        let stale = LeaseBody {
            holder: Holder {
                host: "gone".into(),
                pid: 4242,
                command: "backup".into(),
                since: Utc::now() - chrono::Duration::hours(1),
            },
            expires_at: Utc::now() + chrono::Duration::days(365),
            ttl_seconds: None,
        };
        let path = dir.path().join("locks/gone-4242-00000000.json");
        backend
            .put(
                "locks/gone-4242-00000000.json",
                Bytes::from(serde_json::to_vec(&stale).unwrap()),
                PutMode::CreateNew,
            )
            .await
            .unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let held = take(backend.clone(), "prune").await.unwrap();
        let left = backend.list(PREFIX).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        drop(held);
    }

    /// A lease of another writer, last written `minutes_ago` by the store's
    /// clock, whose body says it expires `body_expires_in` minutes from
    /// this host's now (a skewed writer's clock says anything).
    fn foreign(
        backend: &MemoryBackend,
        host: &str,
        pid: u32,
        minutes_ago: i64,
        body_expires_in: i64,
    ) -> String {
        let key = format!("{PREFIX}{host}-{pid}-00000000.json");
        let body = LeaseBody {
            holder: Holder {
                host: host.into(),
                pid,
                command: "backup".into(),
                since: Utc::now() - chrono::Duration::hours(1),
            },
            expires_at: Utc::now() + chrono::Duration::minutes(body_expires_in),
            ttl_seconds: Some(TTL.as_secs()),
        };
        backend.insert_modified(
            &key,
            serde_json::to_vec(&body).unwrap(),
            backend.now() - chrono::Duration::minutes(minutes_ago),
        );
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
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        let keys = lease_keys(&mem);
        assert_eq!(keys.len(), 1, "{keys:?}");
        let body: LeaseBody = serde_json::from_slice(&mem.object(&keys[0]).unwrap()).unwrap();
        assert_eq!(body.holder.command, "backup");
        assert_eq!(body.holder.pid, std::process::id());
        assert_eq!(body.ttl_seconds, Some(300));
        assert!(body.expires_at > Utc::now() + chrono::Duration::minutes(4));
        drop(held);
        crate::storage::finish_cleanups(Duration::from_secs(5)).await;
        assert!(lease_keys(&mem).is_empty());
    }

    #[tokio::test]
    async fn a_foreign_live_lease_refuses_naming_its_holder_and_leaves_no_lease_of_ours() {
        let mem = MemoryBackend::new();
        let theirs = foreign(&mem, "db1", 77, 2, 3);
        let e = take(Arc::new(mem.clone()), "prune")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pid 77 on db1") && e.contains("--lock-wait"),
            "{e}"
        );
        assert!(e.contains("by the store's clock"), "{e}");
        assert_eq!(lease_keys(&mem), vec![theirs]);
    }

    /// A lease body of `host` that asks for `ttl_seconds`.
    fn asking(host: &str, ttl_seconds: u64) -> Vec<u8> {
        serde_json::to_vec(&LeaseBody {
            holder: Holder {
                host: host.into(),
                pid: 66,
                command: "backup".into(),
                since: Utc::now(),
            },
            expires_at: Utc::now() + chrono::Duration::days(365 * 30),
            ttl_seconds: Some(ttl_seconds),
        })
        .unwrap()
    }

    /// Plants `body` at `key`, last written `secs_ago` by the store's clock.
    fn plant(mem: &MemoryBackend, key: &str, body: impl Into<Bytes>, secs_ago: i64) {
        mem.insert_modified(key, body, mem.now() - chrono::Duration::seconds(secs_ago));
    }

    /// An unreadable lease counts for the configured time to live after
    /// the store last saw it written: held until then, named with when it
    /// goes stale; stale after, and removed by the next writer.
    #[tokio::test]
    async fn an_unreadable_lease_holds_for_the_configured_ttl_only() {
        let mem = MemoryBackend::new();
        let written = mem.now() - chrono::Duration::seconds(200);
        mem.insert_modified("locks/odd.json", "{ not a lease", written);
        let e = take(Arc::new(mem.clone()), "prune")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreadable lease locks/odd.json"), "{e}");
        let stale_at = (written + chrono::Duration::seconds(300))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(
            e.contains(&format!("stale at {stale_at} by the store's clock")),
            "{e}"
        );
        assert_eq!(lease_keys(&mem), vec!["locks/odd.json"]);

        plant(&mem, "locks/odd.json", "{ not a lease", 301);
        let held = take(Arc::new(mem.clone()), "prune").await.unwrap();
        assert!(!lease_keys(&mem).contains(&"locks/odd.json".to_owned()));
        drop(held);
    }

    /// A body asking for a billion seconds counts for the configured time
    /// to live: the configured one, not the default, decides.
    #[tokio::test]
    async fn a_lease_asking_for_more_than_the_configured_ttl_gets_the_configured_one() {
        let mem = MemoryBackend::new();
        let ttl = Duration::from_secs(10);
        plant(&mem, "locks/evil.json", asking("evil", 1_000_000_000), 5);
        let e = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO, ttl)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lease locks/evil.json")
                && e.contains("asks for 1000000000s, more than the configured lease_ttl")
                && e.contains("counts for 10s"),
            "{e}"
        );
        plant(&mem, "locks/evil.json", asking("evil", 1_000_000_000), 11);
        let held = acquire(Arc::new(mem.clone()), "backup", Duration::ZERO, ttl)
            .await
            .unwrap();
        assert_eq!(lease_keys(&mem).len(), 1);
        assert!(!lease_keys(&mem).contains(&"locks/evil.json".to_owned()));
        drop(held);
    }

    /// A lease that asks for less than the configured time to live keeps
    /// its own.
    #[tokio::test]
    async fn a_lease_with_a_shorter_ttl_keeps_its_own() {
        let mem = MemoryBackend::new();
        plant(&mem, "locks/short.json", asking("short", 60), 30);
        take(Arc::new(mem.clone()), "backup").await.unwrap_err();
        plant(&mem, "locks/short.json", asking("short", 60), 61);
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        assert!(!lease_keys(&mem).contains(&"locks/short.json".to_owned()));
        drop(held);
    }

    #[tokio::test]
    async fn survey_names_every_lease_and_what_is_wrong_with_it() {
        let mem = MemoryBackend::new();
        plant(&mem, "locks/odd.json", "garbage", 5);
        plant(&mem, "locks/evil.json", asking("evil", 1_000_000_000), 400);
        plant(&mem, "locks/fine.json", asking("fine", 300), 5);
        let seen = survey(&mem, TTL, Some(mem.now())).await.unwrap();
        let by_key = |k: &str| seen.iter().find(|s| s.key == k).unwrap().clone();
        let evil = by_key("locks/evil.json");
        assert!(evil.stale && evil.suspect, "{evil:?}");
        let odd = by_key("locks/odd.json");
        assert!(!odd.stale && odd.suspect, "{odd:?}");
        assert!(odd.description.contains("stale at"), "{odd:?}");
        let fine = by_key("locks/fine.json");
        assert!(!fine.stale && !fine.suspect, "{fine:?}");
        assert!(fine.description.contains("pid 66 on fine"), "{fine:?}");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_removed() {
        let mem = MemoryBackend::new();
        let stale = foreign(&mem, "gone", 4242, 6, -1);
        let held = take(Arc::new(mem.clone()), "prune").await.unwrap();
        let keys = lease_keys(&mem);
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_ne!(keys[0], stale);
        drop(held);
    }

    #[tokio::test]
    async fn a_fresh_lease_of_a_dead_process_on_this_host_is_stale_and_one_of_a_live_one_holds() {
        let mem = MemoryBackend::new();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let host = crate::model::host::name();
        let stale = foreign(&mem, &host, dead, 0, 5);
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        assert!(!lease_keys(&mem).contains(&stale));
        drop(held);
        crate::storage::finish_cleanups(Duration::from_secs(5)).await;

        let mem = MemoryBackend::new();
        // pid 1 is alive (and not ours): its fresh lease holds.
        foreign(&mem, &host, 1, 0, 5);
        assert!(take(Arc::new(mem.clone()), "backup").await.is_err());
    }

    /// A writer whose clock runs behind wrote a body that says "expired an
    /// hour ago"; the store wrote it a minute ago: it is live.
    #[tokio::test]
    async fn a_lease_written_by_a_clock_running_behind_is_judged_by_the_store() {
        let mem = MemoryBackend::new();
        let theirs = foreign(&mem, "slow-clock", 5, 1, -60);
        let e = take(Arc::new(mem.clone()), "backup")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("pid 5 on slow-clock"), "{e}");
        assert_eq!(lease_keys(&mem), vec![theirs]);
    }

    /// A writer whose clock runs ahead wrote a body that says "expires in
    /// a year"; the store last saw it written six minutes ago: expired.
    #[tokio::test]
    async fn a_lease_written_by_a_clock_running_ahead_expires_by_the_store() {
        let mem = MemoryBackend::new();
        let theirs = foreign(&mem, "fast-clock", 6, 6, 365 * 24 * 60);
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        assert!(!lease_keys(&mem).contains(&theirs));
        drop(held);
    }

    /// The store's clock is a day away from this host's: leases are judged
    /// by its times alone, so nothing changes.
    #[tokio::test]
    async fn a_store_clock_far_from_ours_changes_nothing() {
        let mem = MemoryBackend::new();
        mem.skew_clock(chrono::Duration::days(1));
        let live = foreign(&mem, "db1", 7, 2, 3);
        take(Arc::new(mem.clone()), "backup").await.unwrap_err();
        mem.delete(&live).await.unwrap();
        let stale = foreign(&mem, "db1", 8, 6, 3);
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        assert!(!lease_keys(&mem).contains(&stale));
        drop(held);
    }

    #[tokio::test]
    async fn a_failed_listing_fails_acquisition_with_the_store_error() {
        let mem = MemoryBackend::new();
        mem.faults().fail_next(Op::List, 1, Failure::Unavailable);
        let e = take(Arc::new(mem.clone()), "backup")
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
        let e = take(Arc::new(mem.clone()), "backup")
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
        let first = take(backend.clone(), "backup").await.unwrap();
        let waiter = tokio::spawn(acquire(
            backend.clone(),
            "prune",
            Duration::from_secs(60),
            TTL,
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(lease_keys(&mem).len(), 1);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_mark_the_lease_lost_at_its_deadline_not_before() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        mem.faults()
            .fail_prefix(Op::Put, PREFIX, Failure::Unavailable);
        // 4 minutes 20 seconds after the last renewal: still held.
        tokio::time::sleep(Duration::from_secs(260)).await;
        assert!(!held.is_lost(), "lost too early");
        // 90% of the 5-minute life: lost, and the holder is told.
        let lost = tokio::time::timeout(Duration::from_secs(11), held.lost()).await;
        assert!(lost.is_ok() && held.is_lost());
        // Renewals were retried every 15 s after the first failure.
        let failed_puts = mem
            .calls()
            .iter()
            .filter(|c| c.op == Op::Put && !c.ok)
            .count();
        assert!(failed_puts >= 10, "{failed_puts}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_failed_renewal_is_retried_and_the_lease_stays_held() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        let key = lease_keys(&mem).remove(0);
        mem.faults().fail_next(Op::Put, 1, Failure::Unavailable);
        tokio::time::sleep(EVERY + Duration::from_secs(16)).await;
        assert!(!held.is_lost());
        // Written on acquisition, refused at minute 1, renewed 15 s later.
        let puts: Vec<bool> = mem
            .calls()
            .iter()
            .filter(|c| c.op == Op::Put && c.key == key)
            .map(|c| c.ok)
            .collect();
        assert_eq!(puts, vec![true, false, true]);
    }

    /// A renewal that hangs is cut off at the deadline: the lease is lost
    /// then, not when (or if) the request returns.
    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_cannot_outlive_the_deadline() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        mem.faults().hang_prefix(Op::Put, PREFIX);
        let start = Instant::now();
        held.lost().await;
        let took = start.elapsed();
        assert!(took <= Duration::from_secs(270), "{took:?}");
        assert!(took >= Duration::from_secs(269), "{took:?}");
        // The store answers again: nothing brings the lease back.
        mem.faults().clear();
        tokio::time::sleep(EVERY * 3).await;
        assert!(held.is_lost());
        assert!(!held.confirm().await);
    }

    /// The store stamped two renewals further apart than the lease lives
    /// (this host was paused, its timers did not run): lost, even though
    /// the renewal itself succeeded.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_the_store_saw_too_late_loses_the_lease() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        mem.skew_clock(chrono::Duration::minutes(6));
        tokio::time::sleep(EVERY + Duration::from_secs(1)).await;
        assert!(held.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn confirm_renews_now_and_keeps_a_healthy_lease() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let puts = || mem.calls().iter().filter(|c| c.op == Op::Put).count();
        let before = puts();
        assert!(held.confirm().await);
        assert_eq!(puts(), before + 1);
    }

    /// A renewal that fails right before a commit: the lease still counts
    /// while a tenth of its life is left before the deadline, not after.
    #[tokio::test(start_paused = true)]
    async fn a_failed_confirm_holds_only_with_time_left_for_the_commit() {
        let mem = MemoryBackend::new();
        let held = take(Arc::new(mem.clone()), "backup").await.unwrap();
        mem.faults()
            .fail_prefix(Op::Put, PREFIX, Failure::Unavailable);
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(held.confirm().await, "70 s are left");
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!held.confirm().await, "20 s are left: not enough");
        assert!(!held.is_lost(), "not lost before its deadline");
    }

    /// A listing that fails after our lease is written must not leave that
    /// lease behind: it would block every writer until it expires (5 minutes).
    #[tokio::test]
    async fn a_listing_failure_after_writing_our_lease_removes_it() {
        let mem = MemoryBackend::new();
        mem.faults()
            .fail_after(Op::List, PREFIX, 0, 1, Failure::Unavailable);
        take(Arc::new(mem.clone()), "backup").await.unwrap_err();
        assert!(lease_keys(&mem).is_empty(), "{:?}", lease_keys(&mem));
    }
}
