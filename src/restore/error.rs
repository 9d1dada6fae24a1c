//! [`RestoreError`]: why an item cannot be restored, or why restoring it
//! failed.
//!
//! Messages keep the shape operators see today: what failed, and, for a
//! failure during the restore, what state the target was left in (the
//! [`RestoreError::Unchanged`] wrapper adds "…; X is unchanged").

use std::path::PathBuf;

use crate::error::{Class, Classify};

/// A restore that cannot start (options, configuration, the target's state)
/// or that failed while it ran.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// `--as` or `--to` do not fit the selection.
    #[error("{0}")]
    Options(String),
    /// Restoring PostgreSQL needs a `[postgres]` section or `--target-url`.
    #[error(
        "configuration {}: restoring PostgreSQL needs a [postgres] section (or --target-url)",
        .config.display()
    )]
    NoPostgres {
        /// The configuration file.
        config: PathBuf,
    },
    /// Nothing says where Redis' files go.
    #[error(
        "where should Redis' files go? Set redis.data_dir in {} or pass --to DIR",
        .config.display()
    )]
    NoRedisDir {
        /// The configuration file.
        config: PathBuf,
    },
    /// The target refuses the restore as asked (it holds data, Redis runs
    /// on it, a name is unusable); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A source-layer call (connecting, choosing a client tool) failed.
    #[error("{0}")]
    Source(String),
    /// A statement on the target server failed.
    #[error("{context}: {}", db_detail(source))]
    Database {
        /// What was being done, and the state it leaves.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A local file-system or process operation failed.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done (`cannot create /x`).
        doing: String,
        /// The error.
        source: std::io::Error,
    },
    /// The manifest records no archive for the artifact.
    #[error("{0}: the manifest names no archive")]
    NoArchive(String),
    /// The archive could not be opened in storage.
    #[error("{label}: {source}")]
    Storage {
        /// The artifact, as [`super::stream::label`] names it.
        label: String,
        /// The storage error.
        source: crate::storage::StorageError,
    },
    /// The archive did not read back: wrong key, damage, or the output.
    #[error(transparent)]
    Archive(#[from] super::stream::ReadError),
    /// A client program (psql, pg_restore) or a check of what was restored
    /// failed; the message names it and what remains.
    #[error("{0}")]
    Failed(String),
    /// The container engine could not be used, or the configured container
    /// is not there.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A scratch server (a recovery's) could not be had, did not reach its
    /// target, or did not shut down cleanly.
    #[error(transparent)]
    Scratch(#[from] crate::scratch::ScratchError),
    /// A failure that left the target as it was.
    #[error("{source}; {target} is unchanged")]
    Unchanged {
        /// The target, as the message names it (`database app`, a path).
        target: String,
        /// What failed.
        source: Box<RestoreError>,
    },
}

impl RestoreError {
    /// Wraps the error of a `crate::sources` call (a `String` today).
    pub fn from_source(e: impl std::fmt::Display) -> RestoreError {
        RestoreError::Source(e.to_string())
    }

    /// `doing: e` for an I/O error, as a closure for `map_err`.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
        let doing = doing.into();
        move |source| RestoreError::Io { doing, source }
    }

    /// `context: message` for a failed statement, as a closure for `map_err`.
    pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> RestoreError {
        let context = context.into();
        move |source| RestoreError::Database { context, source }
    }

    /// The same error, saying that `target` was left unchanged.
    pub fn unchanged(self, target: impl std::fmt::Display) -> RestoreError {
        RestoreError::Unchanged {
            target: target.to_string(),
            source: Box::new(self),
        }
    }
}

/// The server's message when there is one, else the driver's.
fn db_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

impl Classify for RestoreError {
    /// Options, missing configuration and refusing targets ask the operator
    /// to change what they asked for; everything else failed while working.
    fn class(&self) -> Class {
        match self {
            RestoreError::Options(_)
            | RestoreError::NoPostgres { .. }
            | RestoreError::NoRedisDir { .. }
            | RestoreError::Refused(_) => Class::Usage,
            RestoreError::Unchanged { source, .. } => source.class(),
            RestoreError::Engine(e) => e.class(),
            RestoreError::Scratch(e) => e.class(),
            _ => Class::Failure,
        }
    }
}
