//! Reading a snapshot's encrypted facts sidecar: its stored bytes checked
//! against the manifest (size, sha256), then decrypted and parsed.

use crate::model::facts::Facts;
use crate::model::manifest::StoredObject;
use crate::storage::StorageError;

use super::Repository;

/// Why a facts sidecar could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The store did not give it.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// It is not what the manifest says, or cannot be decrypted or parsed.
    #[error("{path}: {problem}")]
    Damaged {
        /// The sidecar's key.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl Repository {
    /// Reads the facts sidecar the manifest lists as `stored`.
    pub async fn facts(
        &self,
        stored: &StoredObject,
        identities: &[Box<dyn age::Identity + Send + Sync>],
    ) -> Result<Facts, FactsError> {
        let problem = |problem: String| FactsError::Damaged {
            path: stored.path.clone(),
            problem,
        };
        // At most what the signed manifest says (and one byte more, to tell).
        let body = match self.read_document(&stored.path, stored.stored_bytes).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(crate::storage::StorageError::NotFound(stored.path.clone()).into());
            }
            Err(crate::storage::StorageError::NotAnObject { message, .. }) => {
                return Err(problem(message));
            }
            Err(e) => return Err(e.into()),
        };
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&body));
        if sha != stored.sha256 || body.len() as u64 != stored.stored_bytes {
            return Err(problem(
                "the stored bytes differ from the manifest: the sidecar is damaged".into(),
            ));
        }
        let plain = crate::pipeline::decode_all(&body, identities)
            .map_err(|e| problem(format!("cannot decrypt: {e}")))?;
        serde_json::from_slice(&plain).map_err(|e| problem(format!("not readable: {e}")))
    }
}
