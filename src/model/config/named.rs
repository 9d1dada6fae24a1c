//! The files a configuration names and reads besides itself: secret files
//! (`password_file`, `token_file`, the S3 key files, the signing key,
//! `env_file`, systemd credentials) and the few plain ones (`mqtt.ca_file`).
//!
//! They are collected in one place, while the configuration is validated:
//! every validator that reads such a file notes it on the context
//! ([`super::Cx::note_file`]), so the `config` source of every snapshot
//! (`src/sources/config.rs`) can carry them and `kompose-dr bootstrap` can
//! bring them back. The age identity (`encryption.identity_file`) is only a
//! path and is never noted: it must never be in a snapshot.

use std::path::PathBuf;

/// One file the configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The dotted key that names it (`postgres.password_file`).
    pub key: String,
    /// The path as the configuration resolves it (absolute when the
    /// configuration's own path is).
    pub path: PathBuf,
    /// Whether it holds a secret (written back 0600).
    pub secret: bool,
}
