//! Scratch instances: throw-away servers that share nothing with
//! production, for `verify` and `drill` to restore into.
//!
//! [`ScratchRuntime`] is the seam: `process` runs local binaries (an
//! `initdb` cluster and a `redis-server`, each on a unix socket in a
//! private 0700 directory), `docker` throw-away containers. Every instance
//! is a guard: dropping it — on
//! success, failure, panic or cancellation (Ctrl-C/SIGTERM are turned into
//! cancellation by the CLI) — kills its process and removes its directory.

pub mod docker;
pub mod process;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::{Class, Classify};
use crate::model::config::{
    DatabaseSelection, PgEndpoint, PostgresConfig, RedisConfig, ScratchRuntimeKind,
};

/// Why a scratch instance could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The PostgreSQL server binaries of a major version are not installed.
    #[error(
        "PostgreSQL {major} server binaries are missing ({} not found): install postgresql-{major}, \
         or set [scratch] postgres_bin to where they are",
        .missing.display()
    )]
    NoPostgres {
        /// The major version needed.
        major: u32,
        /// The binary looked for.
        missing: PathBuf,
    },
    /// `redis-server` is not on the `PATH`.
    #[error("redis-server is missing: install redis-server (Debian: apt install redis-server)")]
    NoRedis,
    /// The user scratch servers run as (when we are root) is not usable.
    #[error("{0}")]
    User(String),
    /// A directory, file, port or process could not be set up.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: String,
        /// The error.
        source: std::io::Error,
    },
    /// The container engine could not run a scratch container.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The server was started but did not come up (or `initdb` failed);
    /// the message carries the tail of its log.
    #[error("{0}")]
    DidNotStart(String),
    /// A point-in-time recovery ran out of WAL before its target time
    /// (PostgreSQL refuses to promote then); the message carries the log.
    #[error("{0}")]
    TargetNotReached(String),
}

impl ScratchError {
    /// `doing: e` for an I/O error, as a closure for `map_err`.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> ScratchError {
        let doing = doing.into();
        move |source| ScratchError::Io { doing, source }
    }
}

impl Classify for ScratchError {
    /// A scratch instance that cannot run is a failure of the host
    /// (`verify` and drills exit 1); the message says what to install.
    fn class(&self) -> Class {
        match self {
            ScratchError::Engine(e) => e.class(),
            _ => Class::Failure,
        }
    }
}

/// A running scratch PostgreSQL.
pub trait ScratchPostgres: Send + Sync {
    /// How to reach it (a unix socket directory; no password).
    fn endpoint(&self) -> PgEndpoint;
    /// Its major version.
    fn major(&self) -> u32;

    /// Connection settings for it, as for a configured server: no password,
    /// no container, the client tools found on the `PATH`.
    fn connection(&self) -> PostgresConfig {
        PostgresConfig {
            endpoint: self.endpoint(),
            password: None,
            databases: DatabaseSelection::All,
            globals: true,
            container: None,
            credentials_from_container: false,
            user_configured: true,
            bin_dir: None,
            jobs: std::num::NonZeroUsize::MIN,
            wal: None,
            // Nothing else uses a scratch server: no lock to wait for.
            lock_wait: std::time::Duration::from_secs(300),
        }
    }
}

/// A running scratch Redis.
pub trait ScratchRedis: Send + Sync {
    /// Connection settings for it (its unix socket or container, and its
    /// password).
    fn connection(&self) -> RedisConfig;
}

/// Starts scratch instances.
#[async_trait]
pub trait ScratchRuntime: Send + Sync {
    /// A PostgreSQL server of this major version.
    async fn postgres(&self, major: u32) -> Result<Box<dyn ScratchPostgres>, ScratchError>;
    /// A Redis server on the files in `data_dir` (AOF or RDB). The files
    /// may be taken: moved into the server's own directory, removed with
    /// it.
    async fn redis(
        &self,
        data_dir: &Path,
        aof: bool,
    ) -> Result<Box<dyn ScratchRedis>, ScratchError>;
    /// A private temporary directory (removed when dropped).
    fn tempdir(&self) -> Result<tempfile::TempDir, ScratchError>;
}

/// The scratch runtime `[scratch] runtime` names: local processes, or
/// containers from the production images.
pub fn runtime(config: &crate::model::config::Config) -> Box<dyn ScratchRuntime> {
    match config.scratch.runtime {
        ScratchRuntimeKind::Process => Box::new(process::ProcessRuntime::new(&config.scratch)),
        ScratchRuntimeKind::Docker => Box::new(docker::DockerRuntime::new(config)),
    }
}

/// Where point-in-time recoveries run: local server binaries, or a scratch
/// container from the production image (`[scratch] runtime`). Both fill
/// the same private host directory ([`process::RecoveryDir`]).
pub enum RecoveryRuntime {
    /// Local PostgreSQL server binaries.
    Process(process::ProcessRuntime),
    /// A scratch container on the engine.
    Docker(docker::DockerRuntime),
}

impl RecoveryRuntime {
    /// The runtime `scratch` names; `postgres_container` is the production
    /// container whose image a docker recovery uses unless `[scratch] image`
    /// says otherwise.
    pub fn new(
        scratch: &crate::model::config::ScratchConfig,
        postgres_container: Option<&crate::model::config::ContainerRef>,
    ) -> RecoveryRuntime {
        match scratch.runtime {
            ScratchRuntimeKind::Process => {
                RecoveryRuntime::Process(process::ProcessRuntime::new(scratch))
            }
            ScratchRuntimeKind::Docker => RecoveryRuntime::Docker(
                docker::DockerRuntime::for_recovery(scratch, postgres_container),
            ),
        }
    }

    /// A private directory for a recovery, to fill with the base backup and
    /// the WAL.
    pub fn recovery_dir(&self) -> Result<process::RecoveryDir, ScratchError> {
        match self {
            RecoveryRuntime::Process(rt) => rt.recovery_dir(),
            RecoveryRuntime::Docker(rt) => rt.recovery_dir(),
        }
    }

    /// Recovers the filled directory to the request's target and promotes
    /// it (see [`process::ProcessRuntime::recover`]).
    pub async fn recover(
        &self,
        dir: process::RecoveryDir,
        request: process::RecoveryRequest<'_>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Recovered, ScratchError> {
        Ok(match self {
            RecoveryRuntime::Process(rt) => {
                Recovered::Process(rt.recover(dir, request, cancel).await?)
            }
            RecoveryRuntime::Docker(rt) => {
                Recovered::Docker(rt.recover(dir, request, cancel).await?)
            }
        })
    }
}

/// A cluster recovered to its target and promoted, by either runtime.
pub enum Recovered {
    /// A local server process.
    Process(process::RecoveredPostgres),
    /// A scratch container.
    Docker(docker::recovery::DockerRecovered),
}

impl Recovered {
    /// Connection settings for it (a local socket, or the container).
    pub fn connection(&self) -> PostgresConfig {
        match self {
            Recovered::Process(s) => s.connection(),
            Recovered::Docker(s) => s.connection(),
        }
    }

    /// Its major version.
    pub fn major(&self) -> u32 {
        match self {
            Recovered::Process(s) => s.major(),
            Recovered::Docker(s) => s.major(),
        }
    }

    /// Stops it with a fast shutdown and waits, at most `limit`; its data
    /// directory is then clean (a directory meant to be kept).
    pub async fn shut_down(self, limit: std::time::Duration) -> Result<(), ScratchError> {
        match self {
            Recovered::Process(s) => s.shut_down(limit).await,
            Recovered::Docker(s) => s.shut_down(limit).await,
        }
    }
}

impl ScratchPostgres for Recovered {
    fn endpoint(&self) -> PgEndpoint {
        Recovered::connection(self).endpoint
    }

    fn major(&self) -> u32 {
        Recovered::major(self)
    }

    fn connection(&self) -> PostgresConfig {
        Recovered::connection(self)
    }
}
