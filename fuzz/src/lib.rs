//! What the fuzz targets share: a throw-away age identity and minisign key
//! (the seed corpora were made with them by a real `kompose-dr init` and
//! `backup`), and the layers a target can start its input at.
//!
//! age authenticates every chunk, so bytes the fuzzer invents never reach
//! zstd or the parsers behind it. Targets that read archives therefore take
//! a first byte, [`Layer`], saying whether the rest is the stored archive,
//! the zstd stream inside it (the harness encrypts it to [`RECIPIENT`]) or
//! the plaintext (the harness compresses and encrypts it).
//!
//! These keys protect nothing: they are published here on purpose.

use std::io::Write;
use std::sync::OnceLock;

/// The age identity the seed archives are encrypted to (test key only).
pub const IDENTITY: &str =
    "AGE-SECRET-KEY-1YD5XJHE64DK8R6RKKTHP2JJZN3MUCMX95JR7RSG72NYUKME3XH9SHVFV8S";

/// Its public key.
pub const RECIPIENT: &str = "age1dyr3rmm5d59umwg8xk025rty9hl4qnkyzks47lnq97ym25v0juvss229h6";

/// The minisign public key the seed manifests and marker are signed with.
pub const SIGNING_PUBLIC_KEY: &str = "RWQg+3BLtkU9qMbfx3eOy/3ghZnGadzsecZzU6kAlNxZyRIq/+yUpS6K";

/// The id of the seed snapshot.
pub const SEED_SNAPSHOT: &str = "20261128T220215Z-8f2f2b";

/// The identities to decrypt with, as `pipeline` and `restore` take them.
pub fn identities() -> &'static [Box<dyn age::Identity + Send + Sync>] {
    static IDS: OnceLock<Vec<Box<dyn age::Identity + Send + Sync>>> = OnceLock::new();
    IDS.get_or_init(|| {
        let id: age::x25519::Identity = IDENTITY.parse().expect("the fuzz identity parses");
        vec![Box::new(id)]
    })
}

fn recipient() -> &'static age::x25519::Recipient {
    static R: OnceLock<age::x25519::Recipient> = OnceLock::new();
    R.get_or_init(|| RECIPIENT.parse().expect("the fuzz recipient parses"))
}

/// Encrypts `plain` to [`RECIPIENT`], as the backup pipeline does.
pub fn encrypt(plain: &[u8]) -> Vec<u8> {
    let r = recipient();
    let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))
        .expect("one recipient");
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = enc.wrap_output(&mut out).expect("writing to a Vec");
    w.write_all(plain).expect("writing to a Vec");
    w.finish().expect("writing to a Vec");
    out
}

/// zstd-compresses `plain` (level 1: only the format matters here).
pub fn compress(plain: &[u8]) -> Vec<u8> {
    zstd::encode_all(plain, 1).expect("compressing a slice")
}

/// Where a target's input starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The stored bytes, as found in the repository.
    Stored,
    /// The zstd stream; the harness encrypts it.
    Compressed,
    /// The plaintext; the harness compresses and encrypts it.
    Plain,
}

/// Splits off the first byte as the [`Layer`] (its low bits); `None` for
/// empty input.
pub fn layer(data: &[u8]) -> Option<(Layer, u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let layer = match first % 3 {
        0 => Layer::Stored,
        1 => Layer::Compressed,
        _ => Layer::Plain,
    };
    Some((layer, first, rest))
}

/// The stored archive for `rest` at `layer`.
pub fn stored(layer: Layer, rest: &[u8]) -> Vec<u8> {
    match layer {
        Layer::Stored => rest.to_vec(),
        Layer::Compressed => encrypt(rest),
        Layer::Plain => encrypt(&compress(rest)),
    }
}

/// A writer that keeps at most `limit` bytes and fails past that, so that a
/// decompression bomb ends the run rather than the machine.
pub struct Bounded {
    /// What was written.
    pub data: Vec<u8>,
    /// The most it keeps.
    pub limit: usize,
    /// Whether anything is kept (else it only counts).
    pub keep: bool,
    /// Bytes written.
    pub written: u64,
}

impl Bounded {
    /// A writer that keeps up to `limit` bytes (or only counts them).
    pub fn new(limit: usize, keep: bool) -> Self {
        Bounded {
            data: Vec::new(),
            limit,
            keep,
            written: 0,
        }
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit as u64 {
            return Err(std::io::Error::other(
                "more output than the fuzz harness keeps",
            ));
        }
        if self.keep {
            self.data.extend_from_slice(buf);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
