//! The database-client layer: connections to PostgreSQL and Redis, the
//! choice of a PostgreSQL client tool, and where a client program runs
//! ([`launch::Launch`]).
//!
//! Everything that talks to a database server as a client lives here, below
//! the actors that use it: [`crate::sources`] (backup), [`crate::restore`]
//! (targets), [`crate::scratch`] (throw-away servers) and the operations.
//! None of those needs another actor to reach a server.

pub mod launch;
pub mod postgres;
pub mod redis;

use crate::engine::EngineError;

/// Why a database server could not be reached or asked, or a client tool
/// not found. Messages name the server, database or program and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// PostgreSQL gave no answer (connection and login) within the limit.
    #[error(
        "cannot connect to PostgreSQL database `{db}` {place} as `{user}`: no answer within {secs}s \
         (is the server up and not overloaded? [timeouts] connect sets the limit)"
    )]
    PostgresTimeout {
        /// The database.
        db: String,
        /// `at HOST:PORT` or ``in container `NAME` ``.
        place: String,
        /// The user.
        user: String,
        /// The limit in seconds.
        secs: u64,
    },
    /// PostgreSQL refused the connection or the login.
    #[error(
        "cannot connect to PostgreSQL database `{db}` {place} as `{user}`: {}{bridge}",
        postgres_detail(source)
    )]
    PostgresConnect {
        /// The database.
        db: String,
        /// `at HOST:PORT` or ``in container `NAME` ``.
        place: String,
        /// The user.
        user: String,
        /// What the byte bridge said on stderr (empty without a container).
        bridge: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{context}: {}", postgres_detail(source))]
    Postgres {
        /// What was being asked (`cannot read the server version`).
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A PostgreSQL answer was not what was expected.
    #[error("{0}")]
    PostgresData(String),
    /// Redis gave no answer within the limit.
    #[error("cannot connect to Redis {place}: timed out")]
    RedisTimeout {
        /// `at HOST:PORT` or ``in container `NAME` ``.
        place: String,
    },
    /// Redis refused the connection or the login.
    #[error(
        "cannot connect to Redis {place}: {source}{}{bridge}",
        redis_auth_hint(source)
    )]
    RedisConnect {
        /// `at HOST:PORT` or ``in container `NAME` ``.
        place: String,
        /// What the byte bridge said on stderr (empty without a container).
        bridge: String,
        /// The driver's error.
        source: ::redis::RedisError,
    },
    /// The Redis address cannot be used.
    #[error("bad Redis address {target}: {source}")]
    RedisAddress {
        /// `HOST:PORT` or the socket path.
        target: String,
        /// The driver's error.
        source: ::redis::RedisError,
    },
    /// The Redis client could not be set up.
    #[error("Redis at {target}: {source}")]
    RedisClient {
        /// `HOST:PORT` or the socket path.
        target: String,
        /// The driver's error.
        source: ::redis::RedisError,
    },
    /// A Redis command failed (`CONFIG GET dir`, `INFO keyspace`).
    #[error("Redis {command}: {source}")]
    Redis {
        /// The command.
        command: String,
        /// The driver's error.
        source: ::redis::RedisError,
    },
    /// Redis does not have the setting asked for.
    #[error("Redis has no setting `{0}`")]
    RedisNoSetting(String),
    /// A client program cannot be run inside the container.
    #[error("cannot run {program} in container `{container}`: {source}")]
    ToolInContainer {
        /// The program (`pg_dump`).
        program: String,
        /// The container.
        container: String,
        /// The engine's error.
        source: EngineError,
    },
    /// The engine that runs a client program in the container could not
    /// be used.
    #[error(transparent)]
    ToolEngine(EngineError),
    /// No suitable local client program was found.
    #[error("{0}")]
    NoTool(String),
    /// The container engine could not be used (for a connection's bridge
    /// or a tool's version).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ClientError {
    /// Whether the error is about a client tool (missing, too old, not
    /// runnable) rather than the server: the operator must install or
    /// configure something, and retrying does not help.
    pub fn is_tool(&self) -> bool {
        matches!(
            self,
            ClientError::ToolInContainer { .. }
                | ClientError::ToolEngine(_)
                | ClientError::NoTool(_)
        )
    }

    /// Whether the server refused the login: a wrong password or user
    /// (SQLSTATE 28P01 / 28000, Redis' authentication failure).
    pub fn is_auth(&self) -> bool {
        match self {
            ClientError::PostgresConnect { source, .. } => source.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
                    || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }),
            ClientError::RedisConnect { source, .. } => !redis_auth_hint(source).is_empty(),
            _ => false,
        }
    }
}

impl crate::error::Classify for ClientError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// The server's own message for a statement or login that failed, else the
/// driver's.
pub(crate) fn postgres_detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// ` (check redis.password)` when Redis refused the credentials.
fn redis_auth_hint(e: &::redis::RedisError) -> &'static str {
    let s = e.to_string();
    if e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || s.contains("NOAUTH")
        || s.contains("WRONGPASS")
        || s.contains("invalid password")
    {
        " (check redis.password)"
    } else {
        ""
    }
}
