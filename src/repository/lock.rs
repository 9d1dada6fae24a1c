//! The exclusive writer lock of a repository.
//!
//! Writers (backup, prune) hold it; readers take none. On a local
//! repository it is a `flock` on `<repo>/lock`, which the kernel releases
//! when the process dies — a `kill -9` never leaves a stale lock behind.
//! The holder writes who it is into the file, so a second writer that gives
//! up (after `--lock-wait`, default: at once) can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub mod lease;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Why the writer lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another writer holds it (and `--lock-wait` ran out).
    #[error(
        "repository {location} is locked by {holders}; wait for it to finish, or pass --lock-wait 10m to wait"
    )]
    Held {
        /// Where the repository is, for the message: its directory, or the
        /// backend's own description.
        location: String,
        /// Who holds it, for people.
        holders: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The lease could not be written or listed.
    #[error("cannot take the lock: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

impl crate::error::Classify for LockError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Name of the machine the holder runs on.
    pub host: String,
    /// The holder's process id on that machine.
    pub pid: u32,
    /// The command (`backup`, `prune`).
    pub command: String,
    /// When the holder took the lock (UTC).
    pub since: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`kompose-dr {}` (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct RepoLock {
    _held: Held,
}

#[derive(Debug)]
enum Held {
    Flock(#[allow(dead_code)] Flock<File>),
    Lease(lease::Lease),
}

impl RepoLock {
    /// Whether the lock may have been taken over (an S3 lease that was not
    /// renewed in time); a flock is never lost while the process lives.
    /// Once lost, always lost.
    pub fn is_lost(&self) -> bool {
        match &self._held {
            Held::Flock(_) => false,
            Held::Lease(l) => l.is_lost(),
        }
    }

    /// Resolves once the lock is lost; never, for a flock.
    pub async fn lost(&self) {
        match &self._held {
            Held::Flock(_) => std::future::pending().await,
            Held::Lease(l) => l.lost().await,
        }
    }

    /// Whether the lock is still held, checked with the store right now (a
    /// lease is renewed, and its renewal checked by the store's clock): for
    /// the moment before a commit.
    pub async fn confirm(&self) -> bool {
        match &self._held {
            Held::Flock(_) => true,
            Held::Lease(l) => l.confirm().await,
        }
    }
}

impl Holder {
    /// This process, running `command`.
    pub fn me(command: &str) -> Holder {
        Holder {
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid: std::process::id(),
            command: command.to_owned(),
            since: chrono::Utc::now(),
        }
    }
}

/// Takes the writer lock of the local repository at `root`, waiting up to
/// `wait` for the current holder.
pub async fn acquire(root: &Path, command: &str, wait: Duration) -> Result<RepoLock, LockError> {
    crate::storage::local::create_dir_private(root).map_err(|source| LockError::Io {
        op: "create",
        path: root.display().to_string(),
        source,
    })?;
    let path = root.join("lock");
    let deadline = Instant::now() + wait;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Io {
                op: "open the lock",
                path: path.display().to_string(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let me = Holder::me(command);
                let body = serde_json::to_vec(&me).expect("holder serialises");
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = lock.write_all(&body);
                let _ = lock.sync_all();
                return Ok(RepoLock {
                    _held: Held::Flock(lock),
                });
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let holder = serde_json::from_str::<Holder>(&text)
                        .map(|h| h.to_string())
                        .unwrap_or_else(|_| "another kompose-dr".to_owned());
                    return Err(LockError::Held {
                        location: root.display().to_string(),
                        holders: holder,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((_, e)) => {
                return Err(LockError::Io {
                    op: "lock",
                    path: path.display().to_string(),
                    source: e.into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_writer_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), "backup", Duration::ZERO).await.unwrap();
        let e = acquire(dir.path(), "prune", Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`kompose-dr backup`") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        acquire(dir.path(), "prune", Duration::ZERO).await.unwrap();
    }
}
