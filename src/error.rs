//! The error policy of the crate, and the one place an exit status is
//! chosen.
//!
//! # Policy
//!
//! 1. **Typed errors per layer.** Each layer defines its own `thiserror`
//!    types, named for the layer: [`ConfigError`](crate::model::config::ConfigError)
//!    and [`InvalidInput`] (model), [`StorageError`](crate::storage::StorageError),
//!    [`PipelineError`](crate::pipeline::PipelineError) and
//!    [`ProcessError`](crate::process::ProcessError) (I/O),
//!    [`RepositoryError`](crate::repository::RepositoryError) and
//!    [`LockError`](crate::repository::lock::LockError) (repository format),
//!    [`SourceError`](crate::sources::SourceError),
//!    [`RestoreError`](crate::restore::RestoreError),
//!    [`ScratchError`](crate::scratch::ScratchError) and
//!    [`PublishError`](crate::events::PublishError) (sources, targets,
//!    scratch instances, events). A function that another module calls
//!    returns one of these, never `Result<_, String>`.
//! 2. **Every error knows its class.** [`Classify::class`] says whether the
//!    operator must change what they asked for ([`Class::Usage`]: a
//!    configuration key, an argument, a missing key file — exit 2) or
//!    something failed while doing it ([`Class::Failure`], exit 1). Wrapping
//!    an error keeps its class.
//! 3. **Messages are for the operator.** They name what is wrong (file, key,
//!    line; database; host; repository) and what to do, and never contain a
//!    secret: anything that may echo a password passes through
//!    [`Redactor`](crate::model::secret::Redactor) before it becomes an error.
//! 4. **One exit status, chosen once.** Operations return reports; commands
//!    turn a report into an [`Outcome`] and any error into a [`Failure`]
//!    (`?` converts every classified error). [`Exit::of`] maps the two to
//!    the documented status (docs/DESIGN.md §2: 0 ok, 1 failure, 2 usage,
//!    3 partial) and nothing else picks a number.
//! 5. **No panics on input.** `expect` is kept for invariants of our own
//!    making (a template that is a literal, a pipe we configured), never for
//!    anything read from a file, a server or a repository.
//!
//! # The error types, by layer
//!
//! | layer | types (file) |
//! | --- | --- |
//! | model | `ConfigError` (`model/config/mod.rs`), `ExpandError` (`model/config/env.rs`), `KeyFileError` (`model/config/keyfile.rs`), `PostgresUrlError` (`model/config/postgres.rs`), `CoverageError` (`model/wal.rs`), [`InvalidInput`] (here) |
//! | I/O | `StorageError` (`storage/mod.rs`), `PipelineError` (`pipeline/mod.rs`), `SizeError` (`pipeline/bounded.rs`), `ProcessError` (`process.rs`), `EngineError` (`engine/mod.rs`) |
//! | repository | `RepositoryError`, `CheckError` (`repository/mod.rs`), `SignatureError` (`repository/signing.rs`), `LockError` (`repository/lock.rs`), `RecordError` (`repository/pruned.rs`), `RecordAgainError` (`repository/wal.rs`), `FactsError` (`repository/facts.rs`) |
//! | clients | `ClientError` (`clients/mod.rs`), `LaunchError` (`clients/launch.rs`), `CreateError` (`clients/postgres/database.rs`) |
//! | sources | `SourceError` (`sources/mod.rs`), `CertificateError` (`sources/acme.rs`), `RedisFileError` (`sources/redis.rs`), `RdbError` (`sources/redis/rdb.rs`), `SqliteError` (`sources/directories/sqlite.rs`), `Unreadable` (`sources/config.rs`) |
//! | restore, scratch | `RestoreError` (`restore/error.rs`), `ReadError` (`restore/stream.rs`), `PlanError` (`restore/plan.rs`), `HelperSwapError` (`restore/helper.rs`), `ScratchError` (`scratch/mod.rs`) |
//! | events | `PublishError` (`events/mqtt.rs`), `HttpError` (`events/http.rs`), `TlsError` (`events/tls.rs`) |
//! | ops | `RestoreRunError` (`ops/restore.rs`), `VerifyError` (`ops/verify/error.rs`), `DrillError` (`ops/drill/error.rs`), `PruneError` (`ops/prune.rs`), `CopyError` (`ops/copy.rs`), `AsUserError` (`ops/doctor/unit.rs`), `BootstrapError` (`ops/bootstrap/mod.rs`) |
//! | agent, CLI | `AgentError` (`agent.rs`); [`Failure`] (here) is what a command returns |

use std::process::ExitCode;

/// What an error asks of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Fix the configuration or the command line; nothing was attempted
    /// (exit 2).
    Usage,
    /// Something failed while working: a server, a repository, a check
    /// (exit 1).
    Failure,
}

/// An error that knows its [`Class`]. Every layer's error type implements
/// it, so that `?` can carry any of them up to a command as a [`Failure`].
pub trait Classify: std::error::Error {
    /// The class of this error.
    fn class(&self) -> Class;
}

/// A value written by the operator that is not valid: a `--source` glob, a
/// time zone, a size, a drill or policy file. Class [`Class::Usage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl Classify for InvalidInput {
    fn class(&self) -> Class {
        Class::Usage
    }
}

/// How a command that ran to its end came out. Commands return it (or a
/// [`Failure`]); [`Exit::of`] turns it into the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked was done and every check held (exit 0).
    Success,
    /// A snapshot was written, but some source or repository failed.
    Partial,
    /// The command ran and reported a negative verdict (a check that did
    /// not hold, a failed restore); its report says why.
    Failed,
    /// The command refused what was asked and attempted nothing (`init` of
    /// a repository that exists); its report says why.
    Refused,
}

impl Outcome {
    /// [`Outcome::Success`] if `ok`, else [`Outcome::Failed`].
    pub fn verdict(ok: bool) -> Outcome {
        if ok {
            Outcome::Success
        } else {
            Outcome::Failed
        }
    }
}

/// The exit status of the binary, as documented in docs/DESIGN.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Status 0: the command did all it was asked and every check held.
    Ok,
    /// The command failed.
    Failure,
    /// Bad usage or configuration: nothing was attempted.
    Usage,
    /// A snapshot was written, but some source failed.
    Partial,
}

impl Exit {
    /// The one mapping from a command's result to its exit status.
    pub fn of(result: Result<Outcome, &Failure>) -> Exit {
        match result {
            Ok(Outcome::Success) => Exit::Ok,
            Ok(Outcome::Partial) => Exit::Partial,
            Ok(Outcome::Failed) => Exit::Failure,
            Ok(Outcome::Refused) => Exit::Usage,
            Err(f) => match f.class {
                Class::Usage => Exit::Usage,
                Class::Failure => Exit::Failure,
            },
        }
    }

    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Partial => 3,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// A failure that ends a command: its class and the operator-facing
/// message. Any classified error converts into it with `?`.
///
/// It deliberately does not implement [`std::error::Error`] (nor
/// [`Classify`]), so the blanket conversion below cannot overlap with
/// `From<Failure> for Failure`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which class the failure is of.
    pub class: Class,
    /// What is wrong and, where possible, how to fix it. Never a secret.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    /// A usage or configuration failure decided by the command line itself
    /// (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            class: Class::Usage,
            message: message.into(),
        }
    }

    /// A runtime failure decided by the command line itself (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            class: Class::Failure,
            message: message.into(),
        }
    }

    /// The same failure with `context` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl<E: Classify> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            class: e.class(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_chooses_every_exit_status() {
        assert_eq!(Exit::of(Ok(Outcome::Success)).code(), 0);
        assert_eq!(Exit::of(Ok(Outcome::Failed)).code(), 1);
        assert_eq!(Exit::of(Err(&Failure::usage("x"))).code(), 2);
        assert_eq!(Exit::of(Ok(Outcome::Partial)).code(), 3);
        assert_eq!(Exit::of(Err(&Failure::failed("x"))).code(), 1);
    }

    #[test]
    fn classified_errors_keep_their_class_through_question_mark() {
        fn usage() -> Result<(), Failure> {
            Err(InvalidInput("`--source [` is not a glob".into()))?;
            Ok(())
        }
        let f = usage().unwrap_err();
        assert_eq!(f.class, Class::Usage);
        assert_eq!(f.message, "`--source [` is not a glob");
    }
}
