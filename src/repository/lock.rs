//! The exclusive writer lock of a repository.
//!
//! Writers (backup, prune) hold it; readers take none. On a local
//! repository it is a `flock` on `<repo>/lock`, which the kernel releases
//! when the process dies — a `kill -9` never leaves a stale lock behind.
//! The holder writes who it is into the file, so a second writer that gives
//! up (after `--lock-wait`, default: at once) can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
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
    /// Something kompose-dr never writes is where the lock file goes: a
    /// symlink, FIFO, directory, device, or a file with other names.
    #[error(
        "{path} is {what}, not the lock file kompose-dr writes: refusing to open or write it; \
         remove it (kompose-dr only ever writes a regular file there)"
    )]
    NotALockFile {
        /// The lock file's place.
        path: String,
        /// What is there instead.
        what: String,
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
        let file = open_lock(root, &path)?;
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
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    let mut text = String::new();
                    // The holder's JSON is a line; the file is untrusted.
                    let _ = file.take(MAX_HOLDER).read_to_string(&mut text);
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

/// The most of a lock file read to name its holder.
const MAX_HOLDER: u64 = 64 << 10;

/// Opens (or creates, 0600) the lock file `lock` beneath `root` without
/// following a symlink at any level and without blocking on a FIFO, and
/// makes sure, on the opened file, that it is a regular file with one name:
/// the holder's JSON is written into it as root, so a planted
/// `lock -> /etc/shadow` (or a hard link to it) must never be truncated.
/// `path` is for messages.
fn open_lock(root: &Path, path: &Path) -> Result<File, LockError> {
    use crate::storage::local::{beneath, kind_name};
    use rustix::fs::{FileType, Mode, OFlags};
    use std::os::fd::AsFd;
    let io = |op: &'static str, at: &Path| {
        let at = at.display().to_string();
        move |source| LockError::Io {
            op,
            path: at,
            source,
        }
    };
    let dir = beneath::open_root(root).map_err(io("open", root))?;
    let flags =
        OFlags::RDWR | OFlags::CREATE | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY;
    let mode = Mode::from_raw_mode(0o600);
    let fd = match beneath::open(dir.as_fd(), Path::new("lock"), flags, mode) {
        Ok(fd) => fd,
        Err(e) => {
            let what = match rustix::io::Errno::from_io_error(&e) {
                Some(rustix::io::Errno::LOOP) => "a symbolic link",
                Some(rustix::io::Errno::ISDIR) => "a directory",
                Some(rustix::io::Errno::NXIO) => "a socket",
                _ => return Err(io("open the lock", path)(e)),
            };
            return Err(not_a_lock(path, what.to_owned()));
        }
    };
    let meta = beneath::describe(fd.as_fd()).map_err(io("stat the lock", path))?;
    if meta.kind != FileType::RegularFile {
        return Err(not_a_lock(path, kind_name(meta.kind).to_owned()));
    }
    if meta.links > 1 {
        return Err(not_a_lock(
            path,
            format!(
                "a file with {} hard links (one may be a file elsewhere)",
                meta.links
            ),
        ));
    }
    Ok(File::from(fd))
}

fn not_a_lock(path: &Path, what: String) -> LockError {
    LockError::NotALockFile {
        path: path.display().to_string(),
        what,
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

    #[tokio::test]
    async fn anything_but_a_regular_file_at_lock_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let lock = repo.join("lock");
        let refused = |e: LockError, what: &str| {
            assert!(matches!(e, LockError::NotALockFile { .. }), "{e:?}");
            let e = e.to_string();
            assert!(
                e.contains(&lock.display().to_string())
                    && e.contains(what)
                    && e.contains("remove it"),
                "{e}"
            );
        };
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        refused(
            acquire(&repo, "backup", Duration::ZERO).await.unwrap_err(),
            "symbolic link",
        );
        std::fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(dir.path().join("absent"), &lock).unwrap();
        refused(
            acquire(&repo, "backup", Duration::ZERO).await.unwrap_err(),
            "symbolic link",
        );
        assert!(
            !dir.path().join("absent").exists(),
            "created through a dangling link"
        );
        std::fs::remove_file(&lock).unwrap();
        std::fs::hard_link(&victim, &lock).unwrap();
        refused(
            acquire(&repo, "backup", Duration::ZERO).await.unwrap_err(),
            "2 hard links",
        );
        std::fs::remove_file(&lock).unwrap();
        std::fs::create_dir(&lock).unwrap();
        refused(
            acquire(&repo, "backup", Duration::ZERO).await.unwrap_err(),
            "a directory",
        );
        std::fs::remove_dir(&lock).unwrap();
        nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            acquire(&repo, "backup", Duration::ZERO),
        )
        .await
        .expect("a FIFO at lock must not hang the writer");
        refused(e.unwrap_err(), "a FIFO");
        std::fs::remove_file(&lock).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(&lock).unwrap();
        refused(
            acquire(&repo, "backup", Duration::ZERO).await.unwrap_err(),
            "a socket",
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
    }

    #[tokio::test]
    async fn a_root_reached_through_a_symlink_is_the_operators_and_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("repo")).unwrap();
        let held = acquire(&dir.path().join("repo"), "backup", Duration::ZERO)
            .await
            .unwrap();
        let body = std::fs::read_to_string(dir.path().join("real/lock")).unwrap();
        assert!(body.contains("\"command\":\"backup\""), "{body}");
        drop(held);
    }
}
