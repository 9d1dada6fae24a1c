//! The open repository layout (docs/DESIGN.md §4) on top of a storage backend.
//!
//! ```text
//! kompose-dr.json                     marker: format version, recipients
//! snapshots/<ID>.json                 manifest, written last (commit point)
//! data/<ID>/postgres/<db>.dump.zst.age
//! data/<ID>/postgres/globals.sql.zst.age
//! data/<ID>/redis/<name>.tar.zst.age
//! data/<ID>/files/<name>.zst.age
//! data/<ID>/facts.json.zst.age        encrypted facts sidecar
//! ```
//!
//! A snapshot exists iff its manifest exists: readers list `snapshots/`
//! only and ignore data that no manifest names.

use std::sync::Arc;

pub mod copy;
pub mod facts;
pub mod lock;
pub mod signing;
pub mod validate;
pub mod wal;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::config::{Location, RepositoryConfig};
use crate::model::manifest::{MANIFEST_VERSION, Manifest};
use crate::storage::keys;
use crate::storage::local::LocalBackend;
use crate::storage::{Backend, ObjectWriter, PutMode, StorageError};

pub use crate::storage::keys::MARKER;
/// The repository format version this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The repository marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Always `kompose-dr`: names the tool whose repository this is.
    pub format: String,
    /// Repository format version.
    pub version: u32,
    /// When `init` ran.
    pub created_at: DateTime<Utc>,
    /// The age recipients archives are encrypted to (public keys).
    pub recipients: Vec<String>,
}

/// A repository-level failure.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No marker: `init` has not run.
    #[error("repository `{name}` at {location} is not initialised: run `kompose-dr init`")]
    NotInitialised {
        /// The repository's configured name, for the message.
        name: String,
        /// Where it is.
        location: String,
    },
    /// `init` on an existing repository.
    #[error("repository `{name}` at {location} already exists; nothing was changed")]
    AlreadyInitialised {
        /// The repository's configured name, for the message.
        name: String,
        /// Where it is.
        location: String,
    },
    /// The marker or a manifest could not be parsed.
    #[error("repository `{name}`: {key} is damaged: {message}")]
    Damaged {
        /// The repository's configured name, for the message.
        name: String,
        /// Key of the damaged object: the marker or a manifest.
        key: String,
        /// Why it could not be read: the JSON parser's message.
        message: String,
    },
    /// The repository is of a newer format than this build reads.
    #[error(
        "repository `{name}` has format version {found}; this kompose-dr reads up to {FORMAT_VERSION}: upgrade kompose-dr"
    )]
    TooNew {
        /// The repository's configured name, for the message.
        name: String,
        /// The format version the marker declares, newer than
        /// [`FORMAT_VERSION`], the newest this build reads.
        found: u32,
    },
    /// The marker's signature is missing or wrong (or cannot be made).
    #[error("repository `{name}`: {message}")]
    Signature {
        /// The repository's configured name, for the message.
        name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The writer lock could not be taken.
    #[error("repository `{name}`: {source}")]
    Lock {
        /// The repository's configured name, for the message.
        name: String,
        /// Why the lock could not be taken (held by another writer, or I/O).
        source: lock::LockError,
    },
    /// The backend failed (a disk, a remote store); the source error says
    /// what to fix.
    #[error("repository `{name}`: {source}")]
    Storage {
        /// The repository's configured name, for the message.
        name: String,
        /// The storage error.
        source: StorageError,
    },
}

impl crate::error::Classify for RepositoryError {
    /// An uninitialised or already initialised repository is a usage
    /// mistake (run `init`, or don't); everything else a failure.
    fn class(&self) -> crate::error::Class {
        match self {
            RepositoryError::NotInitialised { .. } | RepositoryError::AlreadyInitialised { .. } => {
                crate::error::Class::Usage
            }
            _ => crate::error::Class::Failure,
        }
    }
}

/// A snapshot manifest that could not be read, reported beside the good ones.
#[derive(Debug, Clone)]
pub struct DamagedManifest {
    /// Key of the manifest (`snapshots/<ID>.json`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// One repository: a name and a backend.
#[derive(Debug, Clone)]
pub struct Repository {
    name: String,
    backend: Arc<dyn Backend>,
    trust: crate::model::config::Trust,
    /// How long the writer lock's lease lives without renewal (backends
    /// without a local directory).
    lease_ttl: std::time::Duration,
}

impl Repository {
    /// Opens the repository a configuration entry describes (no I/O).
    pub fn open(cfg: &RepositoryConfig) -> Repository {
        let (backend, lease_ttl): (Arc<dyn Backend>, _) = match &cfg.location {
            Location::Local(p) => (Arc::new(LocalBackend::new(p)), lock::lease::TTL),
            Location::S3(s3) => (
                Arc::new(crate::storage::s3::S3Backend::new(s3)),
                s3.lease_ttl,
            ),
        };
        Repository {
            name: cfg.name.clone(),
            backend,
            trust: cfg.trust.clone(),
            lease_ttl,
        }
    }

    /// A repository over any backend that checks no signature (for tests
    /// over in-memory backends); [`Repository::trusting`] sets one.
    pub fn with_backend(name: impl Into<String>, backend: Arc<dyn Backend>) -> Repository {
        Repository {
            name: name.into(),
            backend,
            trust: crate::model::config::Trust::unchecked(),
            lease_ttl: lock::lease::TTL,
        }
    }

    /// Whether this host signs what it commits here, or is allowed not to
    /// (`--allow-unsigned`).
    pub fn may_commit(&self) -> bool {
        self.trust.signing_key.is_some() || self.trust.allow_unsigned
    }

    /// The same repository with these signing keys and rules.
    pub fn trusting(mut self, trust: crate::model::config::Trust) -> Repository {
        self.trust = trust;
        self
    }

    /// The same repository with leases that live `ttl` without renewal
    /// (for tests that need a lease to lapse within seconds).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Repository {
        self.lease_ttl = ttl;
        self
    }

    /// Writes `body` at `key` after its signature (if this host signs): a
    /// reader never sees the document without it.
    async fn put_signed(
        &self,
        key: &str,
        body: Vec<u8>,
        mode: PutMode,
    ) -> Result<(), RepositoryError> {
        let sig = signing::sign(&self.trust, key, &body).map_err(|message| {
            RepositoryError::Signature {
                name: self.name.clone(),
                message,
            }
        })?;
        if let Some(sig) = sig {
            self.backend
                .put(
                    &keys::signature_key(key),
                    Bytes::from(sig),
                    PutMode::Overwrite,
                )
                .await
                .map_err(|e| self.storage(e))?;
        }
        self.backend
            .put(key, Bytes::from(body), mode)
            .await
            .map_err(|e| self.storage(e))
    }

    /// Checks the document `body` at `key` against its signature.
    async fn check_signed(&self, key: &str, body: &[u8]) -> Result<signing::Signed, String> {
        let sig = match self.backend.get(&keys::signature_key(key)).await {
            Ok(b) => Some(b),
            Err(StorageError::NotFound(_)) => None,
            Err(e) => return Err(format!("{key}: cannot read its signature: {e}")),
        };
        signing::check(&self.trust, key, body, sig.as_deref())
    }

    /// Its configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        self.backend.describe()
    }

    /// The backend underneath, for what the repository does not wrap: streaming
    /// reads and listings of archives.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn storage(&self, source: StorageError) -> RepositoryError {
        RepositoryError::Storage {
            name: self.name.clone(),
            source,
        }
    }

    /// Creates the repository; refuses an existing one.
    pub async fn init(
        &self,
        recipients: &[age::x25519::Recipient],
    ) -> Result<Marker, RepositoryError> {
        let marker = Marker {
            format: "kompose-dr".into(),
            version: FORMAT_VERSION,
            created_at: Utc::now(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        };
        let already = || RepositoryError::AlreadyInitialised {
            name: self.name.clone(),
            location: self.location(),
        };
        // A repository may live beside other files (the stack's own dumps
        // in the same directory): only kompose-dr's own layout is looked at
        // — the marker, snapshots/, data/, locks/ — and anything of it
        // already there is refused. Other files are never read or touched.
        for prefix in [keys::SNAPSHOTS, keys::DATA, keys::LOCKS] {
            match self.backend.list(prefix).await {
                Ok(objects) if !objects.is_empty() => return Err(already()),
                Ok(_) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(self.storage(e)),
            }
        }
        for key in [keys::MARKER.to_owned(), keys::signature_key(keys::MARKER)] {
            match self.backend.get(&key).await {
                Ok(_) => return Err(already()),
                Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(self.storage(e)),
            }
        }
        let body = serde_json::to_vec_pretty(&marker).expect("marker serialises");
        match self.put_signed(MARKER, body, PutMode::CreateNew).await {
            Ok(()) => Ok(marker),
            Err(RepositoryError::Storage {
                source: StorageError::AlreadyExists(_),
                ..
            }) => Err(already()),
            Err(e) => Err(e),
        }
    }

    /// Reads the marker; fails if the repository is not initialised or of a
    /// newer format.
    pub async fn marker(&self) -> Result<Marker, RepositoryError> {
        let body = match self.backend.get(MARKER).await {
            Ok(b) => b,
            Err(StorageError::NotFound(_)) => {
                return Err(RepositoryError::NotInitialised {
                    name: self.name.clone(),
                    location: self.location(),
                });
            }
            Err(e) => return Err(self.storage(e)),
        };
        self.check_signed(MARKER, &body)
            .await
            .map_err(|message| RepositoryError::Signature {
                name: self.name.clone(),
                message,
            })?;
        let marker: Marker =
            serde_json::from_slice(&body).map_err(|e| RepositoryError::Damaged {
                name: self.name.clone(),
                key: MARKER.into(),
                message: e.to_string(),
            })?;
        if let Err(message) = validate::marker(&marker, body.len()) {
            return Err(RepositoryError::Damaged {
                name: self.name.clone(),
                key: MARKER.into(),
                message,
            });
        }
        if marker.version > FORMAT_VERSION {
            return Err(RepositoryError::TooNew {
                name: self.name.clone(),
                found: marker.version,
            });
        }
        Ok(marker)
    }

    /// Takes the repository's writer lock (backup, prune), waiting up to
    /// `wait`; `None` for backends without one.
    pub async fn lock(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<Option<lock::RepoLock>, RepositoryError> {
        let held = match self.backend.local_root() {
            Some(root) => crate::repository::lock::acquire(root, command, wait).await,
            None => {
                crate::repository::lock::lease::acquire(
                    self.backend.clone(),
                    command,
                    wait,
                    self.lease_ttl,
                )
                .await
            }
        };
        held.map(Some).map_err(|source| RepositoryError::Lock {
            name: self.name.clone(),
            source,
        })
    }

    /// Starts writing an object (invisible until finished).
    pub async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, RepositoryError> {
        self.backend.create(key).await.map_err(|e| self.storage(e))
    }

    /// Commits a snapshot by writing its manifest. Call only after every
    /// object it names is durable.
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), RepositoryError> {
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        self.put_signed(&keys::manifest_key(&manifest.id), body, PutMode::CreateNew)
            .await
    }

    /// Removes every object under `data/<snapshot>/` (for a run that
    /// committed nothing).
    pub async fn discard_data(&self, snapshot: &str) -> Result<(), RepositoryError> {
        let objects = self
            .backend
            .list(&keys::snapshot_data_prefix(snapshot))
            .await
            .map_err(|e| self.storage(e))?;
        for o in objects {
            self.backend
                .delete(&o.key)
                .await
                .map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    /// Every snapshot, newest first, plus the manifests that could not be read.
    pub async fn snapshots(
        &self,
    ) -> Result<(Vec<Manifest>, Vec<DamagedManifest>), RepositoryError> {
        let objects = self
            .backend
            .list(keys::SNAPSHOTS)
            .await
            .map_err(|e| self.storage(e))?;
        let mut good = Vec::new();
        let mut damaged = Vec::new();
        for o in objects {
            if !o.key.ends_with(".json") {
                continue;
            }
            if o.size > validate::MAX_DOCUMENT {
                damaged.push(DamagedManifest {
                    key: o.key,
                    message: format!(
                        "{} bytes is more than any manifest kompose-dr writes",
                        o.size
                    ),
                });
                continue;
            }
            let body = match self.backend.get(&o.key).await {
                Ok(b) => b,
                Err(StorageError::NotFound(_)) => continue, // pruned meanwhile
                Err(e) => return Err(self.storage(e)),
            };
            if let Err(message) = self.check_signed(&o.key, &body).await {
                damaged.push(DamagedManifest {
                    key: o.key,
                    message,
                });
                continue;
            }
            match serde_json::from_slice::<Manifest>(&body) {
                Ok(m) if m.version <= MANIFEST_VERSION => match validate::manifest(&m, &o.key) {
                    Ok(()) => good.push(m),
                    Err(message) => damaged.push(DamagedManifest {
                        key: o.key,
                        message,
                    }),
                },
                Ok(m) => damaged.push(DamagedManifest {
                    key: o.key,
                    message: format!(
                        "manifest version {} is newer than this kompose-dr reads",
                        m.version
                    ),
                }),
                Err(e) => damaged.push(DamagedManifest {
                    key: o.key,
                    message: e.to_string(),
                }),
            }
        }
        // Newest first; ids of one second differ only by their random part.
        good.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        Ok((good, damaged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_refuses_existing_and_marker_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo =
            Repository::with_backend("local", Arc::new(LocalBackend::new(dir.path().join("r"))));
        assert!(matches!(
            repo.marker().await,
            Err(RepositoryError::NotInitialised { .. })
        ));
        let r = age::x25519::Identity::generate().to_public();
        repo.init(std::slice::from_ref(&r)).await.unwrap();
        assert_eq!(repo.marker().await.unwrap().recipients, vec![r.to_string()]);
        assert!(matches!(
            repo.init(&[r]).await,
            Err(RepositoryError::AlreadyInitialised { .. })
        ));
    }
}
