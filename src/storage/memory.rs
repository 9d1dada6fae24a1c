//! A backend that keeps objects in memory, with failures that tests inject.
//!
//! It exists so that the code above storage — leases, prune, restore
//! planning, backup — can be unit-tested without a disk or a server, and so
//! that the failures those layers must survive (a full disk halfway through
//! an archive, a store that refuses deletes, a list that times out) can be
//! produced on demand, at the exact operation a test names.
//!
//! It behaves like the real backends where callers can tell: a writer's
//! object is invisible until [`ObjectWriter::finish`]; an unfinished write
//! shows up in [`Backend::list_dirs`] and [`Backend::abandoned_writes`]
//! (as a `.tmp` file or an open multipart upload would) until it is
//! finished, aborted or dropped; [`PutMode::CreateNew`] refuses an existing
//! key; deleting a missing object succeeds. It has no local directory, so a
//! repository on it is locked with leases, as on S3.
//!
//! [`MemoryBackend`] is cheap to clone and every clone sees the same
//! objects: a test keeps one clone to look inside while the code under test
//! holds another. [`Faults`] is the handle that arms failures. Nothing in
//! the configuration can select this backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::{Backend, ObjectMeta, ObjectReader, ObjectWriter, PutMode, StorageError};

/// The operations a fault can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Starting a write: [`Backend::create`].
    Create,
    /// Each piece written to an open writer: [`ObjectWriter::write`].
    Write,
    /// Making a written object visible: [`ObjectWriter::finish`].
    Finish,
    /// Writing a small object whole, such as a manifest: [`Backend::put`].
    Put,
    /// Reading a small object whole: [`Backend::get`].
    Get,
    /// Opening an object for a streaming read: [`Backend::open`].
    Open,
    /// Listing finished objects under a prefix: [`Backend::list`].
    List,
    /// Removing one object: [`Backend::delete`].
    Delete,
    /// Removing everything under a prefix: [`Backend::delete_prefix`].
    DeletePrefix,
    /// Listing the "directories" under a prefix: [`Backend::list_dirs`].
    ListDirs,
    /// Finding (or removing) unfinished writes: [`Backend::abandoned_writes`].
    AbandonedWrites,
}

/// The error an injected fault produces, one per kind of [`StorageError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// [`StorageError::Io`] with `ENOSPC`: the disk is full.
    DiskFull,
    /// [`StorageError::Io`] with `EACCES`: permission denied.
    PermissionDenied,
    /// [`StorageError::Remote`]: the store did not answer.
    Unavailable,
    /// [`StorageError::Remote`] with this message.
    Remote(String),
    /// [`StorageError::NotFound`]: as if the object did not exist.
    NotFound,
    /// [`StorageError::AlreadyExists`]: as if the key were already taken.
    AlreadyExists,
    /// [`StorageError::TooLarge`]: as if the object exceeded what the store
    /// takes in one object.
    TooLarge,
}

impl Failure {
    /// The error for operation `op` on `location`.
    pub fn error(&self, op: Op, location: &str) -> StorageError {
        let location = location.to_owned();
        let os = |code| StorageError::Io {
            op: op.verb(),
            location: location.clone(),
            source: std::io::Error::from_raw_os_error(code),
        };
        match self {
            Failure::DiskFull => os(28),
            Failure::PermissionDenied => os(13),
            Failure::Unavailable => StorageError::Remote {
                op: op.verb(),
                location,
                message: "no answer from the store (injected)".into(),
            },
            Failure::Remote(message) => StorageError::Remote {
                op: op.verb(),
                location,
                message: message.clone(),
            },
            Failure::NotFound => StorageError::NotFound(location),
            Failure::AlreadyExists => StorageError::AlreadyExists(location),
            Failure::TooLarge => StorageError::TooLarge {
                location,
                message: "too large (injected)".into(),
            },
        }
    }
}

impl Op {
    /// The word error messages use for it.
    fn verb(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Write => "write",
            Op::Finish => "finish",
            Op::Put => "write",
            Op::Get | Op::Open => "read",
            Op::List | Op::ListDirs => "list",
            Op::Delete | Op::DeletePrefix => "delete",
            Op::AbandonedWrites => "list uploads",
        }
    }
}

/// One armed fault.
#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    /// Only keys (or prefixes, for listings) starting with this.
    prefix: String,
    /// Matching calls still let through before the fault fires.
    skip: usize,
    /// Matching calls still to fail; `None`: every one until cleared.
    remaining: Option<usize>,
    failure: Failure,
}

/// A writer fault: writers of matching keys fail once they would hold
/// more than `after` bytes.
#[derive(Debug, Clone)]
struct WriterRule {
    prefix: String,
    after: u64,
    failure: Failure,
}

#[derive(Debug, Default)]
struct FaultState {
    rules: Vec<Rule>,
    writers: Vec<WriterRule>,
    /// Calls that hang (answer nothing) while armed.
    hangs: Vec<(Op, String)>,
}

/// The handle that arms failures of a [`MemoryBackend`]; cheap to clone,
/// every clone arms the same backend.
///
/// Rules are checked in the order they were armed; the first that fires
/// decides the error. A call a rule lets through (`skip`) still counts
/// against that rule only.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arm(&self, rule: Rule) -> &Self {
        self.lock().rules.push(rule);
        self
    }

    /// Fails the next `n` calls of `op`, whatever their key.
    pub fn fail_next(&self, op: Op, n: usize, failure: Failure) -> &Self {
        self.fail_after(op, "", 0, n, failure)
    }

    /// Lets `skip` calls of `op` on keys starting with `prefix` through,
    /// then fails the `n` after them: "the second delete fails".
    pub fn fail_after(
        &self,
        op: Op,
        prefix: &str,
        skip: usize,
        n: usize,
        failure: Failure,
    ) -> &Self {
        self.arm(Rule {
            op,
            prefix: prefix.to_owned(),
            skip,
            remaining: Some(n),
            failure,
        })
    }

    /// Fails every call of `op` on a key (or, for listings and
    /// `delete_prefix`, a prefix) starting with `prefix`, until [`clear`].
    ///
    /// [`clear`]: Faults::clear
    pub fn fail_prefix(&self, op: Op, prefix: &str, failure: Failure) -> &Self {
        self.arm(Rule {
            op,
            prefix: prefix.to_owned(),
            skip: 0,
            remaining: None,
            failure,
        })
    }

    /// Makes every writer of a key starting with `prefix`, created from now
    /// on, fail the write that would take it past `after` bytes (a disk
    /// that fills up, a connection lost mid-archive), and every write after
    /// that. The object never becomes visible.
    pub fn fail_writer_after(&self, prefix: &str, after: u64, failure: Failure) -> &Self {
        self.lock().writers.push(WriterRule {
            prefix: prefix.to_owned(),
            after,
            failure,
        });
        self
    }

    /// Makes every call of `op` on a key starting with `prefix` hang, as
    /// a request to a store that stopped answering would, until
    /// [`clear`](Faults::clear) (the call then goes ahead).
    pub fn hang_prefix(&self, op: Op, prefix: &str) -> &Self {
        self.lock().hangs.push((op, prefix.to_owned()));
        self
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.writers.clear();
        s.hangs.clear();
    }

    /// Waits while a call of `op` on `key` is made to hang.
    async fn hang(&self, op: Op, key: &str) {
        while self
            .lock()
            .hangs
            .iter()
            .any(|(o, p)| *o == op && key.starts_with(p.as_str()))
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The error for a call of `op` on `key`, if a rule fires.
    fn check(&self, op: Op, key: &str, location: &str) -> Result<(), StorageError> {
        let mut s = self.lock();
        for rule in s.rules.iter_mut() {
            if rule.op != op || !key.starts_with(&rule.prefix) || rule.remaining == Some(0) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            return Err(rule.failure.error(op, location));
        }
        Ok(())
    }

    /// The byte limit a new writer of `key` gets, if any.
    fn writer_limit(&self, key: &str) -> Option<(u64, Failure)> {
        self.lock()
            .writers
            .iter()
            .find(|w| key.starts_with(&w.prefix))
            .map(|w| (w.after, w.failure.clone()))
    }
}

/// One call the backend saw, in order: what a test reads to check that
/// the manifest went before the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which operation was called.
    pub op: Op,
    /// Its key or prefix.
    pub key: String,
    /// Whether it succeeded.
    pub ok: bool,
}

/// An unfinished write.
#[derive(Debug, Clone)]
struct Pending {
    key: String,
    started: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Bytes>,
    /// When each object was last written, by the store's clock.
    modified: BTreeMap<String, DateTime<Utc>>,
    /// Unfinished writes by writer id.
    pending: BTreeMap<u64, Pending>,
    next_writer: u64,
    calls: Vec<Call>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    faults: Faults,
    clock: Clock,
}

/// The store's own clock: it follows tokio's (so a test with paused time
/// moves it), and a test may set it apart from this host's wall clock.
#[derive(Debug)]
struct Clock {
    start: DateTime<Utc>,
    at: tokio::time::Instant,
    skew: Mutex<chrono::Duration>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            start: Utc::now(),
            at: tokio::time::Instant::now(),
            skew: Mutex::new(chrono::Duration::zero()),
        }
    }
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.at.elapsed()).unwrap_or_default();
        self.start + elapsed + *self.skew.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Objects in memory behind [`Backend`]; clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl MemoryBackend {
    /// An empty store with no fault armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle that arms its failures.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every finished key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// The finished object under `key`.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.state().objects.get(key).cloned()
    }

    /// Stores an object directly, bypassing faults and the call log: for
    /// setting up a test.
    pub fn insert(&self, key: &str, data: impl Into<Bytes>) {
        let now = self.now();
        self.insert_modified(key, data, now);
    }

    /// [`MemoryBackend::insert`] with the time the store records as its
    /// last write (a lease renewed long ago, say).
    pub fn insert_modified(&self, key: &str, data: impl Into<Bytes>, modified: DateTime<Utc>) {
        let mut state = self.state();
        state.objects.insert(key.to_owned(), data.into());
        state.modified.insert(key.to_owned(), modified);
    }

    /// The store's clock now: what it records as the time of a write.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// Sets the store's clock `skew` away from this host's (plus the time
    /// tokio has advanced): for tests of what must not trust either clock.
    pub fn skew_clock(&self, skew: chrono::Duration) {
        *self
            .shared
            .clock
            .skew
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = skew;
    }

    /// The keys of unfinished writes, sorted.
    pub fn pending_writes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .state()
            .pending
            .values()
            .map(|p| p.key.clone())
            .collect();
        out.sort();
        out
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn location(key: &str) -> String {
        format!("memory:{key}")
    }

    /// Checks the faults for a call, and logs it.
    fn enter(&self, op: Op, key: &str) -> Result<MutexGuard<'_, State>, StorageError> {
        let fault = self.shared.faults.check(op, key, &Self::location(key));
        let mut state = self.state();
        state.calls.push(Call {
            op,
            key: key.to_owned(),
            ok: fault.is_ok(),
        });
        fault.map(|()| state)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.shared.faults.hang(Op::Create, key).await;
        let mut state = self.enter(Op::Create, key)?;
        let id = state.next_writer;
        state.next_writer += 1;
        state.pending.insert(
            id,
            Pending {
                key: key.to_owned(),
                started: Utc::now(),
            },
        );
        drop(state);
        Ok(Box::new(MemoryWriter {
            backend: self.clone(),
            id,
            key: key.to_owned(),
            buf: BytesMut::new(),
            limit: self.shared.faults.writer_limit(key),
            failed: None,
            done: false,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.shared.faults.hang(Op::Put, key).await;
        let mut state = self.enter(Op::Put, key)?;
        if mode == PutMode::CreateNew && state.objects.contains_key(key) {
            return Err(StorageError::AlreadyExists(Self::location(key)));
        }
        state.objects.insert(key.to_owned(), data);
        state.modified.insert(key.to_owned(), self.now());
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.shared.faults.hang(Op::Get, key).await;
        let state = self.enter(Op::Get, key)?;
        state
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(Self::location(key)))
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let state = self.enter(Op::Open, key)?;
        let data = state
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(Self::location(key)))?;
        Ok(Box::pin(std::io::Cursor::new(data)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.shared.faults.hang(Op::List, prefix).await;
        let state = self.enter(Op::List, prefix)?;
        Ok(state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
                modified: state.modified.get(k).copied(),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.shared.faults.hang(Op::Delete, key).await;
        let mut state = self.enter(Op::Delete, key)?;
        state.objects.remove(key);
        state.modified.remove(key);
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let mut state = self.enter(Op::DeletePrefix, prefix)?;
        state.objects.retain(|k, _| !k.starts_with(prefix));
        state.modified.retain(|k, _| !k.starts_with(prefix));
        state.pending.retain(|_, p| !p.key.starts_with(prefix));
        Ok(())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let state = self.enter(Op::ListDirs, prefix)?;
        let finished = state.objects.keys();
        let unfinished = state.pending.values().map(|p| &p.key);
        let mut out: Vec<String> = finished
            .chain(unfinished)
            .filter_map(|k| k.strip_prefix(prefix)?.split_once('/'))
            .map(|(dir, _)| dir.to_owned())
            .filter(|d| !d.is_empty())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn abandoned_writes(
        &self,
        before: DateTime<Utc>,
        remove: bool,
    ) -> Result<Vec<String>, StorageError> {
        let mut state = self.enter(Op::AbandonedWrites, "")?;
        let old: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, p)| p.started < before)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in old {
            let p = if remove {
                state.pending.remove(&id)
            } else {
                state.pending.get(&id).cloned()
            };
            if let Some(p) = p {
                out.push(format!("{} (unfinished write {id})", p.key));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A write in progress; its bytes live here until `finish`.
struct MemoryWriter {
    backend: MemoryBackend,
    /// Its entry among the unfinished writes.
    id: u64,
    key: String,
    buf: BytesMut,
    /// The injected byte limit, if any.
    limit: Option<(u64, Failure)>,
    /// Set once an injected writer fault fired: every later write fails.
    failed: Option<Failure>,
    /// Finished or aborted: nothing to remove on drop.
    done: bool,
}

impl MemoryWriter {
    fn forget_pending(&mut self) {
        self.done = true;
        self.backend.state().pending.remove(&self.id);
    }
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let location = MemoryBackend::location(&self.key);
        drop(self.backend.enter(Op::Write, &self.key)?);
        if let Some(f) = &self.failed {
            return Err(f.error(Op::Write, &location));
        }
        if let Some((after, failure)) = &self.limit
            && (self.buf.len() + chunk.len()) as u64 > *after
        {
            // Keep what fitted, as a disk that filled up would.
            let room = (*after as usize).saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&chunk[..room]);
            self.failed = Some(failure.clone());
            return Err(failure.error(Op::Write, &location));
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let location = MemoryBackend::location(&self.key);
        let backend = self.backend.clone();
        let mut state = backend.enter(Op::Finish, &self.key)?;
        let outcome = if let Some(f) = &self.failed {
            Err(f.error(Op::Finish, &location))
        } else if state.pending.remove(&self.id).is_none() {
            // Removed meanwhile (delete_prefix, abandoned_writes): as a
            // completed-after-abort multipart upload or a renamed-away `.tmp`.
            Err(StorageError::NotFound(location))
        } else {
            let data = std::mem::take(&mut self.buf).freeze();
            state.objects.insert(self.key.clone(), data);
            state.modified.insert(self.key.clone(), backend.now());
            Ok(())
        };
        drop(state);
        // On failure the drop below removes the unfinished write.
        self.done = outcome.is_ok();
        outcome
    }

    async fn abort(mut self: Box<Self>) {
        self.forget_pending();
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        if !self.done {
            self.forget_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn a_written_object_is_visible_only_once_finished() {
        let m = MemoryBackend::new();
        let mut w = m.create("data/s1/postgres/a.dump").await.unwrap();
        w.write(b("hello ")).await.unwrap();
        w.write(b("world")).await.unwrap();
        assert!(m.list("data/").await.unwrap().is_empty());
        assert!(matches!(
            m.get("data/s1/postgres/a.dump").await,
            Err(StorageError::NotFound(_))
        ));
        // An unfinished write still shows as a directory, as a `.tmp`
        // file or an open multipart upload does.
        assert_eq!(m.list_dirs("data/").await.unwrap(), vec!["s1"]);
        w.finish().await.unwrap();
        let listed = m.list("data/").await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|o| (o.key.as_str(), o.size))
                .collect::<Vec<_>>(),
            vec![("data/s1/postgres/a.dump", 11)]
        );
        assert!(listed[0].modified.is_some());
        let mut text = String::new();
        m.open("data/s1/postgres/a.dump")
            .await
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        assert_eq!(text, "hello world");
        assert!(m.pending_writes().is_empty());
    }

    #[tokio::test]
    async fn aborted_and_dropped_writers_leave_nothing_and_forgotten_ones_are_abandoned() {
        let m = MemoryBackend::new();
        let mut w = m.create("d/a").await.unwrap();
        w.write(b("x")).await.unwrap();
        w.abort().await;
        drop(m.create("d/b").await.unwrap());
        assert!(m.keys().is_empty() && m.pending_writes().is_empty());

        std::mem::forget(m.create("d/c").await.unwrap()); // as a kill -9 would
        let past = Utc::now() - chrono::Duration::hours(1);
        assert!(m.abandoned_writes(past, true).await.unwrap().is_empty());
        let later = Utc::now() + chrono::Duration::seconds(5);
        let found = m.abandoned_writes(later, false).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("d/c "), "{found:?}");
        m.abandoned_writes(later, true).await.unwrap();
        assert!(m.pending_writes().is_empty());
    }

    #[tokio::test]
    async fn create_new_refuses_an_existing_key_and_overwrite_replaces_it() {
        let m = MemoryBackend::new();
        m.put("m.json", b("1"), PutMode::CreateNew).await.unwrap();
        let e = m.put("m.json", b("2"), PutMode::CreateNew).await;
        assert!(matches!(e, Err(StorageError::AlreadyExists(_))), "{e:?}");
        m.put("m.json", b("3"), PutMode::Overwrite).await.unwrap();
        assert_eq!(m.object("m.json").unwrap(), b("3"));
        // Deleting what is not there is fine.
        m.delete("nope").await.unwrap();
    }

    #[tokio::test]
    async fn delete_prefix_removes_finished_and_unfinished_objects_under_it_only() {
        let m = MemoryBackend::new();
        m.insert("data/s1/a", "1");
        m.insert("data/s10/a", "1");
        let w = m.create("data/s1/b").await.unwrap();
        m.delete_prefix("data/s1/").await.unwrap();
        assert_eq!(m.keys(), vec!["data/s10/a"]);
        assert!(m.pending_writes().is_empty());
        // Its upload was removed under it: finishing fails, as on S3.
        assert!(w.finish().await.is_err());
        assert_eq!(m.keys(), vec!["data/s10/a"]);
    }

    #[tokio::test]
    async fn faults_fire_on_the_chosen_calls_only() {
        let m = MemoryBackend::new();
        m.insert("snapshots/a.json", "{}");
        m.faults().fail_next(Op::List, 1, Failure::Unavailable);
        let e = m.list("snapshots/").await.unwrap_err();
        assert!(matches!(e, StorageError::Remote { .. }), "{e}");
        assert_eq!(m.list("snapshots/").await.unwrap().len(), 1);

        // The second delete under data/ fails, the others go through.
        m.faults()
            .fail_after(Op::Delete, "data/", 1, 1, Failure::PermissionDenied);
        m.delete("snapshots/a.json").await.unwrap();
        m.delete("data/1").await.unwrap();
        let e = m.delete("data/2").await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        m.delete("data/3").await.unwrap();

        m.faults().fail_prefix(Op::Get, "locks/", Failure::NotFound);
        assert!(matches!(
            m.get("locks/x").await,
            Err(StorageError::NotFound(_))
        ));
        assert!(m.get("locks/x").await.is_err());
        m.faults().clear();
        m.insert("locks/x", "1");
        assert_eq!(m.get("locks/x").await.unwrap(), b("1"));

        let calls = m.calls();
        let deletes: Vec<(&str, bool)> = calls
            .iter()
            .filter(|c| c.op == Op::Delete)
            .map(|c| (c.key.as_str(), c.ok))
            .collect();
        assert_eq!(
            deletes,
            vec![
                ("snapshots/a.json", true),
                ("data/1", true),
                ("data/2", false),
                ("data/3", true)
            ]
        );
    }

    #[tokio::test]
    async fn a_writer_fails_after_k_bytes_and_its_object_never_appears() {
        let m = MemoryBackend::new();
        m.faults().fail_writer_after("data/", 10, Failure::DiskFull);
        let mut w = m.create("data/s1/big").await.unwrap();
        w.write(Bytes::from(vec![0u8; 8])).await.unwrap();
        let e = w.write(Bytes::from(vec![0u8; 8])).await.unwrap_err();
        assert!(e.to_string().contains("disk is full"), "{e}");
        assert!(w.write(b("x")).await.is_err(), "stays failed");
        assert!(w.finish().await.is_err());
        assert!(m.keys().is_empty());
        assert!(m.pending_writes().is_empty(), "a failed writer is dropped");
        // Other keys are not affected.
        let mut w = m.create("snapshots/s1.tmp").await.unwrap();
        w.write(Bytes::from(vec![0u8; 100])).await.unwrap();
        w.finish().await.unwrap();
    }

    #[tokio::test]
    async fn clones_share_objects_and_faults() {
        let m = MemoryBackend::new();
        let held: Arc<dyn Backend> = Arc::new(m.clone());
        held.put("k", b("v"), PutMode::CreateNew).await.unwrap();
        assert_eq!(m.object("k").unwrap(), b("v"));
        m.faults().fail_next(Op::Put, 1, Failure::DiskFull);
        assert!(held.put("k2", b("v"), PutMode::Overwrite).await.is_err());
        assert!(held.local_root().is_none());
    }
}
