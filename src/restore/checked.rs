//! The checked copy of an archive: its stored bytes copied into a private,
//! unnamed temporary file while their size and sha256 are compared with the
//! signed manifest, before any program sees a byte of them.
//!
//! Archives whose content runs code when restored (pg_dump archives:
//! functions, materialized views; a base backup, a WAL file) go through
//! this, so that not a byte of a replaced archive reaches the program. It
//! costs the archive's size in temporary space, no more (the copy stays
//! compressed and encrypted). Reading and hashing run on one thread,
//! writing the copy on another, with a few pieces of fixed size between
//! them.

use std::io::{self, Read, Seek, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{RestoreError, open_artifact, open_raw, stream};
use crate::model::manifest::Artifact;
use crate::repository::Repository;

/// A private, unnamed copy of an artifact's stored bytes that checked out
/// whole against the manifest ([`verified_copy`]). Nothing else can open
/// it, so reading it again checks its size and plaintext, not its digest.
#[derive(Debug)]
pub struct CheckedCopy(std::fs::File);

impl CheckedCopy {
    /// A second handle on the same copy (sharing its offset).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(CheckedCopy)
    }

    /// Goes back to the copy's start.
    pub fn rewind(&mut self) -> io::Result<()> {
        self.0.rewind()
    }

    /// A reader of the copy from where it is, bounded by `artifact`'s
    /// stored and plaintext sizes.
    pub fn reader(self, artifact: &Artifact) -> stream::VerifyingReader<std::fs::File> {
        stream::VerifyingReader::of_checked_copy(self.0, artifact)
    }
}

/// A reader of an archive's stored bytes that gives out only bytes that
/// checked out ([`Checked::reader`]).
pub type CheckedReader = stream::VerifyingReader<Box<dyn Read + Send>>;

/// How a restore reads an archive whose content runs code: no byte that
/// did not check out against the signed manifest reaches the program.
#[derive(Debug)]
pub enum Checked {
    /// From the store itself, piece by piece: the manifest records each
    /// piece's digest, and none of a piece is given out before the whole
    /// piece checked out (no copy, no pass of its own).
    Pieces,
    /// From a checked copy of the whole archive ([`verified_copy`]), for a
    /// snapshot whose manifest records no pieces.
    Copy(CheckedCopy),
}

impl Checked {
    /// How `artifact` is read: by pieces when its manifest records them,
    /// else from a checked copy made now.
    pub async fn prepare(
        repository: &Repository,
        artifact: &Artifact,
        pb: &indicatif::ProgressBar,
    ) -> Result<Self, RestoreError> {
        if artifact.pieces.is_some() {
            return Ok(Checked::Pieces);
        }
        Ok(Checked::Copy(
            verified_copy(repository, artifact, pb).await?,
        ))
    }

    /// A reader of the whole archive from its start (again, if called
    /// again).
    pub async fn reader(
        &self,
        repository: &Repository,
        artifact: &Artifact,
    ) -> Result<CheckedReader, RestoreError> {
        let label = || stream::label(artifact);
        match self {
            Checked::Pieces => {
                let raw: Box<dyn Read + Send> = Box::new(open_raw(repository, artifact).await?);
                stream::VerifyingReader::by_pieces(raw, artifact, Box::new(|_| {})).ok_or_else(
                    || RestoreError::Failed(format!("{}: the manifest records no pieces", label())),
                )
            }
            Checked::Copy(copy) => {
                let mut copy = copy.try_clone().map_err(RestoreError::io(format!(
                    "{}: cannot read the checked copy again",
                    label()
                )))?;
                copy.rewind().map_err(RestoreError::io(format!(
                    "{}: cannot read the checked copy again",
                    label()
                )))?;
                let file: Box<dyn Read + Send> = Box::new(copy.0);
                Ok(stream::VerifyingReader::of_checked_copy(file, artifact))
            }
        }
    }
}

/// The stored bytes of `artifact`, checked, as a reader of their private
/// copy ([`verified_copy`]; its plaintext is bounded by `plaintext_bytes`
/// in turn).
pub async fn spool_artifact(
    repository: &Repository,
    artifact: &Artifact,
    pb: &indicatif::ProgressBar,
) -> Result<stream::VerifyingReader<std::fs::File>, RestoreError> {
    Ok(verified_copy(repository, artifact, pb)
        .await?
        .reader(artifact))
}

/// Copies the stored bytes of `artifact` into a private, unnamed
/// temporary file (under `$TMPDIR`, gone when closed), checking their size
/// and sha256 against the manifest on the way (stopping as soon as more
/// than `stored_bytes` arrive); the copy is at its start. A caller that
/// drops this future stops the copying thread at its next write.
pub async fn verified_copy(
    repository: &Repository,
    artifact: &Artifact,
    pb: &indicatif::ProgressBar,
) -> Result<CheckedCopy, RestoreError> {
    let started = std::time::Instant::now();
    let mut stored = open_artifact(repository, artifact, pb).await?;
    let label = stream::label(artifact);
    let abandoned = Abandoned::default();
    let flag = abandoned.0.clone();
    tokio::task::spawn_blocking(move || -> Result<_, RestoreError> {
        let mut spool = tempfile::tempfile().map_err(RestoreError::io(
            "cannot create a private temporary file ($TMPDIR)",
        ))?;
        let out = UnlessAbandoned {
            out: &mut spool,
            abandoned: flag,
        };
        // No more than `stored_bytes` is read, so none is spooled.
        if let Err(e) = copy_beside(&mut stored, out) {
            return Err(match stored.failure() {
                // It names the archive and what differs from the manifest.
                Some(m) => RestoreError::Archive(stream::ReadError::Mismatch(m.clone())),
                None => {
                    RestoreError::io(format!("{label}: cannot spool the archive to $TMPDIR"))(e)
                }
            });
        }
        tracing::debug!(
            archive = %label,
            seconds = started.elapsed().as_secs_f64(),
            "the archive checked out against the manifest"
        );
        spool.rewind().map_err(RestoreError::io(format!(
            "{label}: cannot spool the archive"
        )))?;
        Ok(CheckedCopy(spool))
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?
}

/// The size of the pieces [`copy_beside`] passes from reading to writing.
const PIECE: usize = 1 << 20;

/// How many pieces wait to be written: with the one read and the one
/// written, the bound on what [`copy_beside`] holds in memory.
const DEPTH: usize = 4;

/// Copies `from` to its end into `to`, reading on this thread and writing
/// on another, so that what reading costs (a hash, a download) and what
/// writing costs overlap. The first error, reading or writing, ends it.
fn copy_beside<R: Read, W: Write + Send>(from: &mut R, to: W) -> io::Result<()> {
    std::thread::scope(|s| {
        let (full, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(DEPTH);
        let (spare, spares) = std::sync::mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
        let writer = s.spawn(move || -> io::Result<()> {
            let mut to = to;
            for piece in pieces {
                to.write_all(&piece)?;
                let _ = spare.try_send(piece);
            }
            to.flush()
        });
        let read = (|| -> io::Result<()> {
            loop {
                let mut piece = spares.try_recv().unwrap_or_default();
                if fill(from, &mut piece)? == 0 {
                    return Ok(());
                }
                if full.send(piece).is_err() {
                    // The writer stopped: its error says why.
                    return Ok(());
                }
            }
        })();
        drop(full);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writing thread stopped")));
        read.and(written)
    })
}

/// Reads into `piece` until it holds [`PIECE`] bytes or `from` ends;
/// returns how many it holds.
fn fill<R: Read>(from: &mut R, piece: &mut Vec<u8>) -> io::Result<usize> {
    piece.resize(PIECE, 0);
    let mut n = 0;
    while n < PIECE {
        match from.read(&mut piece[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    piece.truncate(n);
    Ok(n)
}

/// Set when dropped: tells [`verified_copy`]'s thread that nobody waits
/// for its copy any more.
#[derive(Default)]
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A writer that fails once its copy is [`Abandoned`].
struct UnlessAbandoned<W> {
    out: W,
    abandoned: Arc<AtomicBool>,
}

impl<W: Write> Write for UnlessAbandoned<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(io::Error::other("the restore gave up on this copy"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_nobody_waits_for_stops_at_its_next_write() {
        let abandoned = Abandoned::default();
        let mut out = UnlessAbandoned {
            out: Vec::new(),
            abandoned: abandoned.0.clone(),
        };
        out.write_all(b"kept").unwrap();
        drop(abandoned);
        assert!(out.write_all(b"more").is_err());
        assert_eq!(out.out, b"kept");
    }

    #[test]
    fn the_copy_beside_is_whole_and_stops_at_the_first_error() {
        // Pieces, a short last one, and nothing.
        for len in [0, 1, PIECE - 1, PIECE, 3 * PIECE + 17, 9 * PIECE] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut out = Vec::new();
            copy_beside(&mut data.as_slice(), &mut out).unwrap();
            assert_eq!(out.len(), data.len());
            assert!(out == data, "{len} bytes");
        }
        // A reader that fails after a while: its error, not success.
        let failing = io::Read::chain(&[1u8; 3 * PIECE][..], FailingReader);
        let err = copy_beside(&mut { failing }, io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A writer that fails: its error, and reading stops.
        let mut endless = io::repeat(1);
        let err = copy_beside(&mut endless, &mut [0u8; 10][..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }

    struct FailingReader;

    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::InvalidData, "bad"))
        }
    }
}
