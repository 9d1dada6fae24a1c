//! Errors at the edge of the library and the exit codes they map to.
//!
//! Modules keep their own typed errors; this module only decides how a
//! failure is reported to the operator: the exit status of design §2
//! (0 ok, 1 failure, 2 usage or configuration, 3 partial).

use std::process::ExitCode;

/// The exit status of a command, as documented in design §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Ok,
    /// The command failed.
    Failure,
    /// Bad usage or configuration: nothing was attempted.
    Usage,
    /// A snapshot was written, but some source failed.
    Partial,
}

impl Exit {
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

/// A failure that ends a command, with the exit status it deserves.
///
/// The message is written for the operator: it says what is wrong and,
/// where possible, how to fix it. It never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Which exit status the failure maps to.
    pub exit: Exit,
    /// The operator-facing message.
    pub message: String,
}

impl Failure {
    /// A usage or configuration failure (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// A runtime failure (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            exit: Exit::Failure,
            message: message.into(),
        }
    }
}

impl From<crate::model::config::ConfigError> for Failure {
    fn from(e: crate::model::config::ConfigError) -> Self {
        Failure::usage(e.to_string())
    }
}

impl From<crate::repository::RepositoryError> for Failure {
    fn from(e: crate::repository::RepositoryError) -> Self {
        let exit = match e {
            crate::repository::RepositoryError::NotInitialised { .. }
            | crate::repository::RepositoryError::AlreadyInitialised { .. } => Exit::Usage,
            _ => Exit::Failure,
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}
