//! What can stop a stack drill, typed: the step that failed, and below it
//! the engine, the scratch directory, the restore, an app's wait, or an
//! `[[app]] http` check — each keeping its cause.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineError;

/// Why a stack drill stopped.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A step failed: `network`, `databases`, `restore` or `apps`.
    #[error("{step}: {source}")]
    Step {
        /// The step.
        step: &'static str,
        /// Why.
        #[source]
        source: Box<StackError>,
    },
    /// The Docker engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A scratch directory cannot be created.
    #[error("cannot create {}: {source}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot's sources cannot be planned for restore.
    #[error(transparent)]
    Plan(#[from] crate::ops::restore::RestoreRunError),
    /// Sources that did not come back: (source, why), the why redacted.
    #[error("not restored: {}", join(.0))]
    Restore(Vec<(String, String)>),
    /// The PostgreSQL clone never accepted connections.
    #[error(
        "the PostgreSQL clone {name} did not start{}: {last}; its log: {log}",
        if *.exited { " (it exited)" } else { "" }
    )]
    Postgres {
        /// The clone.
        name: String,
        /// Whether it exited (else it timed out).
        exited: bool,
        /// The last connection error.
        last: String,
        /// Its last log lines.
        log: String,
    },
    /// Apps that did not become healthy: (app, what was seen).
    #[error("{}", .0.iter().map(|(a, d)| format!("app {a}: {d}")).collect::<Vec<_>>().join("; "))]
    Apps(Vec<(String, String)>),
}

fn join(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(s, m)| format!("{s}: {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl StackError {
    /// This error as what stopped drill `drill` before its report.
    pub(super) fn into_drill(self, drill: &str) -> super::DrillError {
        super::DrillError::StackRun {
            drill: drill.to_owned(),
            source: Box::new(self),
        }
    }

    /// This error as the failure of step `step`.
    pub(super) fn in_step(self, step: &'static str) -> StackError {
        StackError::Step {
            step,
            source: Box::new(self),
        }
    }
}

/// Why one app did not become healthy.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Its production container cannot be inspected.
    #[error("cannot clone it: {0}")]
    Production(#[source] EngineError),
    /// Its clone cannot be created or started.
    #[error("cannot start its clone: {0}")]
    Start(#[source] Box<StackError>),
    /// Its health cannot be asked.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Its clone exited.
    #[error(
        "it exited (code {}){}",
        .code.map_or("?".into(), |c| c.to_string()),
        said(.last_check)
    )]
    Exited {
        /// Its exit code, when known.
        code: Option<i64>,
        /// Its last healthcheck's output, when it has one.
        last_check: Option<String>,
    },
    /// Docker reports it unhealthy.
    #[error("Docker reports it unhealthy{}", said(.last_check))]
    Unhealthy {
        /// Its last healthcheck's output.
        last_check: Option<String>,
    },
    /// It has no healthcheck and no `[[app]] http`.
    #[error(
        "its production container has no healthcheck, so the drill cannot tell \
         whether it works: give it one (HEALTHCHECK in its image or compose file)"
    )]
    NoHealthcheck,
    /// Not healthy within `app_timeout`.
    #[error(
        "still {status} after {} (app_timeout){}",
        humantime::format_duration(*.timeout),
        said(.last_check)
    )]
    Timeout {
        /// Its last health status.
        status: String,
        /// `app_timeout`.
        timeout: Duration,
        /// Its last healthcheck's output.
        last_check: Option<String>,
    },
    /// Its `[[app]] http` URL gave no 2xx answer within `app_timeout`.
    #[error(
        "{url} gave no 2xx answer within {} (app_timeout): {last}",
        humantime::format_duration(*.timeout)
    )]
    Http {
        /// The URL.
        url: url::Url,
        /// `app_timeout`.
        timeout: Duration,
        /// The last check's failure.
        #[source]
        last: HttpError,
    },
}

fn said(out: &Option<String>) -> String {
    out.as_deref()
        .map(|o| format!("; its last healthcheck said: {}", o.replace('\n', " | ")))
        .unwrap_or_default()
}

/// Why one `[[app]] http` check failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL's host is no alias on the drill's network.
    #[error("`{0}` is no alias of a container on the drill's network")]
    NoAlias(String),
    /// The clone has no address on the drill's network.
    #[error("{clone} has no address on {network}")]
    NoAddress {
        /// The clone.
        clone: String,
        /// The drill's network.
        network: String,
    },
    /// The clone cannot be inspected.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No answer in time.
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// No connection.
    #[error("cannot connect to {addr}:{port}: {source}")]
    Connect {
        /// The address.
        addr: IpAddr,
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be built from the URL.
    #[error("bad request: {0}")]
    Request(#[source] hyper::http::Error),
    /// The HTTP exchange failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// An answer that is not 2xx.
    #[error("it answered HTTP {0}")]
    Status(u16),
}
