//! A manifest as stored — its exact bytes and detached signature — read
//! with every rule a reader applies, and committed as is in another
//! repository: what `kompose-dr copy` carries over.
//!
//! The signature covers the manifest's exact bytes and names only its key
//! (`snapshots/<ID>.json`), which is the same in every repository; so a
//! manifest copied byte for byte, beside its signature, verifies in the
//! target with the same public key, and no signing key is needed to copy.
//! Its `repository` field keeps naming the repository the backup wrote
//! it to: readers never act on that field.

use bytes::Bytes;

use crate::model::manifest::{MANIFEST_VERSION, Manifest};
use crate::storage::{PutMode, StorageError, keys};

use super::{Repository, RepositoryError, signing, validate};

/// A manifest read from a repository: the document, parsed and validated,
/// and the bytes (and signature) it was read from.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The validated manifest.
    pub manifest: Manifest,
    /// Its exact bytes, as the repository holds them.
    pub body: Bytes,
    /// Its detached minisign signature, if it has one.
    pub signature: Option<Bytes>,
}

impl Repository {
    /// Reads the manifest of snapshot `id` with the rules every reader
    /// applies: bounded size, signature checked against `[signing]
    /// public_key` (unless allowed unsigned), JSON of a known version, and
    /// every key the one kompose-dr builds ([`validate::manifest`]).
    pub async fn stored_manifest(&self, id: &str) -> Result<StoredManifest, RepositoryError> {
        let key = keys::manifest_key(id);
        let damaged = |message: String| RepositoryError::Damaged {
            name: self.name.clone(),
            key: key.clone(),
            message,
        };
        if !crate::model::time::is_snapshot_id(id) {
            return Err(damaged(format!(
                "`{}` is not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxx)",
                id.escape_debug()
            )));
        }
        let body = match self.read_document(&key, validate::MAX_DOCUMENT).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(self.storage(StorageError::NotFound(key.clone()))),
            Err(StorageError::NotAnObject { message, .. }) => return Err(damaged(message)),
            Err(e) => return Err(self.storage(e)),
        };
        let signature = self
            .read_signature(&key)
            .await
            .map_err(|e| self.storage(e))?;
        let rule = self.unsigned_rule(&self.marker_state().await);
        signing::check(&self.trust, &key, &body, signature.as_deref(), rule)
            .map_err(|source| self.signature(source))?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| damaged(e.to_string()))?;
        if manifest.version > MANIFEST_VERSION {
            return Err(damaged(format!(
                "manifest version {} is newer than this kompose-dr reads",
                manifest.version
            )));
        }
        validate::manifest(&manifest, &key).map_err(|m| damaged(m.0))?;
        Ok(StoredManifest {
            manifest,
            body,
            signature,
        })
    }

    /// Commits a snapshot with a manifest read elsewhere, byte for byte:
    /// its signature first (if it has one), then the manifest, which must
    /// not exist yet. Call only after every object it names is durable here.
    pub async fn commit_stored(&self, stored: &StoredManifest) -> Result<(), RepositoryError> {
        let key = keys::manifest_key(&stored.manifest.id);
        if let Some(sig) = &stored.signature {
            self.backend
                .put(&keys::signature_key(&key), sig.clone(), PutMode::Overwrite)
                .await
                .map_err(|e| self.storage(e))?;
        }
        self.backend
            .put(&key, stored.body.clone(), PutMode::CreateNew)
            .await
            .map_err(|e| self.storage(e))
    }

    /// Commits a snapshot like [`commit_stored`](Self::commit_stored) over
    /// a manifest of the same id that this repository holds but readers
    /// refuse (garbage, wrongly signed, invalid): the signature first —
    /// or, for an unsigned manifest, the stale one removed — then the
    /// manifest, both overwritten. Until the manifest is written the old
    /// one stays refused, so no reader ever accepts a mix of the two. Call
    /// only after every object the manifest names is durable here, and
    /// only for a manifest readers of this repository refuse.
    pub async fn replace_stored(&self, stored: &StoredManifest) -> Result<(), RepositoryError> {
        let key = keys::manifest_key(&stored.manifest.id);
        let sig_key = keys::signature_key(&key);
        let written = match &stored.signature {
            Some(sig) => {
                self.backend
                    .put(&sig_key, sig.clone(), PutMode::Overwrite)
                    .await
            }
            None => self.backend.delete(&sig_key).await,
        };
        written.map_err(|e| self.storage(e))?;
        self.backend
            .put(&key, stored.body.clone(), PutMode::Overwrite)
            .await
            .map_err(|e| self.storage(e))
    }
}
