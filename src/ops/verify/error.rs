//! [`VerifyError`]: why a snapshot could not be verified at all (as opposed
//! to a verification that ran and found a problem, which its report says).

use crate::error::{Class, Classify, InvalidInput};
use crate::repository::RepositoryError;
use crate::restore::plan::PlanError;
use crate::scratch::ScratchError;
use crate::storage::StorageError;

/// A verification that could not run to its verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// `--snapshot ID` names no snapshot.
    #[error("no snapshot `{id}` in repository {repository}: list them with `kompose-dr snapshots`")]
    NoSuchSnapshot {
        /// The id asked for.
        id: String,
        /// The repository searched.
        repository: String,
    },
    /// `--snapshot ID` names a snapshot that is refused: unsigned, wrongly
    /// signed or invalid.
    #[error("snapshot `{id}` is refused: {reason}")]
    Refused {
        /// The id asked for.
        id: String,
        /// Why (names what to do).
        reason: String,
    },
    /// The repository holds no snapshot.
    #[error("repository {0} holds no snapshot")]
    NoSnapshot(String),
    /// The snapshots could not be listed.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The manifest has no facts sidecar to compare against.
    #[error("snapshot {0} has no facts sidecar: it cannot be verified")]
    NoFacts(String),
    /// The facts sidecar could not be read from storage.
    #[error("facts: {0}")]
    FactsStorage(StorageError),
    /// The facts sidecar is damaged, undecryptable or unreadable.
    #[error("facts ({path}): {problem}")]
    Facts {
        /// Its key in the repository.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `--source` pattern is not a glob.
    #[error(transparent)]
    Selection(InvalidInput),
    /// The sources to verify could not be chosen.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Databases are selected but the manifest does not say which
    /// PostgreSQL major version dumped them.
    #[error("the manifest records no PostgreSQL server version")]
    NoServerVersion,
    /// A scratch instance could not be had.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
}

impl Classify for VerifyError {
    /// A snapshot or source that is not there, or a bad pattern, asks the
    /// operator to choose again; wrapped errors keep their class; the rest
    /// failed while working.
    fn class(&self) -> Class {
        match self {
            VerifyError::NoSuchSnapshot { .. }
            | VerifyError::NoSnapshot(_)
            | VerifyError::Selection(_) => Class::Usage,
            VerifyError::Refused { .. } => Class::Failure,
            VerifyError::Repository(e) => e.class(),
            VerifyError::Plan(e) => e.class(),
            VerifyError::Scratch(e) => e.class(),
            VerifyError::NoFacts(_)
            | VerifyError::FactsStorage(_)
            | VerifyError::Facts { .. }
            | VerifyError::NoServerVersion => Class::Failure,
        }
    }
}
