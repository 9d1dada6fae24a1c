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
pub mod listing;
pub mod lock;
pub mod pruned;
pub mod seen;
pub mod signing;
pub mod stack;
pub mod validate;
pub mod wal;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::config::{Location, RepositoryConfig};
use crate::model::manifest::Manifest;
use crate::storage::keys;
use crate::storage::local::LocalBackend;
use crate::storage::{Backend, ObjectWriter, PutMode, StorageError};

pub use crate::storage::keys::MARKER;
pub use listing::Listing;
/// The repository format version this build writes: 2 since markers carry
/// the stack id (version 1 is read, and adopted by the first backup).
pub const FORMAT_VERSION: u32 = 2;

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
    /// The stack whose snapshots this repository holds: made by `init` (the
    /// same for every repository of one configuration) and signed with the
    /// marker. Absent in repositories written before stack ids, until the
    /// first backup adopts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The snapshots written before stack ids that the repository held when
    /// the first backup after the upgrade adopted it: those belong to its
    /// stack; any other snapshot without a stack id is another's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<Vec<String>>,
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
    /// A document's signature is missing or wrong (or cannot be made).
    #[error("repository `{name}`: {source}")]
    Signature {
        /// The repository's configured name, for the message.
        name: String,
        /// What is wrong and what to do.
        #[source]
        source: signing::SignatureError,
    },
    /// More manifests (or prune records) than any reader loads.
    #[error(
        "repository `{name}` holds {count} objects under {prefix}, more than the {limit} kompose-dr reads: \
         someone filled it, or retention never ran; remove what is not yours, or run `kompose-dr prune`"
    )]
    TooMany {
        /// The repository's configured name, for the message.
        name: String,
        /// The prefix listed.
        prefix: &'static str,
        /// How many there are.
        count: usize,
        /// The most read.
        limit: usize,
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

/// What the marker says about how the repository's documents are read,
/// once it has been read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkerState {
    /// The repository is signed: its marker is (or carries a stack id, which
    /// only signing releases write, or this host signed here): nothing
    /// unsigned in it is accepted, `--allow-unsigned` or not.
    pub signed: bool,
    /// The stack id of the marker.
    pub stack: Option<String>,
    /// The snapshots without a stack id that the repository held when it
    /// was adopted (signed in the marker): only these count as its stack's;
    /// `None` before adoption, when every such snapshot does.
    pub legacy: Option<std::collections::BTreeSet<String>>,
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
    /// The marker's state, once read (shared by the clones).
    state: Arc<std::sync::Mutex<Option<MarkerState>>>,
    /// Whether `--allow-unsigned` has been reported for this repository.
    warned: Arc<std::sync::atomic::AtomicBool>,
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
            state: Arc::default(),
            warned: Arc::default(),
        }
    }

    /// A repository over any backend, signing with a key of its own and
    /// checking every signature (for tests over in-memory backends);
    /// [`Repository::trusting`] sets other keys.
    pub fn with_backend(name: impl Into<String>, backend: Arc<dyn Backend>) -> Repository {
        Repository {
            name: name.into(),
            backend,
            trust: crate::model::config::Trust::ephemeral(),
            lease_ttl: lock::lease::TTL,
            state: Arc::default(),
            warned: Arc::default(),
        }
    }

    /// Whether this host signs what it commits here. `--allow-unsigned`
    /// never lets a writer commit unsigned documents: it only reads
    /// repositories written before signing.
    pub fn may_commit(&self) -> bool {
        self.trust.signing_key.is_some()
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
        let sig =
            signing::sign(&self.trust, key, &body).map_err(|source| self.signature(source))?;
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

    fn signature(&self, source: signing::SignatureError) -> RepositoryError {
        RepositoryError::Signature {
            name: self.name.clone(),
            source,
        }
    }

    /// Reads a small document whole, at most `limit` bytes of it: `None`
    /// if it does not exist, an error if it is larger (only `limit + 1`
    /// bytes are ever read, whatever the store holds).
    pub async fn read_document(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Option<Bytes>, StorageError> {
        let body = self.read_at_most(key, limit + 1).await?;
        if body.as_ref().is_some_and(|b| b.len() as u64 > limit) {
            return Err(StorageError::NotAnObject {
                location: key.to_owned(),
                message: format!(
                    "it is larger than the {limit} bytes any such document kompose-dr writes can be"
                ),
            });
        }
        Ok(body)
    }

    /// The detached signature of `key`, if any: at most
    /// [`signing::MAX_SIGNATURE`] bytes (and one more, to tell a larger one)
    /// are read; the check refuses a larger one, saying how large.
    async fn read_signature(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.read_at_most(&keys::signature_key(key), signing::MAX_SIGNATURE as u64 + 1)
            .await
    }

    /// The first `most` bytes of the object `key`; `None` if it does not
    /// exist.
    async fn read_at_most(&self, key: &str, most: u64) -> Result<Option<Bytes>, StorageError> {
        use tokio::io::AsyncReadExt;
        let reader = match self.backend.open(key).await {
            Ok(r) => r,
            Err(StorageError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut body = Vec::new();
        reader
            .take(most)
            .read_to_end(&mut body)
            .await
            .map_err(|source| StorageError::Io {
                op: "read",
                location: key.to_owned(),
                source,
            })?;
        Ok(Some(Bytes::from(body)))
    }

    /// Checks the document `body` at `key` against its signature, with the
    /// rule the marker sets: in a signed repository nothing unsigned passes.
    async fn check_signed(&self, key: &str, body: &[u8]) -> Result<signing::Signed, CheckError> {
        let rule = self.unsigned_rule(&self.marker_state().await);
        let sig = self
            .read_signature(key)
            .await
            .map_err(CheckError::Storage)?;
        let signed = signing::check(&self.trust, key, body, sig.as_deref(), rule)
            .map_err(CheckError::Signature)?;
        if signed == signing::Signed::AllowedUnsigned {
            self.warn_unsigned();
        }
        Ok(signed)
    }

    /// What an unsigned document gets in a repository in `state`.
    fn unsigned_rule(&self, state: &MarkerState) -> signing::UnsignedRule {
        if state.signed {
            signing::UnsignedRule::RefuseSigned
        } else if self.trust.allow_unsigned {
            signing::UnsignedRule::Accept
        } else {
            signing::UnsignedRule::RefuseOld
        }
    }

    /// Says once per repository what `--allow-unsigned` turned off.
    fn warn_unsigned(&self) {
        if !self.warned.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                repository = %self.name,
                "--allow-unsigned: this repository was written before signing, and its unsigned documents are accepted \
                 without authentication: anyone who could write to it could have forged them"
            );
        }
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

    /// Creates the repository for `stack` (see [`stack::choose`]); refuses
    /// an existing one.
    pub async fn init(
        &self,
        recipients: &[age::x25519::Recipient],
        stack: &str,
    ) -> Result<Marker, RepositoryError> {
        let marker = Marker {
            format: "kompose-dr".into(),
            version: FORMAT_VERSION,
            created_at: Utc::now(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            stack: Some(stack.to_owned()),
            legacy: None,
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
            Ok(()) => {
                self.set_state(MarkerState {
                    signed: self.trust.signing_key.is_some(),
                    stack: marker.stack.clone(),
                    legacy: None,
                });
                Ok(marker)
            }
            Err(RepositoryError::Storage {
                source: StorageError::AlreadyExists(_),
                ..
            }) => Err(already()),
            Err(e) => Err(e),
        }
    }

    /// Reads the marker; fails if the repository is not initialised, of a
    /// newer format, not signed as it must be, or not the one this host
    /// wrote to. Remembers what it says for the readers of its documents.
    pub async fn marker(&self) -> Result<Marker, RepositoryError> {
        let body = match self.read_document(MARKER, validate::MAX_DOCUMENT).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(RepositoryError::NotInitialised {
                    name: self.name.clone(),
                    location: self.location(),
                });
            }
            Err(e) => return Err(self.storage(e)),
        };
        let sig = self
            .read_signature(MARKER)
            .await
            .map_err(|e| self.storage(e))?;
        let marker: Marker =
            serde_json::from_slice(&body).map_err(|e| self.damaged_marker(e.to_string()))?;
        let signed = self.is_signed(&marker, sig.is_some()).await?;
        let rule = self.unsigned_rule(&MarkerState {
            signed,
            ..MarkerState::default()
        });
        let how = signing::check(&self.trust, MARKER, &body, sig.as_deref(), rule)
            .map_err(|source| self.signature(source))?;
        if how == signing::Signed::AllowedUnsigned {
            self.warn_unsigned();
        }
        validate::marker(&marker, body.len()).map_err(|m| self.damaged_marker(m.0))?;
        if marker.version > FORMAT_VERSION {
            return Err(RepositoryError::TooNew {
                name: self.name.clone(),
                found: marker.version,
            });
        }
        self.pinned_stack(&marker)?;
        self.set_state(MarkerState {
            signed,
            stack: marker.stack.clone(),
            legacy: marker.legacy.as_ref().map(|l| l.iter().cloned().collect()),
        });
        Ok(marker)
    }

    fn damaged_marker(&self, message: String) -> RepositoryError {
        RepositoryError::Damaged {
            name: self.name.clone(),
            key: MARKER.into(),
            message,
        }
    }

    /// Whether the repository is a signed one: its marker is signed or
    /// carries a stack id (only signing releases write one), this host has
    /// signed here, or — before `--allow-unsigned` is let through — any
    /// manifest in it verifies with the public key: a hand-written
    /// unsigned marker turns nothing off.
    async fn is_signed(&self, marker: &Marker, has_sig: bool) -> Result<bool, RepositoryError> {
        if has_sig || marker.stack.is_some() || self.signed_here() {
            return Ok(true);
        }
        if !self.trust.allow_unsigned || self.trust.public_key.is_none() {
            return Ok(false);
        }
        self.any_manifest_signed().await
    }

    /// Refuses a marker whose stack is not the one this host committed
    /// snapshots of here: a marker put back (one from before stack ids, or
    /// another repository's signed by the same key) would change which
    /// snapshots count as this stack's.
    fn pinned_stack(&self, marker: &Marker) -> Result<(), RepositoryError> {
        let Some(seen) = self.seen() else {
            return Ok(());
        };
        match (&seen.stack, &marker.stack) {
            (Some(pinned), found) if Some(pinned) != found.as_ref() => Err(self.damaged_marker(format!(
                "it names stack {}, but this host committed snapshots of stack {pinned} here: the marker was replaced \
                 (put kompose-dr.json and its .minisig back from another repository of this stack); if you re-created \
                 the repository on purpose, remove this host's record of it in {}",
                found.as_deref().unwrap_or("none"),
                self.trust
                    .seen_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    /// What the marker says, read now if it has not been. A marker that
    /// cannot be read makes the repository a signed one wherever a public
    /// key is configured (or this host signed here): deleting the marker
    /// turns nothing off.
    pub async fn marker_state(&self) -> MarkerState {
        if let Some(s) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return s;
        }
        match self.marker().await {
            Ok(_) => self.marker_state_now(),
            Err(_) => MarkerState {
                signed: self.trust.public_key.is_some() || self.signed_here(),
                ..MarkerState::default()
            },
        }
    }

    fn marker_state_now(&self) -> MarkerState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    fn set_state(&self, state: MarkerState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// Whether this host has committed signed snapshots here (its state
    /// directory says so).
    fn signed_here(&self) -> bool {
        self.seen().is_some_and(|s| s.signed)
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

    /// Commits a snapshot by writing its manifest, with this repository's
    /// stack and the newest snapshot of that stack here as its predecessor;
    /// returns the manifest as committed. Call only after every object it
    /// names is durable, and while holding the writer lock.
    pub async fn commit(&self, manifest: &Manifest) -> Result<Manifest, RepositoryError> {
        let state = self.marker_state().await;
        let mut previous = self.newest_of_stack(&state, manifest).await?;
        // The newest this host committed here, gone since: named all the
        // same, so that the deletion keeps showing after this commit.
        if let Some(seen) = self.seen()
            && let Some(at) = seen.newest_started_at
            && (at, seen.newest.as_str()) < (manifest.started_at, manifest.id.as_str())
            && previous
                .as_ref()
                .is_none_or(|(p_at, p)| (*p_at, p.as_str()) < (at, seen.newest.as_str()))
        {
            tracing::error!(repository = %self.name, snapshot = %seen.newest, "the newest snapshot this host committed here is gone: it was deleted from the store");
            previous = Some((at, seen.newest));
        }
        let manifest = Manifest {
            stack: state.stack.clone(),
            previous: previous.map(|(_, id)| id),
            ..manifest.clone()
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        self.put_signed(&keys::manifest_key(&manifest.id), body, PutMode::CreateNew)
            .await?;
        self.remember(&manifest);
        Ok(manifest)
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

    /// This stack's snapshots, newest first, plus the manifests (and prune
    /// records) that could not be read; [`Repository::listing`] has the
    /// rest (other stacks' snapshots, vanished ones).
    pub async fn snapshots(
        &self,
    ) -> Result<(Vec<Manifest>, Vec<DamagedManifest>), RepositoryError> {
        let listing = self.listing().await?;
        Ok((listing.ours, listing.damaged))
    }
}

/// Why a document's signature check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The signature could not be read.
    #[error("cannot read its signature: {0}")]
    Storage(#[source] StorageError),
    /// The signature is missing or wrong.
    #[error(transparent)]
    Signature(signing::SignatureError),
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
        let stack = stack::new_id();
        repo.init(std::slice::from_ref(&r), &stack).await.unwrap();
        let marker = repo.marker().await.unwrap();
        assert_eq!(marker.recipients, vec![r.to_string()]);
        assert_eq!(marker.stack.as_deref(), Some(stack.as_str()));
        assert!(matches!(
            repo.init(&[r], &stack).await,
            Err(RepositoryError::AlreadyInitialised { .. })
        ));
    }
}
