//! Reading an artifact back: storage → sha256/size check → age → zstd →
//! plaintext, on a blocking thread.
//!
//! The stored bytes are hashed as they are read and compared with the
//! manifest at the end; age authenticates every chunk and zstd checks its
//! frame checksum. Any of them failing stops the copy with a message naming
//! the artifact, and callers only rename results into place after
//! [`copy_archive`] returned `Ok`.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::model::manifest::Artifact;

/// Reads through, hashing and counting; at EOF compares with the manifest.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected_len: u64,
    expected_sha: Option<String>,
    label: String,
    progress: Box<dyn FnMut(u64) + Send>,
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps the stored bytes of `artifact`; `progress` gets the stored
    /// bytes read so far.
    pub fn new(inner: R, artifact: &Artifact, progress: Box<dyn FnMut(u64) + Send>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_len: artifact.stored_bytes,
            expected_sha: artifact.sha256.clone(),
            label: label(artifact),
            progress,
            checked: false,
        }
    }
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
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            (self.progress)(self.read);
        } else if !buf.is_empty() && !self.checked {
            self.checked = true;
            if self.read != self.expected_len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the archive is {} bytes, the manifest says {}: it is truncated or damaged",
                        self.label, self.read, self.expected_len
                    ),
                ));
            }
            let got = hex::encode(self.hasher.clone().finalize());
            if self.expected_sha.as_deref() != Some(got.as_str()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: sha256 {got} differs from the manifest's: the archive is damaged",
                        self.label
                    ),
                ));
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
    /// age, zstd or the sha256 check failed.
    #[error("{0}: the archive is damaged or truncated: {1}")]
    Damaged(String, String),
    /// Writing the plaintext failed.
    #[error("{0}: writing the restored data failed: {1}")]
    Output(String, io::Error),
}

/// Decrypts and decompresses the archive read from `stored` into `out`,
/// checking age authentication, zstd checksums and the manifest's size and
/// sha256. Returns the plaintext bytes written.
pub fn copy_archive<R: Read, W: Write>(
    stored: VerifyingReader<R>,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    out: &mut W,
) -> Result<u64, ReadError> {
    let label = stored.label.clone();
    let damaged = |e: &dyn std::fmt::Display| ReadError::Damaged(label.clone(), e.to_string());
    let mut stored = stored;
    let decryptor = age::Decryptor::new(&mut stored).map_err(|e| damaged(&e))?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => ReadError::WrongKey(label.clone()),
            other => damaged(&other),
        })?;
    let mut z = zstd::stream::read::Decoder::new(reader).map_err(|e| damaged(&e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        let n = match z.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(damaged(&e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| ReadError::Output(label.clone(), e))?;
        written += n as u64;
    }
    // Nothing may follow the zstd frame; then read the stored bytes to the
    // end so that the size and sha256 are checked.
    let mut rest = z.finish();
    let trailing = io::copy(&mut rest, &mut io::sink()).map_err(|e| damaged(&e))?;
    if trailing != 0 {
        return Err(damaged(&format!(
            "{trailing} bytes follow the end of the compressed data"
        )));
    }
    drop(rest);
    io::copy(&mut stored, &mut io::sink()).map_err(|e| damaged(&e))?;
    out.flush()
        .map_err(|e| ReadError::Output(label.clone(), e))?;
    Ok(written)
}
