//! Repository storage backends behind one small trait.
//!
//! A backend stores opaque objects under `/`-separated keys. Writes of large
//! objects go through an [`ObjectWriter`] that becomes visible only on
//! [`ObjectWriter::finish`]; small objects (markers, manifests) are written
//! atomically with [`Backend::put`]. The repository layout on top of this
//! lives in [`crate::repository`].
//!
//! Two backends: [`local`] (a directory: temp file, fsync, rename) and
//! [`s3`] (any S3-compatible store: multipart uploads, retries, resumable
//! reads). Clean-up that a `Drop` must start — aborting an upload when a
//! run is cancelled — goes through [`spawn_cleanup`], and the binary waits
//! for it with [`finish_cleanups`] before it exits.
//!
//! A third, `memory`, keeps objects in memory and fails on demand; it is
//! for tests of the layers above and cannot be chosen in a configuration.
//! It is compiled only into tests and with the `testing` feature, never
//! into the release binary.

pub mod keys;
pub mod local;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod s3;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

/// A storage failure, naming the object and what to do where possible.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on a named object.
    #[error("{op} {location}: {source}{}", hint(source))]
    Io {
        /// What was being done (`write`, `rename`, …).
        op: &'static str,
        /// The object or directory.
        location: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The object does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The object exists and must not be overwritten.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A remote store refused or failed a request; the message says what
    /// to fix.
    #[error("{op} {location}: {message}")]
    Remote {
        /// What was being done (`upload`, `list`, …).
        op: &'static str,
        /// The object, bucket or endpoint.
        location: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// A key that kompose-dr never builds (an empty part, `.` or `..`, a
    /// leading `/`): refused before it reaches the filesystem or the store.
    #[error("refusing the key `{0}`: it is not a repository key")]
    BadKey(String),
    /// An object is not what a repository holds (a symlink, a device, a
    /// directory) or is larger than a small object may be.
    #[error("{location}: {message}")]
    NotAnObject {
        /// The object.
        location: String,
        /// What it is instead.
        message: String,
    },
    /// An artifact would exceed what the repository can store in one object.
    #[error("{location}: {message}")]
    TooLarge {
        /// Where the object would have gone, as the store names it.
        location: String,
        /// The limit and how to raise it.
        message: String,
    },
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (the disk is full: free space or prune old snapshots)",
        Some(13) | Some(1) => {
            " (permission denied: run as the repository's owner or fix its permissions)"
        }
        Some(30) => " (read-only file system)",
        _ => "",
    }
}

impl crate::error::Classify for StorageError {
    /// Storage failing is never a usage mistake: exit 1.
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// The most [`Backend::get`] reads: manifests, markers and facts are far
/// smaller; anything larger is refused rather than read into memory.
pub const MAX_SMALL_OBJECT: u64 = 64 << 20;

/// Whether `key` is one kompose-dr could have built: `/`-separated parts,
/// none empty, `.` or `..`, no NUL or backslash. Backends refuse any other
/// key, in release builds too.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains(['\0', '\\'])
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// How [`Backend::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`StorageError::AlreadyExists`] if the object exists.
    CreateNew,
    /// Replace it atomically.
    Overwrite,
}

/// One stored object, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's full key, the listed prefix included.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, by the store's own clock (S3's
    /// `LastModified`, a file's mtime), if the store says. Lock leases are
    /// judged by it, never by the clock of the host that wrote them.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// A readable byte stream of one object.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// A place that stores objects under keys.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A human-readable location, for messages.
    fn describe(&self) -> String;

    /// Starts writing a new object; it becomes visible only on `finish`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;

    /// Writes a small object atomically and durably.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError>;

    /// Reads a small object whole (at most [`MAX_SMALL_OBJECT`] bytes).
    async fn get(&self, key: &str) -> Result<Bytes, StorageError>;

    /// Opens an object for streaming reads.
    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// Lists every finished object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Removes an object; a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Removes every object under `prefix` (ending in `/`), including
    /// unfinished ones.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError>;

    /// The names of the immediate "directories" under `prefix` (ending in
    /// `/`), finished objects or not.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError>;

    /// The local directory, for backends that are one (locking uses it).
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// Writes that were started before `before` and never finished: `.tmp`
    /// files of a killed run, or open S3 multipart uploads. With `remove`
    /// they are removed (aborted). Returns what was (or would be) removed.
    async fn abandoned_writes(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        remove: bool,
    ) -> Result<Vec<String>, StorageError>;
}

/// Clean-up work (aborting an upload, releasing a lease) started from a
/// `Drop`, which the process waits for before it exits.
static CLEANUPS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Writers alive that may still need clean-up when dropped.
static ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a live writer until dropped, so that [`finish_cleanups`] waits
/// for writers being torn down after a cancellation.
#[derive(Debug)]
pub struct AliveWriter(());

impl AliveWriter {
    /// Counts one more live writer.
    pub fn new() -> Self {
        ALIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        AliveWriter(())
    }
}

impl Default for AliveWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AliveWriter {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `work` in the background; [`finish_cleanups`] waits for it.
/// Without a runtime (a drop outside async code) it is skipped.
pub fn spawn_cleanup(work: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let task = handle.spawn(work);
        CLEANUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }
}

/// Waits up to `limit` for the clean-up work started so far.
pub async fn finish_cleanups(limit: std::time::Duration) {
    // Cancelled tasks drop their writers asynchronously: let them.
    let deadline = tokio::time::Instant::now() + limit;
    while ALIVE.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let tasks: Vec<_> = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
    if tasks.is_empty() {
        return;
    }
    if tokio::time::timeout(limit, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            "clean-up (aborting uploads, releasing locks) did not finish in {}s; prune removes what is left",
            limit.as_secs()
        );
    }
}

/// A large object being written in pieces.
///
/// Dropping a writer without calling `finish` leaves nothing visible.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends a piece.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// Makes the object durable and visible under its key.
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;
    /// Discards everything written.
    async fn abort(self: Box<Self>);
}
