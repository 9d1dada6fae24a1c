//! The plaintext spool a database's post-data section is restored from
//! with `pg_restore --jobs`.
//!
//! A pg_dump archive runs code when restored, so not a byte of it reaches
//! pg_restore before the whole archive checked out against the signed
//! manifest (a verified copy of the stored bytes, still encrypted). The
//! pre-data and data sections then stream into one pg_restore as the copy
//! decodes, the way `age -d | zstd -d | pg_restore` does. The post-data
//! section (indexes, constraints, triggers: a single pg_restore builds one
//! index after another) runs afterwards with `pg_restore --jobs`, which
//! needs a seekable file but reads nothing of it past the table of
//! contents at its start. So the same decoding pass writes the start of
//! the plaintext here ([`Tee`], up to [`PREFIX`]): the spool costs no pass
//! of its own and no room or disk writes for the data. Whether a prefix
//! holds the whole table of contents is asked of pg_restore itself
//! (`--list`) before it is used.
//!
//! The file lives in a private directory (0700) under `$TMPDIR`, is
//! written 0600, and is removed with the directory when the restore ends,
//! however it ends. When `$TMPDIR` has no room for it, one pg_restore
//! takes the whole stream, and the log says so.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::super::RestoreError;
use super::super::stream;

/// How much of the plaintext the spool keeps: the table of contents of
/// any but a huge schema (about a kilobyte an object).
pub const PREFIX: u64 = 64 << 20;

/// [`PREFIX`]; a debug build (the tests') takes another from
/// `KOMPOSE_DR_TEST_SPOOL_PREFIX`, to reach both sides of it with a
/// small database.
fn prefix() -> u64 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("KOMPOSE_DR_TEST_SPOOL_PREFIX")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    PREFIX
}

/// The start of a verified plaintext dump in a private directory, removed
/// on drop.
pub(super) struct PlainSpool {
    /// The private directory (removed with the file when dropped).
    dir: tempfile::TempDir,
    /// The plaintext dump, or its first `kept` bytes.
    pub path: PathBuf,
    /// The whole plaintext's size in bytes.
    pub bytes: u64,
    /// How much of the plaintext the file keeps at most ([`PREFIX`]).
    pub kept: u64,
}

impl PlainSpool {
    /// The private directory holding the file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An empty spool for `artifact`'s plaintext and the file to write it
    /// through, or `None` when `$TMPDIR` has no room for it (said in the
    /// log).
    pub fn create(
        artifact: &crate::model::manifest::Artifact,
    ) -> Result<Option<(PlainSpool, std::fs::File)>, RestoreError> {
        let label = stream::label(artifact);
        let tmp = std::env::temp_dir();
        let kept = prefix();
        if !has_room(&tmp, artifact.plaintext_bytes.min(kept), &label) {
            return Ok(None);
        }
        let dir = crate::process::private::tempdir().map_err(RestoreError::io(format!(
            "cannot create a private directory in {}: set TMPDIR to a writable directory",
            tmp.display()
        )))?;
        let path = dir.path().join("dump");
        let file = create_private(&path)?;
        let spool = PlainSpool {
            dir,
            path,
            bytes: 0,
            kept,
        };
        Ok(Some((spool, file)))
    }
}

/// Free bytes for an unprivileged writer in the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Headroom kept free besides the spool: 64 MiB, and 1/32 of it.
fn headroom(bytes: u64) -> u64 {
    (64 << 20) + bytes / 32
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
                needed_mib = bytes.saturating_add(headroom(bytes)) >> 20,
                free_mib = free >> 20,
                "no room for the plaintext spool: the dump streams into one pg_restore job instead (set TMPDIR to a larger directory for --jobs)"
            );
            false
        }
        // An unknown filesystem: try, a full disk drops the spool cleanly.
        None => true,
    }
}

/// A writer that writes everything to `out` and the first `limit` bytes
/// to a copy, until that fails: the copy is then dropped and said in the
/// log, and `out` goes on (the copy is an optimisation, `out` is the
/// restore).
pub(super) struct Tee<W> {
    /// Where everything goes (pg_restore's stdin).
    pub out: W,
    /// The copy, while it writes.
    copy: Option<BufWriter<std::fs::File>>,
    /// What is left to copy.
    left: u64,
}

impl<W: std::io::Write> Tee<W> {
    /// `out`, with a copy of the first `limit` bytes to `copy` if given.
    pub fn new(out: W, copy: Option<std::fs::File>, limit: u64) -> Tee<W> {
        Tee {
            out,
            copy: copy.map(|f| BufWriter::with_capacity(1 << 20, f)),
            left: limit,
        }
    }

    /// Flushes the copy; whether it holds everything it should (`false`
    /// without one).
    pub fn finish(&mut self) -> bool {
        use std::io::Write;
        match self.copy.as_mut().map(BufWriter::flush) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.drop_copy(&e);
                false
            }
            None => false,
        }
    }

    /// Whether the copy reached its limit (it may hold only the start).
    pub fn cut(&self) -> bool {
        self.left == 0
    }

    /// Drops the copy after `e`, said in the log.
    fn drop_copy(&mut self, e: &std::io::Error) {
        tracing::warn!(
            error = %e,
            tmpdir = %std::env::temp_dir().display(),
            "cannot write the plaintext spool (full? set TMPDIR to a larger directory): it is dropped"
        );
        self.copy = None;
    }
}

impl<W: std::io::Write> std::io::Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        let take = usize::try_from(self.left).map_or(n, |left| left.min(n));
        if take > 0
            && let Some(copy) = self.copy.as_mut()
        {
            match copy.write_all(&buf[..take]) {
                Ok(()) => self.left -= take as u64,
                Err(e) => self.drop_copy(&e),
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
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

    #[test]
    fn a_copy_that_cannot_be_written_is_dropped_and_the_stream_goes_on() {
        use std::io::{Read, Seek, Write};
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        // A whole copy.
        let mut file = tempfile::tempfile().unwrap();
        let mut tee = Tee::new(Vec::new(), Some(file.try_clone().unwrap()), u64::MAX);
        tee.write_all(&data[..100]).unwrap();
        tee.write_all(&data[100..]).unwrap();
        assert!(tee.finish());
        assert_eq!(tee.out, data);
        let mut copied = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut copied).unwrap();
        assert_eq!(copied, data);
        // A full disk (/dev/full), failing in a write and in the last flush.
        for first in [data.len(), 100] {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let mut tee = Tee::new(Vec::new(), Some(full), u64::MAX);
            tee.write_all(&data[..first]).unwrap();
            tee.write_all(&data[first..]).unwrap();
            assert!(!tee.finish());
            assert_eq!(tee.out, data);
        }
        // A prefix: the first bytes only, and the stream whole.
        let mut file = tempfile::tempfile().unwrap();
        let mut tee = Tee::new(Vec::new(), Some(file.try_clone().unwrap()), 1000);
        for piece in data.chunks(333) {
            tee.write_all(piece).unwrap();
        }
        assert!(tee.finish());
        assert_eq!(tee.out, data);
        let mut copied = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut copied).unwrap();
        assert_eq!(copied, &data[..1000]);
        // No copy asked for.
        let mut tee = Tee::new(Vec::new(), None, u64::MAX);
        tee.write_all(&data).unwrap();
        assert!(!tee.finish());
    }
}
