//! The byte pipeline: source → zstd → age → sha256 → storage, and back.
//!
//! Writing is a chain of bounded stages joined by channels of at most
//! [`DEPTH`] pieces of [`CHUNK`] bytes, so memory does not grow with the size
//! of the data and a slow stage pushes back on the ones before it:
//!
//! ```text
//! input ──▶ zstd thread ──▶ age thread ──▶ sha256 + fan-out to every sink
//! ```
//!
//! Compression and encryption run on blocking threads, off the async
//! workers. The archive format is plain `age(zstd(payload))` with zstd frame
//! checksums, so `age -d | zstd -d` opens it.
//!
//! [`encode`] does not make anything visible: it returns an [`Encoded`]
//! whose sinks the caller commits only after it has checked that the source
//! itself succeeded (a child's exit status, for instance).

mod bounded;
mod chunks;
pub mod tar;

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

pub use bounded::{Bounded, Expected, SizeError};
pub use chunks::ChunkWriter;

use crate::model::manifest::Pieces;
use crate::storage::{ObjectWriter, StorageError};

/// Size of the pieces that flow between stages.
pub const CHUNK: usize = 256 * 1024;
/// Pieces buffered between two stages.
pub const DEPTH: usize = 4;

/// The input of the pipeline: pieces of plaintext, or the error that ended
/// the source. The end of the channel is the end of the data.
pub type Input = mpsc::Receiver<io::Result<Bytes>>;

/// How archives are written.
#[derive(Clone)]
pub struct EncodeSettings {
    /// zstd level, 1 to 19 as validated in `[compression]`: higher means
    /// smaller archives and more CPU.
    pub level: i32,
    /// age recipients; every archive is readable by each of them.
    pub recipients: Vec<age::x25519::Recipient>,
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed while being read.
    #[error("reading the source failed: {0}")]
    Source(io::Error),
    /// zstd or age failed.
    #[error("compressing or encrypting failed: {0}")]
    Encode(io::Error),
    /// Every sink failed; the first error is kept.
    #[error("{0}")]
    Storage(StorageError),
}

/// One sink of an [`Encoded`] stream: still open, or failed.
pub enum SinkState {
    /// Everything was written; not yet visible.
    Open(Box<dyn ObjectWriter>),
    /// Writing failed (already aborted).
    Failed(StorageError),
}

/// A fully encoded archive, written to its sinks but not yet committed.
pub struct Encoded {
    /// Bytes read from the source.
    pub plaintext_bytes: u64,
    /// Bytes of the stored archive.
    pub stored_bytes: u64,
    /// sha256 of the stored archive, hex.
    pub sha256: String,
    /// The sha256 of each of its pieces (`None` past [`Pieces::MAX`]).
    pub pieces: Option<Pieces>,
    /// The sinks, in the order given to [`encode`].
    pub sinks: Vec<SinkState>,
}

impl Encoded {
    /// Makes the archive visible in every sink that is still open; returns
    /// per sink the result (sinks that failed while writing keep their error).
    pub async fn commit(self) -> Vec<Result<(), StorageError>> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for s in self.sinks {
            out.push(match s {
                SinkState::Open(w) => w.finish().await,
                SinkState::Failed(e) => Err(e),
            });
        }
        out
    }

    /// Discards the archive in every sink.
    pub async fn abort(self) {
        for s in self.sinks {
            if let SinkState::Open(w) = s {
                w.abort().await;
            }
        }
    }
}

/// Feeds an [`AsyncRead`] into a new pipeline input, in [`CHUNK`] pieces.
/// Returns the input and the task that pumps it.
pub fn input_from_reader<R>(mut reader: R) -> (Input, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(DEPTH);
    let task = tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let mut eof = false;
            while buf.len() < CHUNK {
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            if !buf.is_empty() && tx.send(Ok(buf.freeze())).await.is_err() {
                return;
            }
            if eof {
                return;
            }
        }
    });
    (rx, task)
}

/// A pipeline input fed by blocking code through an [`io::Write`]: returns
/// the writer (for a blocking thread) and the input. Call
/// [`ChunkWriter::close`] at the end, or [`ChunkWriter::fail`] to end the
/// input with an error.
pub fn input_from_writer() -> (ChunkWriter<io::Result<Bytes>>, Input) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (ChunkWriter::new(tx, Ok), rx)
}

/// A pipeline input holding one in-memory buffer.
pub fn input_from_bytes(data: Bytes) -> Input {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(CHUNK));
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Streams `input` through zstd and age into every sink.
///
/// Returns once the input has ended and every byte has reached the sinks.
/// A sink that fails (or arrives failed) is aborted and recorded; the
/// others go on. If the source or the encoder fails, or every sink fails,
/// all sinks are aborted and an error is returned.
///
/// With `pieces`, the stored bytes' pieces are hashed too
/// ([`Encoded::pieces`]): for an archive a restore reads by pieces.
pub async fn encode(
    mut input: Input,
    settings: &EncodeSettings,
    sinks: Vec<SinkState>,
    pieces: bool,
) -> Result<Encoded, PipelineError> {
    let (plain_tx, plain_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (zst_tx, zst_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (enc_tx, enc_rx) = mpsc::channel::<Bytes>(DEPTH);

    let level = settings.level;
    let compressor = tokio::task::spawn_blocking(move || compress(plain_rx, zst_tx, level));
    let recipients = settings.recipients.clone();
    let encryptor = tokio::task::spawn_blocking(move || encrypt(zst_rx, enc_tx, &recipients));
    // Dropping `encode` (Ctrl-C, SIGTERM) must drop the sinks now, while the
    // runtime runs, so that unfinished uploads are aborted.
    let sink_task =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fan_out(enc_rx, sinks, pieces)));

    // Pump the input into the compressor.
    let mut plaintext_bytes = 0u64;
    let mut source_error = None;
    while let Some(piece) = input.recv().await {
        match piece {
            Ok(b) => {
                plaintext_bytes += b.len() as u64;
                if plain_tx.send(b).await.is_err() {
                    break; // a later stage failed; its error is reported below
                }
                // Data moved: the source is alive (see process::stall).
                crate::process::stall::progress();
            }
            Err(e) => {
                source_error = Some(e);
                break;
            }
        }
    }
    drop(plain_tx);
    drop(input);

    let compressed = compressor.await.expect("compressor does not panic");
    let encrypted = encryptor.await.expect("encryptor does not panic");
    let (sinks, stored_bytes, sha256, pieces) = sink_task.await.expect("sink task does not panic");
    let encoded = Encoded {
        plaintext_bytes,
        stored_bytes,
        sha256,
        pieces,
        sinks,
    };

    // When every repository failed, the encoder stopped because of that:
    // the storage error is the one that says what to fix.
    let all_sinks_failed = !encoded
        .sinks
        .iter()
        .any(|s| matches!(s, SinkState::Open(_)));
    let failure = if let Some(e) = source_error {
        Some(PipelineError::Source(e))
    } else if all_sinks_failed {
        encoded.sinks.iter().find_map(|s| match s {
            SinkState::Failed(e) => Some(PipelineError::Storage(clone_err(e))),
            SinkState::Open(_) => None,
        })
    } else if let Err(e) = compressed.and(encrypted) {
        Some(PipelineError::Encode(e))
    } else {
        None
    };
    match failure {
        Some(err) => {
            encoded.abort().await;
            Err(err)
        }
        None => Ok(encoded),
    }
}

fn clone_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::Io {
            op,
            location,
            source,
        } => StorageError::Io {
            op,
            location: location.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::NotFound(s) => StorageError::NotFound(s.clone()),
        StorageError::AlreadyExists(s) => StorageError::AlreadyExists(s.clone()),
        StorageError::Remote {
            op,
            location,
            message,
        } => StorageError::Remote {
            op,
            location: location.clone(),
            message: message.clone(),
        },
        StorageError::TooLarge { location, message } => StorageError::TooLarge {
            location: location.clone(),
            message: message.clone(),
        },
        StorageError::BadKey(k) => StorageError::BadKey(k.clone()),
        StorageError::NotAnObject { location, message } => StorageError::NotAnObject {
            location: location.clone(),
            message: message.clone(),
        },
    }
}

fn compress(mut rx: mpsc::Receiver<Bytes>, tx: mpsc::Sender<Bytes>, level: i32) -> io::Result<()> {
    let mut z = zstd::stream::Encoder::new(ChunkWriter::new(tx, |b| b), level)?;
    z.include_checksum(true)?;
    while let Some(b) = rx.blocking_recv() {
        z.write_all(&b)?;
    }
    z.finish()?.close()
}

fn encrypt(
    mut rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    recipients: &[age::x25519::Recipient],
) -> io::Result<()> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(io::Error::other)?;
    let mut w = encryptor.wrap_output(ChunkWriter::new(tx, |b| b))?;
    while let Some(b) = rx.blocking_recv() {
        w.write_all(&b)?;
    }
    w.finish()?.close()
}

async fn fan_out(
    mut rx: mpsc::Receiver<Bytes>,
    mut states: Vec<SinkState>,
    pieces: bool,
) -> (Vec<SinkState>, u64, String, Option<Pieces>) {
    let mut hasher = Sha256::new();
    let mut pieces = pieces.then(|| PieceHasher::new(piece_bytes()));
    let mut stored = 0u64;
    while let Some(b) = rx.recv().await {
        hasher.update(&b);
        if let Some(p) = &mut pieces {
            p.update(&b);
        }
        stored += b.len() as u64;
        for state in states.iter_mut() {
            if let SinkState::Open(w) = state
                && let Err(e) = w.write(b.clone()).await
            {
                tracing::warn!(error = %e, "a repository failed while writing; the others go on");
                let SinkState::Open(w) = std::mem::replace(state, SinkState::Failed(e)) else {
                    unreachable!()
                };
                w.abort().await;
            }
        }
        if !states.iter().any(|s| matches!(s, SinkState::Open(_))) {
            break; // nobody left to write to: stop, upstream sees a closed channel
        }
    }
    (
        states,
        stored,
        hex::encode(hasher.finalize()),
        pieces.and_then(PieceHasher::finish),
    )
}

/// The size of the pieces whose digests an archive's manifest records
/// (a restore holds one in memory while it checks it).
pub const PIECE: u64 = 16 * 1024 * 1024;

/// [`PIECE`], or in a debug build `KOMPOSE_DR_TEST_PIECE` when set and
/// a size a manifest may record (tests make archives of many pieces from
/// a small database).
fn piece_bytes() -> u64 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("KOMPOSE_DR_TEST_PIECE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| Pieces::SIZES.contains(n))
    {
        return n;
    }
    PIECE
}

/// Hashes stored bytes piece by piece.
struct PieceHasher {
    bytes: u64,
    hasher: Sha256,
    filled: u64,
    done: Vec<String>,
    over: bool,
}

impl PieceHasher {
    fn new(bytes: u64) -> Self {
        PieceHasher {
            bytes,
            hasher: Sha256::new(),
            filled: 0,
            done: Vec::new(),
            over: false,
        }
    }

    /// Takes the next stored bytes.
    fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.over {
            let take = b.len().min((self.bytes - self.filled) as usize);
            self.hasher.update(&b[..take]);
            self.filled += take as u64;
            b = &b[take..];
            if self.filled == self.bytes {
                self.done.push(hex::encode(self.hasher.finalize_reset()));
                self.filled = 0;
                if self.done.len() > Pieces::MAX {
                    // Too many to record: none will be.
                    self.done = Vec::new();
                    self.over = true;
                }
            }
        }
    }

    /// The digests, the last (shorter) piece's included; `None` for more
    /// than [`Pieces::MAX`] pieces.
    fn finish(mut self) -> Option<Pieces> {
        if self.filled > 0 {
            self.done.push(hex::encode(self.hasher.finalize_reset()));
        }
        if self.over || self.done.len() > Pieces::MAX {
            return None;
        }
        Some(Pieces {
            bytes: self.bytes,
            sha256: self.done,
        })
    }
}

/// Opens an archive for reading: age-decrypts with `identities` and
/// zstd-decompresses, verifying age authentication and zstd checksums as
/// it goes. The plaintext must hold `plaintext` bytes: reading stops with a
/// [`SizeError`] as soon as more arrive (a zstd bomb decompresses no
/// further), and at the end if an exact size was not reached.
pub fn open_archive<'a, R: Read + 'a>(
    stored: R,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    plaintext: Expected,
) -> io::Result<Bounded<impl Read + 'a>> {
    let decryptor = age::Decryptor::new(stored).map_err(io::Error::other)?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(io::Error::other)?;
    Ok(Bounded::new(zstd::stream::Decoder::new(reader)?, plaintext))
}

/// Decodes a whole in-memory archive (for small ones such as the facts):
/// its plaintext may be at most [`MAX_SMALL_OBJECT`](crate::storage::MAX_SMALL_OBJECT)
/// bytes, since the manifest records no plaintext size for a sidecar.
pub fn decode_all(
    stored: &[u8],
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> io::Result<Vec<u8>> {
    let limit = crate::storage::MAX_SMALL_OBJECT;
    let mut out = Vec::new();
    // A small archive that decompresses to gigabytes is not a facts file.
    open_archive(stored, identities, Expected::AtMost(limit))?
        .read_to_end(&mut out)
        .map_err(|e| match SizeError::of(&e) {
            Some(SizeError::TooLong { .. }) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it decompresses to more than {} MiB", limit >> 20),
            ),
            _ => e,
        })?;
    Ok(out)
}

/// Loads the age identities from the configured identity file, which is
/// refused unread while group or others can read it.
pub fn load_identities(
    config: &crate::model::config::Config,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, crate::error::InvalidInput> {
    let path = config
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.clone())
        .ok_or_else(|| {
            crate::error::InvalidInput(format!(
                "configuration {}: set [encryption] identity_file to the age identity (private key) to read archives",
                config.path.display()
            ))
        })?;
    // Refused unread while group or others can read it, as ssh does.
    let body = crate::model::config::keyfile::read(&path, "identity file")
        .map_err(|e| crate::error::InvalidInput(e.to_string()))?;
    let file = age::IdentityFile::from_buffer(body.as_slice()).map_err(|e| {
        crate::error::InvalidInput(format!(
            "cannot read the identity file {}: {e}",
            path.display()
        ))
    })?;
    let ids = file.into_identities().map_err(|e| {
        crate::error::InvalidInput(format!(
            "the identity file {} is not usable: {e}",
            path.display()
        ))
    })?;
    if ids.is_empty() {
        return Err(crate::error::InvalidInput(format!(
            "the identity file {} holds no identity",
            path.display()
        )));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
