//! PostgreSQL as a client sees it: connections (over TCP, a unix socket,
//! or a byte bridge exec'd in the server's container), the server's
//! version, and the choice of a client program (pg_dump, pg_dumpall,
//! pg_restore, psql) of the server's major version or newer — local, or
//! inside the server's container — with the command line that runs it.
//!
//! With `postgres.container`, the host needs no route to the server: a
//! session is an ordinary tokio-postgres client connection whose bytes are
//! carried over the stdin and stdout of a byte bridge exec'd in the
//! container ([`crate::engine::bridge_command`]: `nc 127.0.0.1 5432`, or
//! perl), so it speaks the real protocol and every query works unchanged.
//! The user and password come from the container's `POSTGRES_USER` and
//! `POSTGRES_PASSWORD` (read by inspecting it) unless configured.

pub mod beside;
pub mod database;
pub mod pipe;

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;
use tokio_postgres::{Client, NoTls};

use super::ClientError;
use super::launch::Launch;
use crate::engine::{Engine, EngineError, ExecSpec, bridge_command};
use crate::model::config::{ContainerRef, PostgresConfig};
use crate::process::first_line;

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
        /// The client container whose pg_dump writes into a FIFO, shared
        /// by the run's dumps.
        pipe: pipe::PipeSlot,
    },
}

impl DumpTool {
    /// Starts, in the background, the client container the run's dumps
    /// write through ([`pipe::PipeSlot`]), so that it is up by the time the
    /// first dump's snapshot is taken; a dump that comes first waits for
    /// the same start.
    pub fn prepare(&self, cfg: &PostgresConfig) {
        if let DumpTool::Container { pipe, .. } = self {
            let (pipe, cfg) = (pipe.clone(), cfg.clone());
            tokio::spawn(async move {
                pipe.get(&cfg).await;
            });
        }
    }

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
pub async fn connect(cfg: &PostgresConfig, db: &str) -> Result<Client, ClientError> {
    connect_within(cfg, db, CONNECT_TIMEOUT).await
}

/// Connects to `db`, giving up after `limit`: the TCP (or bridge)
/// connection and the whole login, so that a server that accepts and then
/// says nothing cannot hang the caller.
pub async fn connect_within(
    cfg: &PostgresConfig,
    db: &str,
    limit: Duration,
) -> Result<Client, ClientError> {
    tokio::time::timeout(limit, connect_unbounded(cfg, db, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::PostgresTimeout {
                db: db.to_owned(),
                place: place(cfg),
                user: cfg.endpoint.user.clone(),
                secs: limit.as_secs(),
            })
        })
}

/// Where the server is, as messages say it.
fn place(cfg: &PostgresConfig) -> String {
    match &cfg.container {
        Some(c) => format!("in container `{}`", c.name),
        None => format!("at {}:{}", cfg.endpoint.host, cfg.endpoint.port),
    }
}

/// The driver's settings for `db` from the configuration.
fn settings(cfg: &PostgresConfig, db: &str, limit: Duration) -> tokio_postgres::Config {
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
    pc
}

async fn connect_unbounded(
    cfg: &PostgresConfig,
    db: &str,
    limit: Duration,
) -> Result<Client, ClientError> {
    let pc = settings(cfg, db, limit);
    let refused = |source, bridge| ClientError::PostgresConnect {
        db: db.to_owned(),
        place: place(cfg),
        user: cfg.endpoint.user.clone(),
        bridge,
        source,
    };
    let client = if let Some(c) = &cfg.container {
        let engine = Engine::connect(c.engine.as_deref())?;
        let run = engine
            .exec(&c.name, bridge_command(cfg.endpoint.port))
            .await?;
        let (stream, bridge) =
            crate::engine::ExecStream::new(run).expect("stdin and stdout are attached");
        match pc.connect_raw(stream, NoTls).await {
            Ok((client, connection)) => {
                drive(connection);
                client
            }
            Err(e) => return Err(refused(e, crate::engine::bridge_said(bridge).await)),
        }
    } else {
        let (client, connection) = pc
            .connect(NoTls)
            .await
            .map_err(|e| refused(e, String::new()))?;
        drive(connection);
        client
    };
    Ok(client)
}

/// Runs a session's connection until it ends.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
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

/// `context: the server's message` as text, for a check that reports it.
pub fn db_error(context: &str, e: tokio_postgres::Error) -> String {
    format!("{context}: {}", super::postgres_detail(&e))
}

/// `context: the server's message`, as a closure for `map_err`.
pub fn query_error(
    context: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> ClientError {
    let context = context.into();
    move |source| ClientError::Postgres { context, source }
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, ClientError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(query_error("cannot read the server version"))?;
    let num: i32 = row.get(0);
    Ok(ServerVersion {
        major: (num / 10000) as u32,
        text: row.get(1),
    })
}

/// Every non-template database the user may connect to, except what a
/// restore leaves: `kdr_replaced_*` (what a `restore --replace` kept
/// aside, listed by [`set_aside`]) and `kdr_restore_*` (a restore's
/// scratch database) are never backed up by `databases = ["*"]`.
pub async fn discover(client: &Client) -> Result<Vec<String>, ClientError> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database \
             WHERE datallowconn AND NOT datistemplate \
               AND has_database_privilege(datname, 'CONNECT') \
               AND datname NOT LIKE 'kdr\\_replaced\\_%' AND datname NOT LIKE 'kdr\\_restore\\_%' \
             ORDER BY datname",
            &[],
        )
        .await
        .map_err(query_error("cannot list databases"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The databases a `restore --replace` kept aside (`kdr_replaced_*`): what
/// the replaced databases held, until the operator drops them.
pub async fn set_aside(client: &Client) -> Result<Vec<String>, ClientError> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'kdr\\_replaced\\_%' ORDER BY datname",
            &[],
        )
        .await
        .map_err(query_error("cannot list databases"))?;
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
) -> Result<DumpTool, ClientError> {
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
/// first). Without `bin_dir`, Debian's `pg_wrapper` in `PATH` is passed
/// over for the binaries it would run: it is a perl script that starts an
/// interpreter on every run (tens of milliseconds before each pg_restore).
/// `what` names the reason for `min_major` in the error.
pub async fn choose_client(
    cfg: &PostgresConfig,
    program: &str,
    min_major: u32,
    what: &str,
) -> Result<DumpTool, ClientError> {
    if let Some(container) = &cfg.container {
        let engine =
            Engine::connect(container.engine.as_deref()).map_err(ClientError::ToolEngine)?;
        let version = engine
            .output(&container.name, ExecSpec::new([program, "--version"]))
            .await
            .map_err(|source| ClientError::ToolInContainer {
                program: program.to_owned(),
                container: container.name.clone(),
                source,
            })?;
        return Ok(DumpTool::Container {
            pipe: pipe::PipeSlot::default(),
            container: container.clone(),
            version: version.lines().next().unwrap_or_default().trim().to_owned(),
        });
    }
    let candidates: Vec<PathBuf> = match &cfg.bin_dir {
        Some(dir) => vec![dir.clone()],
        None => local_candidates(program),
    };
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    for dir in candidates {
        let exe = dir.join(program);
        if !exe.is_file() || seen.iter().any(|(p, _)| p == &exe) {
            continue;
        }
        let Ok(version) = version_of(&exe).await else {
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
    Err(ClientError::NoTool(match seen.first() {
        Some((exe, version)) => format!(
            "{} ({version}) is older than {what}: {program} must be of major version {min_major} or newer; {fix}",
            exe.display(),
        ),
        None => format!(
            "no {program} found (looked in postgres.bin_dir, PATH and /usr/lib/postgresql/*/bin); {fix}"
        ),
    }))
}

/// Where `program` is looked for without `postgres.bin_dir`: `PATH`, then
/// `/usr/lib/postgresql/*/bin`, newest first. A `PATH` entry where it is
/// Debian's `pg_wrapper` gives way to those directories, in its place.
fn local_candidates(program: &str) -> Vec<PathBuf> {
    let mut lib: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    lib.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut v = Vec::new();
    for dir in path {
        if is_debian_wrapper(&dir.join(program)) {
            v.extend(lib.iter().cloned());
        } else {
            v.push(dir);
        }
    }
    v.extend(lib);
    v
}

/// Whether `exe` is Debian's `pg_wrapper` (`/usr/bin/pg_restore` →
/// `../share/postgresql-common/pg_wrapper`), which runs a binary of
/// `/usr/lib/postgresql/*/bin`.
fn is_debian_wrapper(exe: &std::path::Path) -> bool {
    std::fs::canonicalize(exe).is_ok_and(|p| p.file_name().is_some_and(|n| n == "pg_wrapper"))
}

/// `exe --version`, asked once per binary: a restore chooses its client
/// more than once (the plan, each database). A binary replaced since (an
/// upgrade under a long-running process) is asked again: the answer is
/// kept with the file's identity (inode and modification time).
async fn version_of(exe: &std::path::Path) -> Result<String, crate::process::ProcessError> {
    type Known = Vec<((PathBuf, u64, std::time::SystemTime), String)>;
    static KNOWN: std::sync::Mutex<Known> = std::sync::Mutex::new(Vec::new());
    let key = std::fs::metadata(exe).ok().and_then(|m| {
        use std::os::unix::fs::MetadataExt;
        Some((exe.to_owned(), m.ino(), m.modified().ok()?))
    });
    let lock = || {
        KNOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let known = lock()
        .iter()
        .find(|(k, _)| Some(k) == key.as_ref())
        .map(|(_, v)| v.clone());
    if let Some(v) = known {
        return Ok(v);
    }
    let version = first_line(exe, ["--version"]).await?;
    // The wrapper's answer depends on what is installed, not on itself.
    if let Some(key) = key.filter(|_| !is_debian_wrapper(exe)) {
        let mut known = lock();
        known.retain(|(k, _)| k.0 != key.0);
        known.push((key, version.clone()));
    }
    Ok(version)
}

/// The programs whose stdout carries a whole database or cluster: in a
/// container, their output is gathered into large writes before the
/// engine's exec stream ([`crate::clients::launch::BATCH_SCRIPT`]).
const BULK_OUTPUT: [&str; 2] = ["pg_dump", "pg_basebackup"];

/// A command running `program` (pg_dump, pg_dumpall, pg_restore, psql)
/// the chosen way, with connection settings and password in its
/// environment (never in its arguments). In a container, pg_dump's and
/// pg_basebackup's stdout goes through `dd` in 1 MiB writes.
pub fn command(cfg: &PostgresConfig, tool: &DumpTool, program: &str, database: &str) -> Launch {
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
            let mut l = if BULK_OUTPUT.contains(&program) {
                Launch::container_batched(container, program)
            } else {
                Launch::container(container, program)
            };
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

/// [`command`] for a program with bulk output (pg_dump): with the server
/// in a container, in the client container beside it writing into a FIFO
/// when the run's [`pipe::PipeSlot`] has one (off the engine's exec
/// stream), else as [`command`] runs it.
pub async fn bulk_command(
    cfg: &PostgresConfig,
    tool: &DumpTool,
    program: &str,
    database: &str,
) -> Launch {
    if let DumpTool::Container { pipe, .. } = tool
        && let Some(p) = pipe.get(cfg).await
    {
        return p.command(cfg, program, database);
    }
    command(cfg, tool, program, database)
}

/// An SQL identifier, double-quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_wrapper_is_known_by_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let wrapper = dir.path().join("pg_wrapper");
        std::fs::write(&wrapper, "#!/usr/bin/perl\n").unwrap();
        let link = dir.path().join("pg_restore");
        std::os::unix::fs::symlink("pg_wrapper", &link).unwrap();
        assert!(is_debian_wrapper(&link));
        let real = dir.path().join("pg_dump");
        std::fs::write(&real, "binary").unwrap();
        assert!(!is_debian_wrapper(&real));
        assert!(!is_debian_wrapper(&dir.path().join("missing")));
    }

    #[tokio::test]
    async fn a_version_is_asked_once_and_again_of_a_replaced_binary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let exe = dir.path().join("pg_restore");
        let install = |version: &str| {
            let new = dir.path().join("new");
            let script = format!(
                "#!/bin/sh\necho run >> '{}'\necho 'pg_restore (PostgreSQL) {version}'\n",
                runs.display()
            );
            std::fs::write(&new, script).unwrap();
            std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&new, &exe).unwrap();
        };
        install("15.4");
        assert_eq!(
            version_of(&exe).await.unwrap(),
            "pg_restore (PostgreSQL) 15.4"
        );
        assert_eq!(
            version_of(&exe).await.unwrap(),
            "pg_restore (PostgreSQL) 15.4"
        );
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        assert_eq!(count(), 1, "asked once");
        install("17.2");
        assert_eq!(
            version_of(&exe).await.unwrap(),
            "pg_restore (PostgreSQL) 17.2"
        );
        assert_eq!(count(), 2, "a replaced binary is asked again");
    }

    #[test]
    fn tool_major_is_parsed() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("nonsense"), None);
    }

    fn in_container(password: Option<&str>) -> (PostgresConfig, DumpTool) {
        use crate::model::config::{DatabaseSelection, PgEndpoint};
        let container = ContainerRef {
            name: "core-postgres".into(),
            engine: None,
        };
        let cfg = PostgresConfig {
            endpoint: PgEndpoint {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "kompose".into(),
                maintenance_db: "postgres".into(),
            },
            password: password.map(crate::model::secret::Secret::new),
            databases: DatabaseSelection::All,
            globals: true,
            container: Some(container.clone()),
            credentials_from_container: false,
            user_configured: true,
            bin_dir: None,
            jobs: std::num::NonZeroUsize::MIN,
            wal: None,
            lock_wait: Duration::from_secs(300),
        };
        let tool = DumpTool::Container {
            pipe: pipe::PipeSlot::default(),
            container,
            version: "pg_dump (PostgreSQL) 15.4".into(),
        };
        (cfg, tool)
    }

    fn spec(launch: Launch) -> ExecSpec {
        match launch {
            Launch::Container { spec, .. } => spec,
            Launch::Local(_) | Launch::Piped { .. } => panic!("not in the server's container"),
        }
    }

    /// In a container, pg_dump runs behind the batching script with its
    /// arguments as positional parameters after it, appended as given
    /// (never spliced into the script), the password in the environment
    /// only.
    #[test]
    fn a_dump_in_a_container_is_batched_with_its_arguments_after_the_script() {
        let (cfg, tool) = in_container(Some("s3cret pw"));
        let mut launch = command(&cfg, &tool, "pg_dump", "links");
        launch
            .args(["--format=custom", "--compress=0"])
            .arg("--snapshot=00000003-0000001B-1");
        let spec = spec(launch);
        let script = crate::clients::launch::BATCH_SCRIPT;
        assert_eq!(
            spec.cmd,
            [
                "sh",
                "-c",
                script,
                "kompose-dr",
                "pg_dump",
                "--no-password",
                "--format=custom",
                "--compress=0",
                "--snapshot=00000003-0000001B-1"
            ]
        );
        assert!(!spec.cmd.iter().any(|a| a.contains("s3cret")), "{spec:?}");
        assert!(
            spec.env
                .contains(&("PGPASSWORD".into(), "s3cret pw".into()))
        );
        assert!(spec.env.contains(&("PGDATABASE".into(), "links".into())));
    }

    /// Programs without bulk output run as they are.
    #[test]
    fn other_programs_in_a_container_run_directly() {
        let (cfg, tool) = in_container(None);
        for program in ["pg_dumpall", "pg_restore", "psql", "pg_receivewal"] {
            let spec = spec(command(&cfg, &tool, program, "postgres"));
            assert_eq!(spec.cmd, [program, "--no-password"]);
        }
        let spec = spec(command(&cfg, &tool, "pg_basebackup", "postgres"));
        assert_eq!(spec.cmd[..2], ["sh", "-c"]);
        assert_eq!(spec.cmd[4], "pg_basebackup");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("Link"), "\"Link\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
