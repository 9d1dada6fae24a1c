//! The verified plaintext spool a database is restored from with
//! `pg_restore --jobs`.
//!
//! A pg_dump archive runs code when restored, so not a byte of it reaches
//! pg_restore before the whole archive checked out against the signed
//! manifest. Checking needs the whole archive somewhere first; instead of
//! a copy of the stored (encrypted, compressed) bytes that is read again
//! and decoded while pg_restore runs, the one pass over the stored bytes
//! checks them *and* decodes them into a private plaintext file, the
//! seekable file `pg_restore --jobs` needs: the data of several tables
//! loads at once, and indexes and constraints are built in parallel. The
//! spool then pays for itself.
//!
//! The file lives in a private directory (0700) under `$TMPDIR`, is
//! written 0600, and is removed with the directory when the restore ends,
//! however it ends. When `$TMPDIR` has no room for the plaintext, the
//! restore streams from an encrypted spool as before, one job, and says so.

use std::path::{Path, PathBuf};

use super::super::stream::{self, copy_archive};
use super::super::{ReadyItem, RestoreContext, RestoreError, open_stored, progress_bar};

/// Headroom kept free besides the plaintext: 64 MiB, and 1/32 of it.
fn headroom(bytes: u64) -> u64 {
    (64 << 20) + bytes / 32
}

/// A verified plaintext dump in a private directory, removed on drop.
pub(super) struct PlainSpool {
    /// The private directory (removed with the file when dropped).
    dir: tempfile::TempDir,
    /// The plaintext dump.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

impl PlainSpool {
    /// The private directory holding the file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Free bytes for an unprivileged writer in the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether `dir` has room for `bytes` of plaintext and the headroom; says
/// why not in the log.
fn has_room(dir: &Path, bytes: u64, label: &str) -> bool {
    match free_bytes(dir) {
        Some(free) if free >= bytes.saturating_add(headroom(bytes)) => true,
        Some(free) => {
            tracing::warn!(
                archive = %label,
                tmpdir = %dir.display(),
                needed_mib = bytes >> 20,
                free_mib = free >> 20,
                "no room for the plaintext spool: the dump streams into one pg_restore job instead (set TMPDIR to a larger directory for --jobs)"
            );
            false
        }
        // An unknown filesystem: try, a full disk fails the spool cleanly.
        None => true,
    }
}

/// Checks the item's archive whole and decodes it into a private plaintext
/// file, or `None` when `$TMPDIR` has no room for it. Nothing of an
/// archive that does not check out is left behind.
pub(super) async fn spool_plain(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
) -> Result<Option<PlainSpool>, RestoreError> {
    let artifact = &item.choice.artifact;
    let label = stream::label(artifact);
    let tmp = std::env::temp_dir();
    if !has_room(&tmp, artifact.plaintext_bytes, &label) {
        return Ok(None);
    }
    let dir = crate::process::private::tempdir().map_err(RestoreError::io(format!(
        "cannot create a private directory in {}: set TMPDIR to a writable directory",
        tmp.display()
    )))?;
    let path = dir.path().join("dump");
    let file = create_private(&path)?;
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let cancel = ctx.cancel.clone();
    let decoded = tokio::task::spawn_blocking(move || -> Result<u64, stream::ReadError> {
        use std::io::Write;
        let file = Cancellable {
            inner: file,
            cancel,
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let bytes = copy_archive(stored, &ids, &mut out)?;
        out.flush()
            .map_err(|e| stream::ReadError::Output(String::new(), e))?;
        Ok(bytes)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    pb.finish_and_clear();
    let bytes = decoded.map_err(|e| match e {
        stream::ReadError::Output(_, io) => RestoreError::io(format!(
            "{label}: cannot write the plaintext spool in {} (full? set TMPDIR to a larger directory)",
            tmp.display()
        ))(io),
        other => other.into(),
    })?;
    Ok(Some(PlainSpool { dir, path, bytes }))
}

/// A writer that fails once the restore is cancelled (not with
/// `Interrupted`: `write_all` retries that), so that decoding into the
/// spool stops at the next piece instead of running to the end.
struct Cancellable<W> {
    inner: W,
    cancel: tokio_util::sync::CancellationToken,
}

impl<W: std::io::Write> std::io::Write for Cancellable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("the restore was interrupted"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Creates `path` for writing, 0600, failing if it exists.
fn create_private(path: &Path) -> Result<std::fs::File, RestoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(RestoreError::io(format!(
            "cannot create {}",
            path.display()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_plaintext_and_its_headroom() {
        let dir = tempfile::tempdir().unwrap();
        assert!(has_room(dir.path(), 1 << 20, "x"));
        assert!(!has_room(dir.path(), u64::MAX / 2, "x"));
        assert_eq!(headroom(0), 64 << 20);
        assert_eq!(headroom(32 << 20), (64 << 20) + (1 << 20));
    }
}
