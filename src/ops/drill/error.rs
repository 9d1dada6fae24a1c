//! [`DrillError`]: a drill file that cannot be used, or a drill that could
//! not run to its report.

use std::path::PathBuf;

use crate::error::{Class, Classify};
use crate::ops::verify::VerifyError;

/// Why drills could not be loaded or one could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The drill file cannot be read.
    #[error("drill {}: cannot read it: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The drill file is not valid TOML for a drill.
    #[error(
        "drill {}{}: {message}",
        .path.display(),
        .line.map(|l| format!(" line {l}")).unwrap_or_default()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line of the problem, when the parser knows it.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The drill file parses but describes something invalid: its name, a
    /// source pattern, or a check (`check[i]`).
    #[error("drill {}: {problem}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or the check's index.
        #[source]
        problem: crate::error::InvalidInput,
    },
    /// `drills_dir` cannot be read.
    #[error(
        "cannot read drills_dir {}: {source}; set drills_dir in {} or pass --drill FILE",
        .dir.display(),
        .config.display()
    )]
    DrillsDir {
        /// The directory.
        dir: PathBuf,
        /// The configuration file that names it.
        config: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `drills_dir` holds no drill.
    #[error("no drill (*.toml) in {}", .0.display())]
    NoDrills(PathBuf),
    /// The drill names a repository that is not configured.
    #[error("drill {drill}: {message}")]
    Repository {
        /// The drill.
        drill: String,
        /// Which repositories there are.
        message: String,
    },
    /// The private key, which every drill needs to restore, is not usable.
    #[error("a drill restores, so it needs the private key: {0}")]
    Key(crate::error::InvalidInput),
    /// No repository is configured at all.
    #[error("no [[repository]] is configured")]
    NoRepository,
    /// A stack drill cannot run with this configuration.
    #[error("drill {drill}: {message}")]
    Stack {
        /// The drill.
        drill: String,
        /// What is missing, naming the key.
        message: String,
    },
    /// A stack drill could not start: its engine cannot be reached.
    #[error("drill {drill}: {source}")]
    StackRun {
        /// The drill.
        drill: String,
        /// Why.
        #[source]
        source: Box<super::stack::error::StackError>,
    },
    /// The verification under the drill could not run.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The report could not be written.
    #[error("{doing}: {source}")]
    Report {
        /// What was being written.
        doing: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl DrillError {
    /// `doing: e` for a report that cannot be written, for `map_err`.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> DrillError {
        let doing = doing.into();
        move |source| DrillError::Report { doing, source }
    }
}

impl Classify for DrillError {
    /// Drill files, `drills_dir` and repository names are the operator's to
    /// fix; a verification keeps its class; a report that cannot be
    /// written is a failure.
    fn class(&self) -> Class {
        match self {
            DrillError::Read { .. }
            | DrillError::Parse { .. }
            | DrillError::Invalid { .. }
            | DrillError::DrillsDir { .. }
            | DrillError::NoDrills(_)
            | DrillError::Repository { .. }
            | DrillError::Key(_)
            | DrillError::NoRepository
            | DrillError::Stack { .. }
            | DrillError::StackRun { .. } => Class::Usage,
            DrillError::Verify(e) => e.class(),
            DrillError::Report { .. } => Class::Failure,
        }
    }
}
