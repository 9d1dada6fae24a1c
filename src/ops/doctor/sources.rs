//! The sources' checks: what the nightly backup will ask of PostgreSQL,
//! Redis and the files, asked now with the configured credentials, each
//! bounded by `[timeouts] connect`.
//!
//! PostgreSQL: log in, the configured databases exist, a pg_dump (and
//! pg_dumpall) of the server's major version or newer is found by the
//! source's own selection ([`crate::clients::postgres::choose_client`]),
//! and the role may dump the globals. Redis: PING after AUTH, and the data
//! directory readable. Files: each path a readable regular file.

use std::path::Path;
use std::time::Duration;

use super::{Check, Verdict, check};
use crate::clients::postgres as pg;
use crate::model::config::{Config, DatabaseSelection, PostgresConfig};

/// `postgres: …` checks.
/// Returns the server's major version, when it answered.
pub(super) async fn postgres(config: &Config, checks: &mut Vec<Check>) -> Option<u32> {
    let cfg = config.postgres.as_ref()?;
    let probe = match PgProbe::connect(config, cfg).await {
        Ok(p) => p,
        Err(message) => {
            checks.push(check("postgres: connect", Err(message)));
            return None;
        }
    };
    checks.push(check(
        "postgres: connect",
        Verdict::Ok(format!(
            "PostgreSQL {} answers; `{}` logged in",
            probe.server.text, probe.resolved.endpoint.user
        )),
    ));
    checks.push(probe.databases().await);
    if let Some(c) = probe.set_aside().await {
        checks.push(c);
    }
    probe.tools(checks).await;
    if cfg.globals {
        checks.push(probe.globals().await);
    }
    Some(probe.server.major)
}

/// A PostgreSQL server logged in to as the backup will, for the checks
/// after `postgres: connect`.
struct PgProbe<'a> {
    /// The configuration file, for messages.
    file: std::path::Display<'a>,
    /// `[postgres]` as configured.
    cfg: &'a PostgresConfig,
    /// `[postgres]` with its container resolved to an address.
    resolved: PostgresConfig,
    /// `[timeouts] connect`.
    limit: Duration,
    client: tokio_postgres::Client,
    server: pg::ServerVersion,
}

impl<'a> PgProbe<'a> {
    /// Resolves the container, logs in and asks the server's version; the
    /// `postgres: connect` failure, with what to fix, if any step fails.
    async fn connect(config: &'a Config, cfg: &'a PostgresConfig) -> Verdict<Self> {
        let limit = config.timeouts.connect;
        let file = config.path.display();
        let resolved = match tokio::time::timeout(limit, pg::resolve(cfg)).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => {
                return Err(format!(
                    "the container engine did not answer within {}s: is dockerd up? ([timeouts] connect sets the limit)",
                    limit.as_secs()
                )
                .into());
            }
        };
        let ep = &resolved.endpoint;
        let client = pg::connect_within(&resolved, &ep.maintenance_db, limit)
            .await
            .map_err(|e| format!("{e}{}", connect_fix(&e, cfg, &resolved, &file)))?;
        let server = pg::server_version(&client)
            .await
            .map_err(|e| e.to_string())?;
        Ok(PgProbe {
            file,
            cfg,
            resolved,
            limit,
            client,
            server,
        })
    }

    /// `postgres: databases`: the databases the backup will dump are there.
    async fn databases(&self) -> Check {
        let (file, user) = (&self.file, &self.resolved.endpoint.user);
        let present = bounded(self.limit, pg::discover(&self.client)).await;
        let result = match (present, &self.cfg.databases) {
            (Err(e), _) => Err(e.0),
            (Ok(present), DatabaseSelection::All) if present.is_empty() => Err(format!(
                "databases = [\"*\"] but `{user}` may connect to no database: grant CONNECT, or list them in postgres.databases in {file}"
            )),
            (Ok(present), DatabaseSelection::All) => {
                Ok(format!("all of them (\"*\"): {}", present.join(", ")))
            }
            (Ok(present), DatabaseSelection::List(wanted)) => {
                let missing: Vec<&str> = wanted
                    .iter()
                    .filter(|w| !present.contains(w))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    Ok(format!("all present: {}", wanted.join(", ")))
                } else {
                    Err(format!(
                        "missing on the server (or `{user}` may not connect): {}; create them (CREATE DATABASE …), \
                         grant CONNECT, or remove them from postgres.databases in {file}",
                        missing.join(", ")
                    ))
                }
            }
        };
        check("postgres: databases", result)
    }

    /// `postgres: replaced databases`: what `restore --replace` kept aside
    /// (`kdr_replaced_*`, never backed up), each with the command that
    /// drops it once the restore is confirmed; nothing when there is none.
    async fn set_aside(&self) -> Option<Check> {
        let result = match bounded(self.limit, pg::set_aside(&self.client)).await {
            Ok(dbs) if dbs.is_empty() => return None,
            Ok(dbs) => Err(format!(
                "{} kept aside by `restore --replace` (what the replaced databases held; never backed up): \
                 check each, then drop it: {}",
                dbs.join(", "),
                dbs.iter()
                    .map(|d| format!("DROP DATABASE {};", pg::quote_ident(d)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            Err(e) => Err(e.0),
        };
        Some(check("postgres: replaced databases", result))
    }

    /// `postgres: pg_dump` (and `pg_dumpall`): the client tools, chosen the
    /// way the backup chooses them.
    async fn tools(&self, checks: &mut Vec<Check>) {
        let what = format!("the server (PostgreSQL {})", self.server.text);
        let mut programs = vec!["pg_dump"];
        if self.cfg.globals {
            programs.push("pg_dumpall");
        }
        for program in programs {
            let chosen = tokio::time::timeout(
                self.limit,
                pg::choose_client(&self.resolved, program, self.server.major, &what),
            )
            .await;
            let result = match chosen {
                Ok(Ok(pg::DumpTool::Local { bin_dir, version })) => {
                    Ok(format!("{} ({version})", bin_dir.join(program).display()))
                }
                Ok(Ok(pg::DumpTool::Container {
                    container, version, ..
                })) => Ok(format!("in container `{}` ({version})", container.name)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "{program} --version did not answer within {}s",
                    self.limit.as_secs()
                )),
            };
            checks.push(check(format!("postgres: {program}"), result));
        }
    }

    /// `postgres: globals`: the role may read the roles and their
    /// passwords, as pg_dumpall --globals-only must.
    async fn globals(&self) -> Check {
        let user = &self.resolved.endpoint.user;
        let su = bounded(self.limit, async {
            self.client
                .query_one(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .map_err(|e| pg::db_error("cannot read the role", e))
        })
        .await;
        let result = match su {
            Ok(true) => Ok(format!(
                "`{user}` is a superuser: pg_dumpall --globals-only can read roles and their passwords"
            )),
            Ok(false) => Err(format!(
                "`{user}` is not a superuser: pg_dumpall --globals-only reads pg_authid (the role passwords), \
                 which only a superuser may; log in as a superuser (postgres.url's user) or set \
                 postgres.globals = false in {}",
                self.file
            )),
            Err(e) => Err(e.0),
        };
        check("postgres: globals", result)
    }
}

/// Why a login failed, as PostgreSQL's SQLSTATE says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginFailure {
    /// Wrong password (28P01).
    Password,
    /// No such database or role (3D000, 28000).
    NoDatabaseOrUser,
    /// No answer from the server at all (no SQLSTATE).
    Unreachable,
}

/// What to fix after a failed login, decided on the server's SQLSTATE.
fn connect_fix(
    e: &(dyn std::error::Error + 'static),
    cfg: &PostgresConfig,
    resolved: &PostgresConfig,
    file: &std::path::Display<'_>,
) -> String {
    let ep = &resolved.endpoint;
    match login_failure(e) {
        LoginFailure::Password => format!(
            "; fix postgres.password (or password_file / password_credential) or the user in postgres.url in {file}"
        ),
        LoginFailure::NoDatabaseOrUser => {
            format!("; fix the database or user in postgres.url in {file}")
        }
        LoginFailure::Unreachable if cfg.container.is_none() => format!(
            "; is PostgreSQL running and listening at {}:{}? fix postgres.url in {file}, or set postgres.container",
            ep.host, ep.port
        ),
        LoginFailure::Unreachable => String::new(),
    }
}

/// Classifies a failed login by the SQLSTATE of the driver's error in
/// `e`'s chain of causes.
fn login_failure(e: &(dyn std::error::Error + 'static)) -> LoginFailure {
    use tokio_postgres::error::SqlState;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(driver) = c.downcast_ref::<tokio_postgres::Error>() {
            return match driver.code() {
                Some(code) if *code == SqlState::INVALID_PASSWORD => LoginFailure::Password,
                Some(code)
                    if *code == SqlState::INVALID_CATALOG_NAME
                        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    LoginFailure::NoDatabaseOrUser
                }
                _ => LoginFailure::Unreachable,
            };
        }
        cause = c.source();
    }
    LoginFailure::Unreachable
}

/// A fallible step, failed after `limit`.
async fn bounded<T, E: ToString>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Verdict<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| e.to_string().into()),
        Err(_) => Err(format!(
            "no answer within {}s ([timeouts] connect sets the limit)",
            limit.as_secs()
        )
        .into()),
    }
}

/// `redis: …` checks.
pub(super) async fn redis(config: &Config, checks: &mut Vec<Check>) {
    let Some(cfg) = &config.redis else { return };
    let limit = config.timeouts.connect;
    let file = config.path.display();
    let connected = bounded(limit, async {
        let mut con = crate::clients::redis::connect(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let pong: String = ::redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let info = crate::clients::redis::info(&mut con, "server")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((con, pong, info))
    })
    .await;
    let (mut con, info) = match connected {
        Ok((con, _pong, info)) => (con, info),
        Err(e) => {
            let fix = if e.0.contains("redis.password") || e.0.contains("NOAUTH") {
                format!(" — set the right password in redis.password (or password_file) in {file}")
            } else if cfg.container.is_none() {
                format!(
                    " — is Redis running at {}:{}? fix redis.url in {file}, or set redis.container",
                    cfg.host, cfg.port
                )
            } else {
                String::new()
            };
            checks.push(check("redis: connect", Err(format!("{e}{fix}"))));
            return;
        }
    };
    checks.push(check(
        "redis: connect",
        Verdict::Ok(format!(
            "Redis {} answers PING",
            info.get("redis_version").map(String::as_str).unwrap_or("?")
        )),
    ));
    if cfg.container.is_some() {
        // The data files are read through the engine, as the backup does.
        return;
    }
    let (dir, from) = match &cfg.data_dir {
        Some(d) => (d.clone(), "redis.data_dir"),
        None => match bounded(limit, crate::clients::redis::config_get(&mut con, "dir")).await {
            Ok(d) => (d.into(), "the server's `dir` (redis.data_dir is not set)"),
            Err(e) => {
                checks.push(check(
                    "redis: data_dir",
                    Err(format!(
                        "cannot ask the server for its `dir` ({e}): set redis.data_dir in {file}"
                    )),
                ));
                return;
            }
        },
    };
    let aof = bounded(
        limit,
        crate::clients::redis::config_get(&mut con, "appendonly"),
    )
    .await
    .map(|v| v == "yes")
    .unwrap_or(false);
    checks.push(check("redis: data_dir", data_dir(&dir, from, aof)));
}

/// The Redis data directory can be listed, and the files the backup copies
/// (`appendonlydir/` with AOF, else `dump.rdb`) can be read.
fn data_dir(dir: &Path, from: &str, aof: bool) -> Verdict {
    let fix = |what: &str| {
        format!(
            "{what}; the backup reads the data files as this user: keep AmbientCapabilities=CAP_DAC_READ_SEARCH \
             in the backup unit (it reads without changing any mode), give the user read access to {}, \
             or set redis.container to read them through the engine",
            dir.display()
        )
    };
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| fix(&format!("cannot list {} ({from}): {e}", dir.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let wanted = if aof { "appendonlydir" } else { "dump.rdb" };
    if !names.iter().any(|n| n == wanted) {
        return if aof {
            Err(format!(
                "{} ({from}) holds no appendonlydir, but the server has appendonly yes: \
                 is this the server's data directory? fix redis.data_dir",
                dir.display()
            )
            .into())
        } else {
            Ok(format!(
                "{} ({from}) is readable; no dump.rdb yet (the backup's BGSAVE writes it)",
                dir.display()
            ))
        };
    }
    let path = dir.join(wanted);
    let readable = if aof {
        std::fs::read_dir(&path).map(|_| ())
    } else {
        std::fs::File::open(&path).map(|_| ())
    };
    readable.map_err(|e| fix(&format!("cannot read {}: {e}", path.display())))?;
    Ok(format!(
        "{} ({from}) is readable and holds {wanted}",
        dir.display()
    ))
}

/// `files/<name>` checks: each path a regular file this process can open.
pub(super) fn files(config: &Config, checks: &mut Vec<Check>) {
    let file = config.path.display();
    for f in &config.files {
        let name = format!("files/{}", f.name);
        let result = match std::fs::metadata(&f.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "{} does not exist: fix the path of [[files]] `{}` in {file}, or remove the entry",
                f.path.display(),
                f.name
            )),
            Err(e) => Err(format!(
                "cannot reach {}: {e}; make its directories searchable by this user",
                f.path.display()
            )),
            Ok(m) if !m.is_file() => Err(format!(
                "{} is not a regular file (a [[files]] entry is one file; use [[directories]] for a folder): fix [[files]] `{}` in {file}",
                f.path.display(),
                f.name
            )),
            Ok(m) => match std::fs::File::open(&f.path) {
                Ok(_) => Ok(format!(
                    "{} is readable ({} bytes)",
                    f.path.display(),
                    m.len()
                )),
                Err(e) => Err(format!(
                    "cannot read {}: {e}; keep AmbientCapabilities=CAP_DAC_READ_SEARCH in the backup unit, which reads it \
                     without changing its mode (acme.json must stay 0600 for Traefik), or give this user read access",
                    f.path.display()
                )),
            },
        };
        checks.push(check(name, result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_without_a_driver_error_is_never_read_from_its_message() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(login_failure(&refused), LoginFailure::Unreachable);
        // Only the SQLSTATE decides: text that looks like a login failure
        // is not one.
        let wrong = std::io::Error::other("password authentication failed for user \"k\"");
        assert_eq!(login_failure(&wrong), LoginFailure::Unreachable);
    }
}
