//! Reading an artifact back: storage → size/sha256 check → age → zstd →
//! plaintext, on a blocking thread and one more: age (and the sha256 of
//! the stored bytes) on one, zstd on the other, as `age -d | zstd -d` does.
//!
//! The sizes come from the signed manifest and bound every read: the stored
//! bytes stop with an error as soon as more than `stored_bytes` arrive, the
//! plaintext as soon as it grows past `plaintext_bytes` (and each is
//! refused at its end if short) — so an archive replaced by a zstd bomb
//! writes nothing past the size the manifest records, beside a target or
//! in `$TMPDIR`, before the sha256 at its end would have caught it. The
//! stored bytes are hashed as they are read and compared with the manifest
//! at the end; age authenticates every chunk and zstd checks its frame
//! checksum. Any of them failing stops the copy with a message naming the
//! artifact, and callers only rename results into place after
//! [`copy_archive`] returned `Ok`.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::model::manifest::Artifact;
use crate::pipeline::{Bounded, Expected, SizeError};

/// The stored bytes or the plaintext of an artifact are not what the
/// manifest says.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Mismatch {
    /// The stored bytes are longer or shorter than `stored_bytes`.
    #[error("{label}: {}", stored_text(source))]
    Stored {
        /// The artifact, as [`label`] names it.
        label: String,
        /// How the size differs.
        #[source]
        source: SizeError,
    },
    /// The stored bytes' sha256 is not the manifest's.
    #[error("{label}: sha256 {got} differs from the manifest's: the archive is damaged")]
    Digest {
        /// The artifact, as [`label`] names it.
        label: String,
        /// The sha256 read, hex.
        got: String,
    },
    /// A piece of the stored bytes is not what the manifest's digest of
    /// it says (or there is no digest for it).
    #[error(
        "{label}: piece {index} of the stored bytes is not what the manifest says \
         (its sha256 differs): the archive was replaced or is damaged; nothing of that piece was read"
    )]
    Piece {
        /// The artifact, as [`label`] names it.
        label: String,
        /// The piece, from 0.
        index: usize,
    },
    /// The plaintext grows past, or ends short of, what the manifest says
    /// (or, where it records no plaintext size, past the bound for it).
    #[error("{label}: {}", plaintext_text(*expected, source))]
    Plaintext {
        /// The artifact, as [`label`] names it.
        label: String,
        /// What the plaintext had to be.
        expected: Expected,
        /// How it differs.
        #[source]
        source: SizeError,
    },
}

fn stored_text(e: &SizeError) -> String {
    match e {
        SizeError::TooLong { limit } => format!(
            "the archive is longer than the {limit} bytes the manifest says: \
             it was replaced or is damaged; reading stopped there"
        ),
        SizeError::TooShort { got, expected } => format!(
            "the archive is {got} bytes, the manifest says {expected}: it is truncated or damaged"
        ),
    }
}

fn plaintext_text(expected: Expected, e: &SizeError) -> String {
    match (expected, e) {
        (Expected::Exactly(_), SizeError::TooLong { limit }) => format!(
            "the archive decompresses to more than the {limit} bytes the manifest says \
             (plaintext_bytes): it was replaced or is damaged; nothing past that was written"
        ),
        (Expected::AtMost(_), SizeError::TooLong { limit }) => format!(
            "the archive decompresses to more than {limit} bytes, more than kompose-dr \
             writes for it: it was replaced or is damaged; nothing past that was written"
        ),
        (_, SizeError::TooShort { got, expected }) => format!(
            "the archive decompresses to {got} bytes, the manifest says {expected} \
             (plaintext_bytes): it is truncated or damaged"
        ),
    }
}

/// Reads the stored bytes of an artifact through, hashing and counting:
/// stops with an error as soon as more than the manifest's `stored_bytes`
/// arrive, and at EOF compares the size and sha256 with the manifest. It
/// also carries what the plaintext must hold, for [`copy_archive`].
pub struct VerifyingReader<R> {
    inner: Bounded<R>,
    hasher: Sha256,
    expected_sha: Option<String>,
    plaintext: Expected,
    label: String,
    progress: Box<dyn FnMut(u64) + Send>,
    /// Whether the bytes are hashed and compared at EOF: all but a
    /// [`crate::restore::CheckedCopy`]'s, whose digest was checked as it
    /// was written, and those read by pieces.
    hashing: bool,
    /// Reading by pieces, each checked before a byte of it is given out.
    pieces: Option<PieceState>,
    checked: bool,
    failed: Option<Mismatch>,
    /// The store's own read error, when reading it failed (a connection
    /// cut, a disk error): not a sign of a damaged archive. Shared with
    /// the decrypting stage, which reads through age.
    store_failed: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps the stored bytes of `artifact`; `progress` gets the stored
    /// bytes read so far. The plaintext must be exactly the artifact's
    /// `plaintext_bytes`.
    pub fn new(inner: R, artifact: &Artifact, progress: Box<dyn FnMut(u64) + Send>) -> Self {
        VerifyingReader {
            inner: Bounded::new(inner, Expected::Exactly(artifact.stored_bytes)),
            hasher: Sha256::new(),
            expected_sha: artifact.sha256.clone(),
            plaintext: Expected::Exactly(artifact.plaintext_bytes),
            label: label(artifact),
            progress,
            hashing: true,
            pieces: None,
            checked: false,
            failed: None,
            store_failed: std::sync::Arc::default(),
        }
    }

    /// A reader of the stored bytes that gives out nothing of a piece
    /// before the whole piece checked out against its digest in the
    /// manifest (sizes bounded as [`VerifyingReader::new`]); `None` for an
    /// artifact whose manifest records no pieces.
    pub fn by_pieces(
        inner: R,
        artifact: &Artifact,
        progress: Box<dyn FnMut(u64) + Send>,
    ) -> Option<Self> {
        let p = artifact.pieces.as_ref()?;
        let mut reader = Self::new(inner, artifact, progress);
        reader.hashing = false;
        reader.pieces = Some(PieceState {
            bytes: usize::try_from(p.bytes).ok()?,
            digests: p.sha256.clone(),
            index: 0,
            piece: Vec::new(),
            at: 0,
            broken: false,
        });
        Some(reader)
    }

    /// A reader of a private copy whose digest already checked out
    /// ([`crate::restore::CheckedCopy`]): its size and plaintext are
    /// still bounded by the manifest, its sha256 is not computed again.
    pub(super) fn of_checked_copy(inner: R, artifact: &Artifact) -> Self {
        let mut reader = Self::new(inner, artifact, Box::new(|_| {}));
        reader.hashing = false;
        reader
    }

    /// The same reader also hashing the stored bytes whole and comparing
    /// them at the end (a [`VerifyingReader::by_pieces`] does not): for
    /// `check --read-data`, which checks every digest the manifest holds.
    pub fn and_whole(mut self) -> Self {
        self.hashing = true;
        self
    }

    /// The same reader with another bound on the plaintext: for an object
    /// whose manifest records no plaintext size (the facts sidecar),
    /// `Expected::AtMost` a documented constant.
    pub fn with_plaintext(mut self, plaintext: Expected) -> Self {
        self.plaintext = plaintext;
        self
    }

    /// What the plaintext must hold.
    pub fn plaintext(&self) -> Expected {
        self.plaintext
    }

    /// Why the stored bytes were refused, if they were (whatever wrapped
    /// the I/O error on its way out).
    pub fn failure(&self) -> Option<&Mismatch> {
        self.failed.as_ref()
    }

    /// What a failed read of the stored bytes was: the store's own failure
    /// if it failed, else damage (age or the bytes themselves).
    fn read_failed(&self) -> ReadError {
        read_error(
            &self.label,
            &self.store_failed,
            &"the archive could not be read",
        )
    }

    fn fail(&mut self, m: Mismatch) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, m.clone());
        self.failed = Some(m);
        e
    }
}

/// A failed read of `label`'s stored bytes: the store's own failure if
/// `cut` holds one, else damage saying `what`.
fn read_error(
    label: &str,
    cut: &std::sync::OnceLock<String>,
    what: &dyn std::fmt::Display,
) -> ReadError {
    match cut.get() {
        Some(why) => ReadError::Store(label.to_owned(), why.clone()),
        None => ReadError::Damaged(label.to_owned(), what.to_string()),
    }
}

/// Where a [`VerifyingReader::by_pieces`] is.
struct PieceState {
    /// The size of a piece.
    bytes: usize,
    /// Their digests, hex.
    digests: Vec<String>,
    /// The next piece's index.
    index: usize,
    /// The piece being given out (checked).
    piece: Vec<u8>,
    /// How much of it was given out.
    at: usize,
    /// A read failed: nothing more is given out.
    broken: bool,
}

/// `postgres/x (data/…/x.dump.zst.age)`, for messages.
pub fn label(a: &Artifact) -> String {
    format!(
        "{} ({})",
        a.source,
        a.path.as_deref().unwrap_or("no archive")
    )
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        if self.pieces.is_none() {
            return self.read_stored(buf);
        }
        if self.pieces.as_ref().is_some_and(|p| p.broken) {
            return Err(io::Error::other(format!(
                "{}: an earlier read of the archive failed",
                self.label
            )));
        }
        let at_end = self.pieces.as_ref().is_some_and(|p| p.at == p.piece.len());
        if at_end {
            self.next_piece()?;
        }
        let p = self.pieces.as_mut().expect("pieces checked above");
        let n = buf.len().min(p.piece.len() - p.at);
        buf[..n].copy_from_slice(&p.piece[p.at..p.at + n]);
        p.at += n;
        Ok(n)
    }
}

impl<R: Read> VerifyingReader<R> {
    /// Reads the next piece whole and checks it against its digest;
    /// leaves it empty at the end of the stored bytes.
    fn next_piece(&mut self) -> io::Result<()> {
        let mut p = self.pieces.take().expect("reading by pieces");
        p.piece.resize(p.bytes, 0);
        let mut filled = 0;
        let read = loop {
            if filled == p.bytes {
                break Ok(());
            }
            match self.read_stored(&mut p.piece[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        p.at = 0;
        if read.is_err() {
            // Nothing of a piece that was not read whole goes out, and
            // the reader stays broken.
            p.piece.clear();
            p.broken = true;
            self.pieces = Some(p);
            return read;
        }
        p.piece.truncate(filled);
        let index = p.index;
        // The end must come after the last piece; a piece must have its
        // digest.
        let checked = match filled {
            0 => index == p.digests.len(),
            _ => p
                .digests
                .get(index)
                .is_some_and(|want| hex::encode(Sha256::digest(&p.piece)) == *want),
        };
        if filled > 0 {
            p.index += 1;
        }
        if !checked {
            p.piece.clear();
        }
        self.pieces = Some(p);
        if !checked {
            let label = self.label.clone();
            return Err(self.fail(Mismatch::Piece { label, index }));
        }
        Ok(())
    }

    /// Reads the stored bytes as they are (sizes bounded, hashed whole
    /// unless read by pieces).
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                return match self.inner.failure() {
                    Some(source) => Err(self.fail(Mismatch::Stored {
                        label: self.label.clone(),
                        source,
                    })),
                    None => {
                        // `InvalidData`: the store says the data changed
                        // under the read (an S3 object replaced), which is
                        // no mere failure to read.
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::InvalidData
                        ) {
                            let _ = self.store_failed.set(e.to_string());
                        }
                        Err(e)
                    }
                };
            }
        };
        if n > 0 {
            if self.hashing {
                self.hasher.update(&buf[..n]);
            }
            (self.progress)(self.inner.bytes_read());
        } else if !buf.is_empty() && !self.checked && self.hashing {
            self.checked = true;
            let got = hex::encode(self.hasher.clone().finalize());
            if self.expected_sha.as_deref() != Some(got.as_str()) {
                let label = self.label.clone();
                return Err(self.fail(Mismatch::Digest { label, got }));
            }
        }
        Ok(n)
    }
}

/// Why an archive could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The identity does not fit.
    #[error(
        "{0}: the identity cannot decrypt it (is encryption.identity_file the key whose public key is in kompose-dr.json?)"
    )]
    WrongKey(String),
    /// age or zstd failed.
    #[error("{0}: the archive is damaged or truncated: {1}")]
    Damaged(String, String),
    /// The stored bytes or the plaintext are not what the manifest says
    /// (size, sha256); reading stopped at the size it records.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Reading the stored bytes from the repository failed (a connection
    /// cut, a disk error): nothing says the archive itself is damaged.
    #[error(
        "{0}: reading it from the repository failed ({1}); nothing says the archive is damaged: \
         check the repository's connection or disk, then run it again"
    )]
    Store(String, String),
    /// Writing the plaintext failed.
    #[error("{0}: writing the restored data failed: {1}")]
    Output(String, io::Error),
}

/// Decrypts and decompresses the archive read from `stored` into `out`,
/// checking age authentication, zstd checksums and the manifest's size and
/// sha256, and writing no more plaintext than the manifest records (see
/// [`VerifyingReader::plaintext`]). Returns the plaintext bytes written.
pub fn copy_archive<R: Read + Send, W: Write>(
    stored: VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    out: &mut W,
) -> Result<u64, ReadError> {
    let mut stored = stored;
    copy_archive_from(&mut stored, identities, out)
}

/// [`copy_archive`] into a program that may stop reading once it has what
/// it needs (pg_restore of some sections): when writing to it fails, the
/// rest of the stored bytes is still read and checked, and a mismatch
/// there is the error, not the write's.
pub fn copy_archive_to_program<R: Read + Send, W: Write>(
    stored: VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    out: &mut W,
) -> Result<u64, ReadError> {
    let mut stored = stored;
    let result = copy_archive_from(&mut stored, identities, out);
    if let Err(ReadError::Output(..)) = &result
        && io::copy(&mut stored, &mut io::sink()).is_err()
    {
        return Err(match stored.failure() {
            Some(m) => ReadError::Mismatch(m.clone()),
            None => stored.read_failed(),
        });
    }
    result
}

fn copy_archive_from<R: Read + Send, W: Write>(
    stored: &mut VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    out: &mut W,
) -> Result<u64, ReadError> {
    let result = decode_into(stored, identities, out);
    if let Err(ReadError::Mismatch(Mismatch::Plaintext {
        source: SizeError::TooShort { .. },
        ..
    })) = &result
    {
        // The compressed data ended: the rest of the stored bytes is short,
        // and their own check says more when it fails (a replaced archive).
        let _ = io::copy(stored, &mut io::sink());
    }
    match (result, stored.failure()) {
        // The plaintext bound stopped the writing: that is what is said,
        // whether or not the first stage, reading ahead, also reached the
        // end of stored bytes that are short of the manifest's.
        (
            Err(
                e @ ReadError::Mismatch(Mismatch::Plaintext {
                    source: SizeError::TooLong { .. },
                    ..
                }),
            ),
            _,
        ) => Err(e),
        // age or zstd wrapped the stored bytes' own error: that one says
        // what is wrong.
        (Err(ReadError::Damaged(..) | ReadError::Mismatch(_)), Some(m)) => {
            Err(ReadError::Mismatch(m.clone()))
        }
        (result, _) => result,
    }
}

/// How many pieces of decrypted bytes wait between the two stages of
/// [`decode_into`]: the bound on what the split holds in memory.
const STAGE_DEPTH: usize = 4;

/// Decrypts on a thread of its own while this one decompresses and
/// writes: age (with the stored bytes' sha256) and zstd each take a core,
/// as `age -d | zstd -d` does, with a bounded channel between them.
fn decode_into<R: Read + Send, W: Write>(
    stored: &mut VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    out: &mut W,
) -> Result<u64, ReadError> {
    let label = stored.label.clone();
    let plaintext = stored.plaintext;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(STAGE_DEPTH);
        let producer = s.spawn(|| decrypt_into(stored, identities, tx));
        let mut channel = ChannelReader::new(rx);
        let consumed = decompress_from(&mut channel, plaintext, out, &label);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(ReadError::Damaged(
                label.clone(),
                "the decrypting thread stopped".into(),
            ))
        });
        match (consumed, produced) {
            (
                Err(e @ (ReadError::Output(..) | ReadError::Mismatch(Mismatch::Plaintext { .. }))),
                _,
            )
            | (Err(e), Ok(())) => Err(e),
            // zstd refused bytes it was given before their stream ended:
            // damage, whatever the store did while the first stage read ahead.
            (Err(e @ ReadError::Damaged(..)), Err(ReadError::Store(..))) if !channel.ended => {
                Err(e)
            }
            (_, Err(e)) => Err(e),
            (Ok(n), Ok(())) => Ok(n),
        }
    })
}

/// The first stage: the stored bytes through age, in pieces of
/// [`crate::pipeline::CHUNK`] sent to `tx`, then the stored bytes read to
/// their end so that their size and sha256 are checked. A receiver that
/// stopped (the second stage failed) ends it quietly: its error stands.
fn decrypt_into<R: Read>(
    stored: &mut VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<(), ReadError> {
    let label = stored.label.clone();
    // A failure of the store's read surfaces through age: said as such.
    let cut = stored.store_failed.clone();
    let damaged = |e: &dyn std::fmt::Display| read_error(&label, &cut, e);
    let decryptor = age::Decryptor::new(&mut *stored).map_err(|e| damaged(&e))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => ReadError::WrongKey(label.clone()),
            other => damaged(&other),
        })?;
    loop {
        let mut piece = vec![0u8; crate::pipeline::CHUNK];
        let (n, failed) = fill(&mut reader, &mut piece);
        // What decrypted before a failure goes on first, as one thread
        // would have decompressed it: a bomb is stopped by its plaintext
        // bound, not named by whatever the stored bytes do after it.
        if n > 0 {
            piece.truncate(n);
            if tx.send(piece).is_err() {
                return Ok(());
            }
        }
        if let Some(e) = failed {
            return Err(damaged(&e));
        }
        if n == 0 {
            break;
        }
    }
    drop(reader);
    io::copy(stored, &mut io::sink()).map_err(|e| damaged(&e))?;
    Ok(())
}

/// Reads until `buf` is full, the input ends or fails: the bytes read,
/// and the failure if it failed.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// The pieces of the first stage as a reader; it ends when the first
/// stage does.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    /// The first stage ended (its last piece was taken).
    ended: bool,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            piece: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(piece) => (self.piece, self.at) = (piece, 0),
                Err(_) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The second stage: zstd over the decrypted bytes into `out`, no more
/// than `plaintext` allows, and nothing after the frame. A plaintext
/// that ends short reads the first stage to its end, so that the stored
/// bytes' own check (a replaced archive) is made.
fn decompress_from<W: Write>(
    input: &mut ChannelReader,
    plaintext: Expected,
    out: &mut W,
    label: &str,
) -> Result<u64, ReadError> {
    let damaged = |e: &dyn std::fmt::Display| ReadError::Damaged(label.to_owned(), e.to_string());
    let decoder = zstd::stream::read::Decoder::new(&mut *input).map_err(|e| damaged(&e))?;
    let mut z = Bounded::new(decoder, plaintext);
    let mut buf = vec![0u8; crate::pipeline::CHUNK];
    let failed = loop {
        let n = match z.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        };
        out.write_all(&buf[..n])
            .map_err(|e| ReadError::Output(label.to_owned(), e))?;
    };
    if let Some(e) = failed {
        let source = z.failure();
        drop(z);
        return Err(match source {
            Some(source) => {
                if matches!(source, SizeError::TooShort { .. }) {
                    let _ = io::copy(input, &mut io::sink());
                }
                ReadError::Mismatch(Mismatch::Plaintext {
                    label: label.to_owned(),
                    expected: plaintext,
                    source,
                })
            }
            None => damaged(&e),
        });
    }
    let written = z.bytes_read();
    // Nothing may follow the zstd frame.
    let mut rest = z.into_inner().finish();
    let trailing = io::copy(&mut rest, &mut io::sink()).map_err(|e| damaged(&e))?;
    if trailing != 0 {
        return Err(damaged(&format!(
            "{trailing} bytes follow the end of the compressed data"
        )));
    }
    out.flush()
        .map_err(|e| ReadError::Output(label.to_owned(), e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::fixtures::artifact;

    type Ids = Vec<Box<dyn age::Identity + Send + Sync>>;

    /// `age(zstd(plain))` to a fresh key, as the stock tools write it.
    fn archive(plain: &[u8]) -> (Vec<u8>, Ids) {
        let id = age::x25519::Identity::generate();
        (archive_to(plain, &id), vec![Box::new(id)])
    }

    fn archive_to(plain: &[u8], id: &age::x25519::Identity) -> Vec<u8> {
        encrypt_to(&zstd::encode_all(plain, 3).unwrap(), id)
    }

    /// `age(bytes)` to `id`.
    fn encrypt_to(bytes: &[u8], id: &age::x25519::Identity) -> Vec<u8> {
        let r = id.to_public();
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(bytes).unwrap();
        w.finish().unwrap();
        out
    }

    /// An artifact whose stored figures are those of `stored`, and whose
    /// plaintext is `plaintext_bytes`.
    fn figures(stored: &[u8], plaintext_bytes: u64) -> Artifact {
        let mut a = artifact("files/acme", "2026-11-27T03:00:05Z", true);
        a.stored_bytes = stored.len() as u64;
        a.sha256 = Some(hex::encode(Sha256::digest(stored)));
        a.plaintext_bytes = plaintext_bytes;
        a
    }

    /// Counts what is read from the store.
    struct Counting<'a>(&'a [u8], std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        }
    }

    fn restore(stored: &[u8], a: &Artifact, ids: &Ids) -> (Vec<u8>, Result<u64, ReadError>) {
        let r = VerifyingReader::new(stored, a, Box::new(|_| {}));
        let mut out = Vec::new();
        let res = copy_archive(r, ids, &mut out);
        (out, res)
    }

    /// `figures` with the digests of `stored`'s pieces of `bytes`.
    fn in_pieces(stored: &[u8], plaintext_bytes: u64, bytes: usize) -> Artifact {
        let mut a = figures(stored, plaintext_bytes);
        a.pieces = Some(crate::model::manifest::Pieces {
            bytes: bytes as u64,
            sha256: stored
                .chunks(bytes)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect(),
        });
        a
    }

    #[test]
    fn read_by_pieces_an_archive_reads_back_and_a_changed_piece_gives_out_nothing_of_itself() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (stored, ids) = archive(&plain);
        for bytes in [4096, 65536, stored.len(), stored.len() + 1] {
            let a = in_pieces(&stored, plain.len() as u64, bytes);
            let r = VerifyingReader::by_pieces(&stored[..], &a, Box::new(|_| {})).unwrap();
            let mut out = Vec::new();
            assert_eq!(copy_archive(r, &ids, &mut out).unwrap(), plain.len() as u64);
            assert_eq!(out, plain, "pieces of {bytes}");
        }
        // A byte changed in the third piece: the first two are given out,
        // not a byte of the third.
        let a = in_pieces(&stored, plain.len() as u64, 4096);
        let mut bad = stored.clone();
        bad[2 * 4096 + 100] ^= 1;
        let mut r = VerifyingReader::by_pieces(&bad[..], &a, Box::new(|_| {})).unwrap();
        let mut raw = Vec::new();
        let e = r.read_to_end(&mut raw).unwrap_err();
        assert_eq!(raw, stored[..2 * 4096], "only the pieces that checked out");
        assert!(
            matches!(r.failure(), Some(Mismatch::Piece { index: 2, .. })),
            "{e}"
        );
        assert!(e.to_string().contains("the manifest says"), "{e}");
        // Through the decoder, the error is the piece's.
        let r = VerifyingReader::by_pieces(&bad[..], &a, Box::new(|_| {})).unwrap();
        let res = copy_archive(r, &ids, &mut Vec::new());
        assert!(
            matches!(
                res,
                Err(ReadError::Mismatch(Mismatch::Piece { index: 2, .. }))
            ),
            "{res:?}"
        );
        // Another archive of the same size whose pieces do not fit.
        let (other, _) = archive(&plain);
        let mut r = VerifyingReader::by_pieces(&other[..], &a, Box::new(|_| {})).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(
            r.failure(),
            Some(Mismatch::Piece { index: 0, .. })
        ));
        // Cut short, or one byte longer: the size says so.
        for cut in [
            &stored[..stored.len() - 1],
            &[&stored[..], b"x"].concat()[..],
        ] {
            let mut r = VerifyingReader::by_pieces(cut, &a, Box::new(|_| {})).unwrap();
            assert!(r.read_to_end(&mut Vec::new()).is_err());
            assert!(r.failure().is_some());
        }
    }

    #[test]
    fn read_by_pieces_a_failing_store_an_early_stop_and_the_whole_digest_are_checked() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (stored, ids) = archive(&plain);
        let a = in_pieces(&stored, plain.len() as u64, 4096);
        // The store fails in the middle of a piece: nothing of that piece
        // goes out, then or on a later read.
        let failing = io::Read::chain(&stored[..4096 + 10], FAILING);
        let mut r = VerifyingReader::by_pieces(failing, &a, Box::new(|_| {})).unwrap();
        let mut first = vec![0u8; 4096];
        r.read_exact(&mut first).unwrap();
        assert_eq!(first, stored[..4096]);
        assert!(r.read(&mut [0u8; 100]).is_err());
        assert!(
            r.read(&mut [0u8; 100]).is_err(),
            "a later read gives out nothing"
        );
        // A program that stops reading early: the rest is still checked,
        // and a changed piece there is the error.
        let early = |stored: &[u8]| {
            let r = VerifyingReader::by_pieces(stored, &a, Box::new(|_| {})).unwrap();
            copy_archive_to_program(r, &ids, &mut &mut [0u8; 1000][..])
        };
        assert!(
            matches!(early(&stored), Err(ReadError::Output(..))),
            "{:?}",
            early(&stored)
        );
        let mut tail = stored.clone();
        let last = tail.len() - 1;
        tail[last] ^= 1;
        let res = early(&tail);
        assert!(
            matches!(res, Err(ReadError::Mismatch(Mismatch::Piece { .. }))),
            "{res:?}"
        );
        // Read by pieces and whole (`check --read-data`): a whole digest
        // that differs is refused too.
        let mut wrong = a.clone();
        wrong.sha256 = Some("0".repeat(64));
        let r = VerifyingReader::by_pieces(&stored[..], &wrong, Box::new(|_| {})).unwrap();
        assert!(
            copy_archive(r, &ids, &mut io::sink()).is_ok(),
            "pieces alone"
        );
        let r = VerifyingReader::by_pieces(&stored[..], &wrong, Box::new(|_| {})).unwrap();
        let res = copy_archive(r.and_whole(), &ids, &mut io::sink());
        assert!(
            matches!(res, Err(ReadError::Mismatch(Mismatch::Digest { .. }))),
            "{res:?}"
        );
        // No pieces recorded: no such reader.
        let plain_figures = figures(&stored, plain.len() as u64);
        assert!(
            VerifyingReader::by_pieces(&stored[..], &plain_figures, Box::new(|_| {})).is_none()
        );
    }

    #[test]
    fn a_store_failing_mid_read_is_said_to_be_the_store_not_a_damaged_archive() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (stored, ids) = archive(&plain);
        let a = in_pieces(&stored, plain.len() as u64, 4096);
        let cut = || io::Read::chain(&stored[..3 * 4096 + 10], FAILING);
        let readers = [
            VerifyingReader::by_pieces(cut(), &a, Box::new(|_| {})).unwrap(),
            VerifyingReader::new(cut(), &a, Box::new(|_| {})),
        ];
        for r in readers {
            let e = copy_archive(r, &ids, &mut io::sink()).unwrap_err();
            assert!(matches!(&e, ReadError::Store(..)), "{e:?}");
            let msg = e.to_string();
            for want in [
                "reading it from the repository failed (cut)",
                "run it again",
            ] {
                assert!(msg.contains(want), "{want}: {msg}");
            }
            assert!(!msg.contains("damaged or"), "{msg}");
        }
        // A changed piece before the cut is what is said.
        let mut bad = stored.clone();
        bad[4096 + 100] ^= 1;
        let r = VerifyingReader::by_pieces(
            io::Read::chain(&bad[..3 * 4096 + 10], FAILING),
            &a,
            Box::new(|_| {}),
        )
        .unwrap();
        let e = copy_archive(r, &ids, &mut io::sink()).unwrap_err();
        assert!(
            matches!(e, ReadError::Mismatch(Mismatch::Piece { index: 1, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_replaced_object_a_damaged_frame_and_an_unchecked_tail_are_not_a_mere_store_failure() {
        let plain: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (stored, ids) = archive(&plain);
        let a = in_pieces(&stored, plain.len() as u64, 4096);
        // The store says the object was replaced: not "run it again".
        let r = VerifyingReader::new(
            io::Read::chain(&stored[..5000], CHANGED),
            &a,
            Box::new(|_| {}),
        );
        let e = copy_archive(r, &ids, &mut io::sink()).unwrap_err();
        assert!(matches!(e, ReadError::Damaged(..)), "{e:?}");
        // zstd refuses the first bytes it is given while the first stage,
        // reading ahead, meets a cut: the damage is what is said.
        let id = age::x25519::Identity::generate();
        let mut z = zstd::encode_all(&plain[..], 1).unwrap();
        z[0] ^= 0xff;
        let bad = encrypt_to(&z, &id);
        let ids2: Ids = vec![Box::new(id)];
        let b = figures(&bad, plain.len() as u64);
        for cut in [bad.len() / 2, bad.len() - 10] {
            let r =
                VerifyingReader::new(io::Read::chain(&bad[..cut], FAILING), &b, Box::new(|_| {}));
            let e = copy_archive(r, &ids2, &mut io::sink()).unwrap_err();
            assert!(matches!(e, ReadError::Damaged(..)), "cut at {cut}: {e:?}");
        }
        // A program that stopped reading early, and the store fails on
        // the rest: the rest was not checked, and that is the error.
        let r = VerifyingReader::by_pieces(
            io::Read::chain(&stored[..stored.len() - 10], FAILING),
            &a,
            Box::new(|_| {}),
        )
        .unwrap();
        let e = copy_archive_to_program(r, &ids, &mut &mut [0u8; 1000][..]).unwrap_err();
        assert!(matches!(e, ReadError::Store(..)), "{e:?}");
    }

    /// A store whose read fails with this kind of error.
    struct FailsWith(io::ErrorKind, &'static str);

    impl Read for FailsWith {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(self.0, self.1))
        }
    }

    /// A store that fails (a connection cut).
    const FAILING: FailsWith = FailsWith(io::ErrorKind::ConnectionReset, "cut");

    /// A store that says the data changed under the read (an S3 object
    /// replaced).
    const CHANGED: FailsWith = FailsWith(io::ErrorKind::InvalidData, "replaced");

    #[test]
    fn an_archive_as_the_manifest_says_reads_back() {
        let plain = b"hello world ".repeat(10_000);
        let (stored, ids) = archive(&plain);
        let a = figures(&stored, plain.len() as u64);
        let (out, res) = restore(&stored, &a, &ids);
        assert_eq!(res.unwrap(), plain.len() as u64);
        assert_eq!(out, plain);
    }

    #[test]
    fn a_zstd_bomb_writes_no_more_than_the_manifest_says() {
        // The manifest's stored figures fit the bomb (a writer of the store
        // who also forged them): only the plaintext size stops it.
        let (stored, ids) = archive(&vec![0u8; 32 << 20]);
        assert!(stored.len() < 1 << 20);
        let a = figures(&stored, 1000);
        let (out, res) = restore(&stored, &a, &ids);
        assert_eq!(out.len(), 1000, "nothing past plaintext_bytes is written");
        let e = res.unwrap_err();
        assert!(
            matches!(
                &e,
                ReadError::Mismatch(Mismatch::Plaintext {
                    source: SizeError::TooLong { limit: 1000 },
                    ..
                })
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        for want in ["files/acme (data/x/files/acme)", "more than the 1000 bytes"] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }

    /// A bomb in place of a longer archive: its stored bytes end short of
    /// the manifest's, and the decrypting stage, reading ahead, gets there
    /// first; what is said is still the bound that stopped the writing.
    #[test]
    fn a_bomb_shorter_than_the_archive_is_named_by_its_plaintext() {
        // More than one age chunk: the bomb, then noise.
        let mut plain = vec![0u8; 32 << 20];
        plain.extend((0..200_000).map(|_| rand::random::<u8>()));
        let (stored, ids) = archive(&plain);
        assert!(stored.len() > 128 << 10);
        let mut a = figures(&stored, 1000);
        a.stored_bytes = stored.len() as u64 * 4;
        for _ in 0..20 {
            let (out, res) = restore(&stored, &a, &ids);
            assert_eq!(out.len(), 1000);
            assert!(
                matches!(
                    res,
                    Err(ReadError::Mismatch(Mismatch::Plaintext {
                        source: SizeError::TooLong { limit: 1000 },
                        ..
                    }))
                ),
                "{res:?}"
            );
        }
    }

    #[test]
    fn stored_bytes_past_the_manifest_are_never_read() {
        let plain: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (stored, ids) = archive(&plain);
        let mut a = figures(&stored, plain.len() as u64);
        a.stored_bytes = 1000;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = VerifyingReader::new(Counting(&stored, count.clone()), &a, Box::new(|_| {}));
        let mut out = Vec::new();
        let e = copy_archive(r, &ids, &mut out).unwrap_err();
        assert!(
            matches!(
                &e,
                ReadError::Mismatch(Mismatch::Stored {
                    source: SizeError::TooLong { limit: 1000 },
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("longer than the 1000 bytes the manifest says"),
            "{e}"
        );
        assert!(count.load(std::sync::atomic::Ordering::SeqCst) <= 1001);
        assert!(out.len() <= plain.len());
    }

    #[test]
    fn a_short_plaintext_fails_at_its_end() {
        let (stored, ids) = archive(b"hello");
        let a = figures(&stored, 6);
        let (_, res) = restore(&stored, &a, &ids);
        let e = res.unwrap_err();
        assert!(
            matches!(
                &e,
                ReadError::Mismatch(Mismatch::Plaintext {
                    source: SizeError::TooShort {
                        got: 5,
                        expected: 6
                    },
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_replaced_archive_is_named_by_its_stored_figures_first() {
        // The manifest's figures are the real archive's; a shorter, valid
        // archive to the same key was put in its place: its plaintext ends
        // short, and the stored size says why.
        let id = age::x25519::Identity::generate();
        let plain: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let real = archive_to(&plain, &id);
        let a = figures(&real, plain.len() as u64);
        let forged = archive_to(b"{}", &id);
        let ids: Ids = vec![Box::new(id)];
        let (out, res) = restore(&forged, &a, &ids);
        assert!(out.len() <= 2);
        let e = res.unwrap_err();
        assert!(
            matches!(
                &e,
                ReadError::Mismatch(Mismatch::Stored {
                    source: SizeError::TooShort { .. },
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("the manifest says"), "{e}");
    }

    /// The decrypting stage's failures reach the caller as themselves,
    /// not as the decompressing stage's "truncated" that follows them.
    #[test]
    fn a_wrong_key_and_a_flipped_byte_are_named_across_the_stages() {
        let plain: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (stored, _) = archive(&plain);
        let a = figures(&stored, plain.len() as u64);
        let other: Ids = vec![Box::new(age::x25519::Identity::generate())];
        let (_, res) = restore(&stored, &a, &other);
        assert!(matches!(res, Err(ReadError::WrongKey(_))), "{res:?}");

        let (mut stored, ids) = archive(&plain);
        let mid = stored.len() / 2;
        stored[mid] ^= 0x40;
        let mut a = figures(&stored, plain.len() as u64);
        // The manifest's digest fits the damaged bytes: only age sees it.
        let (out, res) = restore(&stored, &a, &ids);
        assert!(matches!(res, Err(ReadError::Damaged(..))), "{res:?}");
        assert!(out.len() < plain.len());
        // With the manifest's digest of the real archive, the digest is
        // not reached (age stops first) but the size still fits: Damaged.
        a.sha256 = Some("0".repeat(64));
        let (_, res) = restore(&stored, &a, &ids);
        assert!(
            matches!(res, Err(ReadError::Damaged(..) | ReadError::Mismatch(_))),
            "{res:?}"
        );
    }

    #[test]
    fn a_sidecar_is_bounded_by_the_limit_given() {
        let (stored, ids) = archive(&vec![1u8; 5000]);
        let a = figures(&stored, 0);
        let r = VerifyingReader::new(&stored[..], &a, Box::new(|_| {}))
            .with_plaintext(Expected::AtMost(10_000));
        assert_eq!(copy_archive(r, &ids, &mut io::sink()).unwrap(), 5000);
        let r = VerifyingReader::new(&stored[..], &a, Box::new(|_| {}))
            .with_plaintext(Expected::AtMost(4096));
        let e = copy_archive(r, &ids, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("more than 4096 bytes"), "{e}");
    }
}
