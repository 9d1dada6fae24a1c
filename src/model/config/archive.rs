//! `[encryption]` and `[compression]`: how every archive is written
//! (zstd, then age to every recipient).
//!
//! Backup needs only public keys, so the recipients are parsed here and a
//! bad one is refused at load time with the command that prints a good one.
//! The identity file (the private key) is only a path: it is read when an
//! archive is read back, by the commands that do that.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[encryption]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    recipients: Spanned<Vec<Spanned<String>>>,
    identity_file: Option<Spanned<String>>,
}

/// `[compression]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompression {
    level: Option<Spanned<i64>>,
}

/// age settings. Backup needs only the recipients (public keys).
#[derive(Clone)]
pub struct Encryption {
    /// Every archive is encrypted to all of these.
    pub recipients: Vec<age::x25519::Recipient>,
    /// The private key, needed only to read archives back.
    pub identity_file: Option<PathBuf>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field(
                "recipients",
                &self
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("identity_file", &self.identity_file)
            .finish()
    }
}

/// zstd settings for every archive; the level trades CPU for size and is
/// the same for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level, 1..=19.
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { level: 3 }
    }
}

impl Cx<'_> {
    /// Validates `[encryption]`: at least one recipient, each an age X25519
    /// public key.
    pub(super) fn encryption(&self, e: &RawEncryption) -> Result<Encryption, ConfigError> {
        if e.recipients.get_ref().is_empty() {
            return Err(self.err(
                e.recipients.span(),
                "encryption.recipients",
                "at least one age recipient (age1…) is needed; create a key with `kompose-dr init --generate-key FILE`",
            ));
        }
        let mut recipients = Vec::new();
        for (i, r) in e.recipients.get_ref().iter().enumerate() {
            let key = format!("encryption.recipients[{i}]");
            let s = self.string(r, &key)?;
            let parsed: age::x25519::Recipient = s.trim().parse().map_err(|_| {
                self.err(
                    r.span(),
                    &key,
                    "not an age X25519 recipient (a public key starting with age1…); \
                     print one with `age-keygen -y IDENTITY` or create a key with `kompose-dr init --generate-key FILE`",
                )
            })?;
            recipients.push(parsed);
        }
        let identity_file = e
            .identity_file
            .as_ref()
            .map(|p| self.path(p, "encryption.identity_file"))
            .transpose()?;
        Ok(Encryption {
            recipients,
            identity_file,
        })
    }

    /// Validates `[compression]`: a zstd level from 1 to 19, 3 by default.
    pub(super) fn compression(&self, c: &RawCompression) -> Result<Compression, ConfigError> {
        let Some(l) = &c.level else {
            return Ok(Compression::default());
        };
        let level = *l.get_ref();
        if !(1..=19).contains(&level) {
            return Err(self.err(
                l.span(),
                "compression.level",
                format!("zstd level {level} is out of range: use 1..=19 (3 is a good default)"),
            ));
        }
        Ok(Compression {
            level: level as i32,
        })
    }
}
