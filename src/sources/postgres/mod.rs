//! The PostgreSQL source: one `pg_dump -Fc -Z0` per database, and
//! `pg_dumpall --globals-only` for roles and tablespaces.
//!
//! Consistency: for each database a REPEATABLE READ transaction exports its
//! snapshot (`pg_export_snapshot()`), counts the rows of every table in it,
//! and pg_dump runs with `--snapshot`, so the counts recorded in the facts
//! describe exactly what the dump holds. The transaction stays open until
//! pg_dump has finished.
//!
//! pg_dump must be of the server's major version or newer: a local client is
//! chosen from `bin_dir`, `PATH` or `/usr/lib/postgresql/*/bin`, or pg_dump
//! runs inside the server's container (`postgres.container`) through the
//! engine, where the versions always match. The password reaches the child
//! only through its environment (`PGPASSWORD`).
//!
//! # Containers without a network path
//!
//! With `postgres.container`, the host needs no route to the server: the
//! control session (version, discovery, `pg_export_snapshot()`, the row
//! counts) is an ordinary tokio-postgres client connection whose bytes are
//! carried over the stdin and stdout of a byte bridge exec'd in the
//! container ([`crate::engine::bridge_command`]: `nc 127.0.0.1 5432`, or
//! perl), so it speaks the real protocol — the snapshot stays exported for
//! exactly as long as the session lives, as it does over TCP — and every
//! query, restore step and check written for a URL works unchanged. The
//! user and password come from the container's `POSTGRES_USER` and
//! `POSTGRES_PASSWORD` (read by inspecting it) unless configured.

pub mod cluster;
pub mod database;
pub mod wal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::process::Command;

use super::launch::Launch;
use tokio_postgres::{Client, NoTls};

use super::{SourceContext, SourceError, SourceRun, timed};
use crate::engine::{Engine, EngineError, ExecSpec, bridge_command};
use crate::model::config::{ContainerRef, PostgresConfig};
use crate::model::facts::SourceFacts;
use crate::model::manifest::ArtifactKind;
use crate::process::first_line;
use crate::storage::keys::artifact_key;

/// The server being backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// Major version (15 for 15.4).
    pub major: u32,
    /// Full version text (`15.4 (Debian 15.4-1)`).
    pub text: String,
}

/// How pg_dump and pg_dumpall are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpTool {
    /// Local client binaries in this directory.
    Local {
        /// Directory holding pg_dump and pg_dumpall.
        bin_dir: PathBuf,
        /// `pg_dump --version` output.
        version: String,
    },
    /// Inside the server's container.
    Container {
        /// The container (`postgres.container`) the tools run in, through
        /// the engine.
        container: ContainerRef,
        /// `pg_dump --version` output inside it.
        version: String,
    },
}

impl DumpTool {
    /// The tool's version text.
    pub fn version(&self) -> &str {
        match self {
            DumpTool::Local { version, .. } | DumpTool::Container { version, .. } => version,
        }
    }
}

/// How long [`connect`] waits for a connection and the login.
pub const CONNECT_TIMEOUT: Duration = crate::model::config::DEFAULT_CONNECT;

/// Connects to `db` with the configured credentials, giving up after
/// [`CONNECT_TIMEOUT`].
pub async fn connect(cfg: &PostgresConfig, db: &str) -> Result<Client, SourceError> {
    connect_within(cfg, db, CONNECT_TIMEOUT).await
}

/// Connects to `db`, giving up after `limit`: the TCP (or bridge)
/// connection and the whole login, so that a server that accepts and then
/// says nothing cannot hang the caller.
pub async fn connect_within(
    cfg: &PostgresConfig,
    db: &str,
    limit: Duration,
) -> Result<Client, SourceError> {
    let ep = &cfg.endpoint;
    let what = match &cfg.container {
        Some(c) => format!("in container `{}`", c.name),
        None => format!("at {}:{}", ep.host, ep.port),
    };
    tokio::time::timeout(limit, connect_unbounded(cfg, db, limit))
        .await
        .unwrap_or_else(|_| {
            Err(SourceError::Connect(format!(
                "cannot connect to PostgreSQL database `{db}` {what} as `{}`: no answer within {}s \
                 (is the server up and not overloaded? [timeouts] connect sets the limit)",
                ep.user,
                limit.as_secs()
            )))
        })
}

async fn connect_unbounded(
    cfg: &PostgresConfig,
    db: &str,
    limit: Duration,
) -> Result<Client, SourceError> {
    let ep = &cfg.endpoint;
    let mut pc = tokio_postgres::Config::new();
    if ep.host.starts_with('/') {
        pc.host_path(&ep.host);
    } else {
        pc.host(&ep.host);
    }
    pc.port(ep.port)
        .user(&ep.user)
        .dbname(db)
        .application_name("kompose-dr")
        .connect_timeout(limit);
    if let Some(pw) = &cfg.password {
        pc.password(pw.expose());
    }
    let describe = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string())
    };
    if let Some(c) = &cfg.container {
        let engine = Engine::connect(c.engine.as_deref())
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let run = engine
            .exec(&c.name, bridge_command(ep.port))
            .await
            .map_err(|e| SourceError::Connect(e.to_string()))?;
        let (stream, bridge) =
            crate::engine::ExecStream::new(run).expect("stdin and stdout are attached");
        return match pc.connect_raw(stream, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "postgres connection ended");
                    }
                });
                Ok(client)
            }
            Err(e) => {
                let detail = describe(e);
                let why = crate::engine::bridge_said(bridge).await;
                Err(SourceError::Connect(format!(
                    "cannot connect to PostgreSQL database `{db}` in container `{}` as `{}`: {detail}{why}",
                    c.name, ep.user
                )))
            }
        };
    }
    let (client, connection) = pc.connect(NoTls).await.map_err(|e| {
        let detail = describe(e);
        SourceError::Connect(format!(
            "cannot connect to PostgreSQL database `{db}` at {}:{} as `{}`: {detail}",
            ep.host, ep.port, ep.user
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// The configuration with what the container supplies filled in: its
/// `POSTGRES_USER` and `POSTGRES_PASSWORD` where the configuration names no
/// user or password and allows it (`credentials_from_container`). Without
/// a container, the configuration as it is. Fails if the container does
/// not exist (naming close matches) or does not run.
pub async fn resolve(cfg: &PostgresConfig) -> Result<PostgresConfig, EngineError> {
    let mut cfg = cfg.clone();
    let Some(c) = &cfg.container else {
        return Ok(cfg);
    };
    let engine = Engine::connect(c.engine.as_deref())?;
    let info = engine.running(&c.name).await?;
    if cfg.credentials_from_container {
        if !cfg.user_configured {
            cfg.endpoint.user = info.env("POSTGRES_USER").unwrap_or("postgres").to_owned();
        }
        if cfg.password.is_none()
            && let Some(pw) = info.env("POSTGRES_PASSWORD")
        {
            cfg.password = Some(crate::model::secret::Secret::new(pw.to_owned()));
        }
    }
    Ok(cfg)
}

pub(crate) fn db_error(context: &str, e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{context}: {}", d.message()),
        None => format!("{context}: {e}"),
    }
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| SourceError::Query(db_error("cannot read the server version", e)))?;
    let num: i32 = row.get(0);
    Ok(ServerVersion {
        major: (num / 10000) as u32,
        text: row.get(1),
    })
}

/// Every non-template database the user may connect to.
pub async fn discover(client: &Client) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database \
             WHERE datallowconn AND NOT datistemplate \
               AND has_database_privilege(datname, 'CONNECT') \
             ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| SourceError::Query(db_error("cannot list databases", e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The major version in `pg_dump (PostgreSQL) 15.4 (Debian …)`.
pub fn parse_tool_major(version: &str) -> Option<u32> {
    let after = version.split(')').nth(1)?.trim_start();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Chooses how to run pg_dump for a server of this version.
pub async fn choose_tool(
    cfg: &PostgresConfig,
    server: &ServerVersion,
) -> Result<DumpTool, SourceError> {
    choose_client(
        cfg,
        "pg_dump",
        server.major,
        &format!("the server (PostgreSQL {})", server.text),
    )
    .await
}

/// Chooses how to run a PostgreSQL client `program` of major version
/// `min_major` or newer: inside `docker_container`, or the first suitable
/// local binary from `bin_dir`, `PATH`, `/usr/lib/postgresql/*/bin` (newest
/// first). `what` names the reason for `min_major` in the error.
pub async fn choose_client(
    cfg: &PostgresConfig,
    program: &str,
    min_major: u32,
    what: &str,
) -> Result<DumpTool, SourceError> {
    if let Some(container) = &cfg.container {
        let engine = Engine::connect(container.engine.as_deref())
            .map_err(|e| SourceError::Tool(e.to_string()))?;
        let version = engine
            .output(&container.name, ExecSpec::new([program, "--version"]))
            .await
            .map_err(|e| {
                SourceError::Tool(format!(
                    "cannot run {program} in container `{}`: {e}",
                    container.name
                ))
            })?;
        return Ok(DumpTool::Container {
            container: container.clone(),
            version: version.lines().next().unwrap_or_default().trim().to_owned(),
        });
    }
    let candidates: Vec<PathBuf> = match &cfg.bin_dir {
        Some(dir) => vec![dir.clone()],
        None => {
            let mut v: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            let mut lib: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
                .unwrap_or_default();
            // Newest first.
            lib.sort_by_key(|p| {
                std::cmp::Reverse(
                    p.parent()
                        .and_then(|v| v.file_name())
                        .and_then(|v| v.to_str())
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0),
                )
            });
            v.extend(lib);
            v
        }
    };
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    for dir in candidates {
        let exe = dir.join(program);
        if !exe.is_file() || seen.iter().any(|(p, _)| p == &exe) {
            continue;
        }
        let Ok(version) = first_line(&exe, ["--version"]).await else {
            continue;
        };
        if parse_tool_major(&version).is_some_and(|m| m >= min_major) {
            return Ok(DumpTool::Local {
                bin_dir: dir,
                version,
            });
        }
        seen.push((exe, version));
    }
    let fix = format!(
        "install postgresql-client-{min_major} (or newer), set postgres.bin_dir to a PostgreSQL {min_major}+ client, \
         or set postgres.container to run {program} inside the server's container"
    );
    Err(SourceError::Tool(match seen.first() {
        Some((exe, version)) => format!(
            "{} ({version}) is older than {what}: {program} must be of major version {min_major} or newer; {fix}",
            exe.display(),
        ),
        None => format!(
            "no {program} found (looked in postgres.bin_dir, PATH and /usr/lib/postgresql/*/bin); {fix}"
        ),
    }))
}

/// A command running `program` (pg_dump, pg_dumpall, pg_restore, psql)
/// the chosen way, with connection settings and password in its
/// environment.
pub(crate) fn command(
    cfg: &PostgresConfig,
    tool: &DumpTool,
    program: &str,
    database: &str,
) -> Launch {
    let mut launch = match tool {
        DumpTool::Local { bin_dir, .. } => {
            let mut c = Command::new(bin_dir.join(program));
            c.env("PGHOST", &cfg.endpoint.host)
                .env("PGPORT", cfg.endpoint.port.to_string())
                .env_remove("PGPASSFILE")
                .env_remove("PGSERVICE")
                .env_remove("PGPASSWORD");
            Launch::Local(c)
        }
        DumpTool::Container { container, .. } => {
            let mut l = Launch::container(container, program);
            l.env("PGHOST", &cfg.endpoint.host)
                .env("PGPORT", &cfg.endpoint.port.to_string());
            l
        }
    };
    launch
        .env("PGUSER", &cfg.endpoint.user)
        .env("PGDATABASE", database)
        .env("PGAPPNAME", "kompose-dr");
    if let Some(pw) = &cfg.password {
        launch.env("PGPASSWORD", pw.expose());
    }
    launch.arg("--no-password");
    launch
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Backs up one database.
pub async fn dump_database(
    ctx: &SourceContext,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    server: &ServerVersion,
    db: &str,
) -> SourceRun {
    let source = crate::model::selection::database_source(db);
    timed(async {
        let mut run = SourceRun::failed(&source, ArtifactKind::PostgresDump, "");
        run.tool_version = Some(tool.version().to_owned());
        run.server_version = Some(server.text.clone());
        let result = async {
            let client = connect_within(cfg, db, ctx.timeouts.connect).await?;
            // Stopped halfway (the stall watchdog, Ctrl-C), the session's
            // query is cancelled in the server, not left waiting on a lock.
            let mut cancel = CancelOnDrop(Some(client.cancel_token()));
            // The row counts wait for locks no longer than pg_dump does.
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL lock_timeout = {}",
                    cfg.lock_wait.as_millis()
                ))
                .await
                .map_err(|e| {
                    SourceError::Query(db_error(
                        &format!("database `{db}`: cannot start a transaction"),
                        e,
                    ))
                })?;
            let snapshot: String = client
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(|e| {
                    SourceError::Query(db_error(
                        &format!("database `{db}`: cannot export a snapshot"),
                        e,
                    ))
                })?
                .get(0);
            run.captured_at = Some(Utc::now());

            // pg_dump and the row counts read the same exported snapshot, so
            // they can run side by side: the counts cost no wall time.
            let key = artifact_key(&ctx.snapshot, &source, ArtifactKind::PostgresDump);
            let mut cmd = command(cfg, tool, "pg_dump", db);
            cmd.args(["--format=custom", "--compress=0"])
                .arg(format!("--snapshot={snapshot}"))
                .arg(format!("--lock-wait-timeout={}", cfg.lock_wait.as_millis()));
            let facts = async {
                let tables = count_rows(&client, db).await?;
                let object = database::read(&client, db).await?;
                Ok::<_, SourceError>((tables, object))
            };
            let (stored, tables) = tokio::join!(ctx.store_child(&key, "pg_dump", cmd), facts);
            cancel.0 = None;
            // pg_dump has finished with the snapshot: end the transaction.
            let _ = client.batch_execute("ROLLBACK").await;
            match tables {
                Ok((tables, object)) => {
                    run.facts = Some(SourceFacts::Postgres {
                        tables,
                        database: Some(Box::new(object)),
                    })
                }
                Err(e) => {
                    // Without its facts the dump cannot be verified: fail it.
                    if let Ok(s) = &stored {
                        for repo in &ctx.repositories {
                            let _ = repo.backend().delete(&s.key).await;
                        }
                    }
                    return Err(e);
                }
            }
            stored
        }
        .await;
        run.result = result.map_err(|e| ctx.redactor.scrub(&e.to_string()));
        run
    })
    .await
}

/// Exact row counts of every ordinary table, in the current transaction's
/// snapshot. Tables belonging to extensions are skipped (pg_dump does not
/// dump their rows).
pub async fn count_rows(client: &Client, db: &str) -> Result<BTreeMap<String, u64>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| {
            SourceError::Query(db_error(&format!("database `{db}`: cannot list tables"), e))
        })?;
    let mut counts = BTreeMap::new();
    for r in rows {
        let (schema, table): (String, String) = (r.get(0), r.get(1));
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}.{}",
                    quote_ident(&schema),
                    quote_ident(&table)
                ),
                &[],
            )
            .await
            .map_err(|e| {
                SourceError::Query(db_error(
                    &format!("database `{db}`: cannot count rows of {schema}.{table}"),
                    e,
                ))
            })?
            .get(0);
        counts.insert(format!("{schema}.{table}"), n as u64);
        // One table counted: alive, even while pg_dump moves no data.
        crate::process::stall::progress();
    }
    Ok(counts)
}

/// Cancels the query its session is running when dropped still armed.
struct CancelOnDrop(Option<tokio_postgres::CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            // Over a container's bridge there is no path for a cancel
            // request; that session ends when its bridge is killed.
            crate::storage::spawn_cleanup(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), token.cancel_query(NoTls)).await;
            });
        }
    }
}

/// Backs up roles and tablespaces.
pub async fn dump_globals(
    ctx: &SourceContext,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    server: &ServerVersion,
) -> SourceRun {
    let source = "postgres/globals";
    timed(async {
        let mut run = SourceRun::failed(source, ArtifactKind::PostgresGlobals, "");
        run.tool_version = Some(tool.version().to_owned());
        run.server_version = Some(server.text.clone());
        run.captured_at = Some(Utc::now());
        let key = artifact_key(&ctx.snapshot, source, ArtifactKind::PostgresGlobals);
        let mut cmd = command(cfg, tool, "pg_dumpall", &cfg.endpoint.maintenance_db);
        cmd.arg("--globals-only")
            .arg(format!("--database={}", cfg.endpoint.maintenance_db));
        run.result = ctx
            .store_child(&key, "pg_dumpall", cmd)
            .await
            .map_err(|e| e.to_string());
        run
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_major_is_parsed() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("nonsense"), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("Link"), "\"Link\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
