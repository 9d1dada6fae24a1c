//! `[postgres]`: the PostgreSQL source — where the server is, how to log in,
//! which databases to dump and with which client tools.
//!
//! The server is named by one URL (`postgres://USER@HOST:PORT/DATABASE`, or
//! `?host=/socket/dir` for a unix socket), parsed here into a [`PgEndpoint`]
//! by [`parse_postgres_url`]; restore's `--target-url` uses the same parser.
//! A password belongs in `password`, `password_file` or
//! `password_credential`; one in the URL is accepted only if none of those
//! is set.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::cx::percent_decode;
use super::docker::{ContainerRef, DockerConfig};
use super::{ConfigError, Cx};
use crate::model::secret::Secret;

/// `[postgres]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    url: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    credentials_from_container: Option<bool>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    databases: Option<Spanned<Vec<Spanned<String>>>>,
    globals: Option<bool>,
    docker_container: Option<Spanned<String>>,
    bin_dir: Option<Spanned<String>>,
    jobs: Option<Spanned<i64>>,
    lock_wait: Option<Spanned<String>>,
    stall_timeout: Option<Spanned<String>>,
    wal: Option<RawWal>,
}

/// `[postgres.wal]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWal {
    enabled: Option<bool>,
    max_lag: Option<Spanned<String>>,
    slot: Option<Spanned<String>>,
    spool_dir: Option<Spanned<String>>,
}

/// `[postgres.wal]`: continuous WAL archiving (docs/DESIGN.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// The segment being written is shipped at least this often: the
    /// recovery point objective (`max_lag`, 60 s by default).
    pub max_lag: std::time::Duration,
    /// A replication slot to stream from (created if missing), so the
    /// server keeps WAL the archiver has not received.
    pub slot: Option<String>,
    /// Where pg_receivewal writes before a file is shipped (a few
    /// segments at most): `/var/lib/kompose-dr/wal` by default.
    pub spool_dir: PathBuf,
}

/// The default spool directory of the WAL archiver.
pub const DEFAULT_WAL_SPOOL: &str = "/var/lib/kompose-dr/wal";

impl RawPostgres {
    /// `postgres.stall_timeout`, validated with `[timeouts]`.
    pub(super) fn stall_timeout(&self) -> Option<&Spanned<String>> {
        self.stall_timeout.as_ref()
    }
}

/// Which databases to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSelection {
    /// Every non-template database the user may connect to (`["*"]`).
    All,
    /// Exactly the databases named in `postgres.databases`: distinct, non-empty
    /// names, without `*`.
    List(Vec<String>),
}

/// How to reach the PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgEndpoint {
    /// Host name, address, or a unix socket directory (starts with `/`).
    pub host: String,
    /// TCP port (also names the unix socket).
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Database used for discovery and `pg_dumpall`.
    pub maintenance_db: String,
}

/// The PostgreSQL source: where the server is, how to log in, which
/// databases to dump, and with which client tools.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Where the server listens, the role to log in as and the maintenance
    /// database, all parsed from `postgres.url`.
    pub endpoint: PgEndpoint,
    /// Password, if the server asks for one.
    pub password: Option<Secret>,
    /// Which databases get a dump: every one (`["*"]`, also when the key is
    /// absent) or a fixed list.
    pub databases: DatabaseSelection,
    /// Back up roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: bool,
    /// The server's container (`postgres.container`): everything — the
    /// control session, pg_dump, pg_restore, psql — goes through the engine.
    pub container: Option<ContainerRef>,
    /// With a container: take the user from its `POSTGRES_USER` (unless
    /// `user` or the URL names one) and the password from its
    /// `POSTGRES_PASSWORD` (unless a password key is set).
    /// `postgres.credentials_from_container`, on by default.
    pub credentials_from_container: bool,
    /// Whether the configuration named the user (`user`, or the URL).
    pub user_configured: bool,
    /// Use the client tools from this directory only.
    pub bin_dir: Option<PathBuf>,
    /// Databases dumped at once.
    pub jobs: NonZeroUsize,
    /// How long pg_dump and the row counts wait for a table lock another
    /// session holds (`postgres.lock_wait`, 5 minutes by default) before the
    /// source fails: one `ACCESS EXCLUSIVE` lock must not hang the nightly
    /// run, and with it the repository lock.
    pub lock_wait: std::time::Duration,
    /// Continuous WAL archiving and base backups (`[postgres.wal]` with
    /// `enabled = true`); `None` when off.
    pub wal: Option<WalConfig>,
}

impl Cx<'_> {
    /// Validates `[postgres]`: the endpoint from `postgres.url`, the password
    /// from the URL or the `postgres.password*` keys but never both, the
    /// databases (all by default), `globals` (on by default),
    /// `docker_container`, `bin_dir`, and `jobs` (1 to 64, 2 by default).
    pub(super) fn postgres(
        &self,
        p: &RawPostgres,
        docker: &DockerConfig,
    ) -> Result<PostgresConfig, ConfigError> {
        let container = self.postgres_container(p, docker)?;
        let (endpoint, password, user_configured) = self.postgres_login(p, container.as_ref())?;
        let databases = match &p.databases {
            None => DatabaseSelection::All,
            Some(list) => self.databases(list)?,
        };
        let jobs = self.postgres_jobs(p)?;
        let bin_dir = p
            .bin_dir
            .as_ref()
            .map(|b| self.path(b, "postgres.bin_dir"))
            .transpose()?;
        let lock_wait = self.postgres_lock_wait(p)?;
        let wal = match &p.wal {
            Some(w) if w.enabled.unwrap_or(true) => Some(self.wal(w)?),
            _ => None,
        };
        Ok(PostgresConfig {
            wal,
            endpoint,
            password,
            databases,
            globals: p.globals.unwrap_or(true),
            credentials_from_container: p.credentials_from_container.unwrap_or(true),
            user_configured,
            container,
            bin_dir,
            jobs,
            lock_wait,
        })
    }

    /// `container`, or its older name `docker_container` (never both).
    fn postgres_container(
        &self,
        p: &RawPostgres,
        docker: &DockerConfig,
    ) -> Result<Option<ContainerRef>, ConfigError> {
        if let (Some(_), Some(dc)) = (&p.container, &p.docker_container) {
            let span = dc.span();
            return Err(self.err(
                span,
                "postgres.docker_container",
                "postgres.container is set too: keep only postgres.container",
            ));
        }
        // `docker_container` is the older name of `container`.
        let container = match (&p.container, &p.docker_container) {
            (Some(c), _) => Some(self.container(c, "postgres.container", docker)?),
            (None, Some(c)) => Some(self.container(c, "postgres.docker_container", docker)?),
            (None, None) => None,
        };
        Ok(container)
    }

    /// The server's address and login: `url` (or the container's own
    /// loopback), `user`, and the password from the URL or the
    /// `password*` keys but never both. Also whether the user was
    /// configured.
    fn postgres_login(
        &self,
        p: &RawPostgres,
        container: Option<&ContainerRef>,
    ) -> Result<(PgEndpoint, Option<Secret>, bool), ConfigError> {
        let (mut endpoint, url_password) = match (&p.url, container) {
            (Some(url), _) => {
                let url_s = self.string(url, "postgres.url")?;
                let bad = |msg: String| self.err(url.span(), "postgres.url", msg);
                parse_postgres_url(&url_s).map_err(|e| bad(e.to_string()))?
            }
            (None, Some(_)) => (
                // Inside the container: its own loopback.
                PgEndpoint {
                    host: "127.0.0.1".into(),
                    port: 5432,
                    user: "postgres".into(),
                    maintenance_db: "postgres".into(),
                },
                None,
            ),
            (None, None) => {
                return Err(self.err(
                    0..0,
                    "postgres",
                    "neither url nor container is set: write container = \"core-postgres\" \
                     (the server's container) or url = \"postgres://USER@HOST:5432/postgres\"",
                ));
            }
        };
        let mut user_configured = p.url.is_some();
        if let Some(u) = &p.user {
            let user = self.string(u, "postgres.user")?;
            if user.is_empty() {
                return Err(self.err(u.span(), "postgres.user", "empty user name"));
            }
            endpoint.user = user;
            user_configured = true;
        }
        let mut password = self.secret(
            "postgres",
            &p.password,
            &p.password_file,
            &p.password_credential,
        )?;
        if let Some(pw) = url_password {
            if password.is_some() {
                return Err(self.err(
                    p.url.as_ref().map(|u| u.span()).unwrap_or(0..0),
                    "postgres.url",
                    "the URL carries a password and postgres.password is set too: keep only postgres.password",
                ));
            }
            password = Some(pw);
        }
        Ok((endpoint, password, user_configured))
    }

    /// `jobs`: 1 to 64, 2 by default.
    fn postgres_jobs(&self, p: &RawPostgres) -> Result<NonZeroUsize, ConfigError> {
        Ok(match &p.jobs {
            None => NonZeroUsize::new(2).expect("2 > 0"),
            Some(j) => usize::try_from(*j.get_ref())
                .ok()
                .filter(|n| (1..=64).contains(n))
                .and_then(NonZeroUsize::new)
                .ok_or_else(|| self.err(j.span(), "postgres.jobs", "use a number from 1 to 64"))?,
        })
    }

    /// `lock_wait`: a duration above zero, 5 minutes by default.
    fn postgres_lock_wait(&self, p: &RawPostgres) -> Result<std::time::Duration, ConfigError> {
        Ok(match &p.lock_wait {
            None => std::time::Duration::from_secs(300),
            Some(w) => {
                let s = self.string(w, "postgres.lock_wait")?;
                humantime::parse_duration(&s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        self.err(
                            w.span(),
                            "postgres.lock_wait",
                            format!("`{s}` is not a duration above zero: write 5m or 30s"),
                        )
                    })?
            }
        })
    }

    /// `[postgres.wal]`: `max_lag` (1 s to 1 h, 60 s by default), `slot` (a
    /// replication slot name: lower-case letters, digits, `_`), `spool_dir`.
    fn wal(&self, w: &RawWal) -> Result<WalConfig, ConfigError> {
        let max_lag = match &w.max_lag {
            None => std::time::Duration::from_secs(60),
            Some(v) => {
                let s = self.string(v, "postgres.wal.max_lag")?;
                humantime::parse_duration(&s)
                    .ok()
                    .filter(|d| (1..=3600).contains(&d.as_secs()))
                    .ok_or_else(|| {
                        self.err(
                            v.span(),
                            "postgres.wal.max_lag",
                            format!("`{s}` is not a duration from 1s to 1h: write 60s or 5m"),
                        )
                    })?
            }
        };
        let slot = match &w.slot {
            None => None,
            Some(v) => {
                let s = self.string(v, "postgres.wal.slot")?;
                if s.is_empty()
                    || s.len() > 63
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(self.err(
                        v.span(),
                        "postgres.wal.slot",
                        format!(
                            "`{s}` is not a replication slot name: use lower-case letters, digits and _ (at most 63)"
                        ),
                    ));
                }
                Some(s)
            }
        };
        let spool_dir = match &w.spool_dir {
            None => PathBuf::from(DEFAULT_WAL_SPOOL),
            Some(v) => self.path(v, "postgres.wal.spool_dir")?,
        };
        Ok(WalConfig {
            max_lag,
            slot,
            spool_dir,
        })
    }

    /// `postgres.databases`: `["*"]` alone, or distinct database names.
    fn databases(
        &self,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<DatabaseSelection, ConfigError> {
        let names = list.get_ref();
        if names.is_empty() {
            return Err(self.err(
                list.span(),
                "postgres.databases",
                "empty list: name the databases or write [\"*\"] for all",
            ));
        }
        if names.iter().any(|n| n.get_ref() == "*") {
            if names.len() != 1 {
                return Err(self.err(
                    list.span(),
                    "postgres.databases",
                    "\"*\" means every database and must stand alone",
                ));
            }
            return Ok(DatabaseSelection::All);
        }
        let mut v: Vec<String> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let key = format!("postgres.databases[{i}]");
            let s = self.string(n, &key)?;
            if s.is_empty() || s.contains('\0') || s.contains('/') {
                return Err(self.err(n.span(), &key, "not a database name"));
            }
            if v.contains(&s) {
                return Err(self.err(n.span(), &key, format!("`{s}` is listed twice")));
            }
            v.push(s);
        }
        Ok(DatabaseSelection::List(v))
    }
}

/// Why a `postgres://` URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostgresUrlError {
    /// Not a URL at all.
    #[error("not a URL ({0}): write postgres://USER@HOST:PORT/DATABASE")]
    NotUrl(#[source] url::ParseError),
    /// Another scheme than `postgres://`.
    #[error("scheme `{0}` is not postgres://: write postgres://USER@HOST:PORT/DATABASE")]
    Scheme(String),
    /// `?port=` is not a number.
    #[error("port `{0}` is not a number")]
    Port(String),
    /// A parameter other than `host` and `port`.
    #[error("unsupported URL parameter `{0}` (only host and port are understood)")]
    Parameter(String),
    /// The URL names no user.
    #[error(
        "no user: write postgres://USER@HOST:PORT/DATABASE (Kompose uses DB_USER, default kompose)"
    )]
    NoUser,
}

/// Parses `postgres://USER@HOST:PORT/DATABASE` (also `?host=/socket/dir`)
/// into an endpoint and the password the URL carries, if any.
pub fn parse_postgres_url(url_s: &str) -> Result<(PgEndpoint, Option<Secret>), PostgresUrlError> {
    let url = url::Url::parse(url_s).map_err(PostgresUrlError::NotUrl)?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err(PostgresUrlError::Scheme(url.scheme().to_owned()));
    }
    let mut host = url.host_str().unwrap_or("").to_owned();
    let mut port = url.port().unwrap_or(5432);
    for (k, v) in url.query_pairs() {
        match &*k {
            "host" => host = v.into_owned(),
            "port" => {
                port = v
                    .parse()
                    .map_err(|_| PostgresUrlError::Port(v.clone().into_owned()))?
            }
            other => {
                return Err(PostgresUrlError::Parameter(other.to_owned()));
            }
        }
    }
    if host.is_empty() {
        host = "localhost".to_owned();
    }
    let user = percent_decode(url.username());
    if user.is_empty() {
        return Err(PostgresUrlError::NoUser);
    }
    let maintenance_db = match url.path().trim_start_matches('/') {
        "" => "postgres".to_owned(),
        d => percent_decode(d),
    };
    Ok((
        PgEndpoint {
            host,
            port,
            user,
            maintenance_db,
        },
        url.password().map(|p| Secret::new(percent_decode(p))),
    ))
}
