//! Restoring PostgreSQL: roles (globals) with psql, databases with
//! pg_restore.
//!
//! A database is always restored into a scratch database on the target
//! server first, streamed storage → age → zstd → pg_restore's stdin (or
//! staged in a private temporary file for `--jobs`). Only when pg_restore
//! succeeded and the archive checked out is it renamed to its name; with
//! `--replace` the existing database is closed to new connections, its
//! sessions terminated, and swapped out and dropped. A failed restore leaves
//! the existing database exactly as it was.

use std::path::Path;
use std::process::Stdio;

use tokio_postgres::Client;

use super::stream::{self, copy_archive};
use super::{ReadyItem, RestoreContext, RestoreError, Target, open_stored, progress_bar};
use crate::model::config::PostgresConfig;
use crate::process::{Ended, stderr_tail};
use crate::restore::plan::Choice;
use crate::sources::launch::Launch;
use crate::sources::postgres::{
    DumpTool, choose_client, command, connect, parse_tool_major, quote_ident,
};

fn target_config(ctx: &RestoreContext<'_>) -> Result<PostgresConfig, RestoreError> {
    let mut cfg = ctx
        .targets
        .postgres
        .clone()
        .ok_or_else(|| RestoreError::NoPostgres {
            config: ctx.targets.config_path.clone(),
        })?;
    if let Some(ep) = &ctx.options.target {
        cfg.endpoint = ep.clone();
        // The container runs the configured server, not the target.
        cfg.container = None;
    }
    Ok(cfg)
}

/// The target with what its container supplies (user, password) filled in.
async fn resolved_target(ctx: &RestoreContext<'_>) -> Result<PostgresConfig, RestoreError> {
    Ok(crate::sources::postgres::resolve(&target_config(ctx)?).await?)
}

fn server(cfg: &PostgresConfig) -> String {
    match &cfg.container {
        Some(c) => format!("container {}", c.name),
        None => format!("{}:{}", cfg.endpoint.host, cfg.endpoint.port),
    }
}

fn database_name(ctx: &RestoreContext<'_>, c: &Choice) -> String {
    ctx.options
        .as_name
        .clone()
        .unwrap_or_else(|| c.source.trim_start_matches("postgres/").to_owned())
}

fn archive_major(c: &Choice) -> u32 {
    c.artifact
        .tool_version
        .as_deref()
        .and_then(parse_tool_major)
        .unwrap_or(0)
}

async fn restore_tool(cfg: &PostgresConfig, c: &Choice) -> Result<DumpTool, RestoreError> {
    let major = archive_major(c);
    choose_client(
        cfg,
        "pg_restore",
        major,
        &format!(
            "the archive's format ({} wrote it)",
            c.artifact
                .tool_version
                .as_deref()
                .unwrap_or("an unknown pg_dump")
        ),
    )
    .await
    .map_err(RestoreError::from_source)
}

async fn connect_to(cfg: &PostgresConfig, db: &str) -> Result<Client, RestoreError> {
    connect(cfg, db).await.map_err(RestoreError::from_source)
}

/// The target of `postgres/globals`.
pub fn globals_target(ctx: &RestoreContext<'_>) -> Result<Target, RestoreError> {
    Ok(Target::Globals {
        server: server(&target_config(ctx)?),
    })
}

/// Whether database `name` exists and, if so, whether it holds anything.
async fn state(cfg: &PostgresConfig, name: &str) -> Result<Option<bool>, RestoreError> {
    let client = connect_to(cfg, &cfg.endpoint.maintenance_db).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(RestoreError::db("cannot list databases"))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let db = connect_to(cfg, name).await?;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'",
            &[],
        )
        .await
        .map_err(RestoreError::db(format!("cannot inspect database {name}")))?
        .get(0);
    Ok(Some(n > 0))
}

/// Checks a database target: refuses a non-empty one without `--replace`,
/// and makes sure a suitable pg_restore exists.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    c: &Choice,
) -> Result<(Target, bool), RestoreError> {
    let cfg = resolved_target(ctx).await?;
    let name = database_name(ctx, c);
    if name.is_empty() || name.len() > 63 {
        return Err(RestoreError::Refused(format!(
            "`{name}` is not a usable database name (1 to 63 bytes)"
        )));
    }
    let target = Target::Database {
        name: name.clone(),
        server: server(&cfg),
    };
    let existing = state(&cfg, &name).await?;
    if existing == Some(true) && !ctx.options.replace {
        return Err(RestoreError::Refused(format!(
            "database {name} on {} exists and is not empty: nothing was changed. \
             Restore beside it with --as NEW_NAME and compare, or replace it with --replace",
            server(&cfg)
        )));
    }
    if ctx.options.jobs.is_some() && cfg.container.is_some() {
        return Err(RestoreError::Refused("--jobs stages the dump in a local file, which pg_restore inside a container cannot read: drop --jobs".into()));
    }
    restore_tool(&cfg, c).await?;
    Ok((target, existing.is_some()))
}

/// Restores roles and tablespaces; roles that exist already are not an error.
pub async fn restore_globals(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
) -> Result<(u64, String), RestoreError> {
    let cfg = resolved_target(ctx).await?;
    let tool = choose_client(&cfg, "psql", 0, "any")
        .await
        .map_err(RestoreError::from_source)?;
    // The whole archive is read and checked (age, zstd, sha256) and its SQL
    // scanned before psql sees a byte: psql runs meta-commands (`\!`,
    // `\copy … program`), so a forged archive must never reach it.
    let sql = read_verified(ctx, item).await?;
    check_globals_sql(&sql).map_err(|e| RestoreError::Refused(format!("the roles archive {e}")))?;
    let mut cmd = command(&cfg, &tool, "psql", &cfg.endpoint.maintenance_db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
    let bytes = sql.len() as u64;
    let (stderr, status) = feed(cmd, "psql", sql, ctx).await?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .collect();
    if !status.success() || !errors.is_empty() {
        return Err(RestoreError::Failed(format!(
            "applying the roles to {} failed ({}): {}; roles applied before the error remain",
            server(&cfg),
            status,
            if errors.is_empty() {
                stderr.trim().to_owned()
            } else {
                errors.join("; ")
            }
        )));
    }
    Ok((bytes, format!("roles applied to {}", server(&cfg))))
}

/// The most a roles archive may hold once decompressed: pg_dumpall
/// --globals-only writes kilobytes.
const MAX_GLOBALS: u64 = 64 << 20;

/// Reads a whole (small) archive into memory, every check held: age
/// authentication, zstd checksums, size and sha256 against the manifest.
async fn read_verified(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
) -> Result<Vec<u8>, RestoreError> {
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Bounded {
            data: Vec::new(),
            limit: MAX_GLOBALS,
        };
        copy_archive(stored, &ids, &mut out).map(|_| out.data)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    pb.finish_and_clear();
    Ok(read?)
}

/// A `Vec` that refuses to grow past `limit`.
struct Bounded {
    data: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "more than {} MiB of SQL: not a roles archive",
                self.limit >> 20
            )));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refuses SQL for psql that could hold a meta-command. psql runs a
/// backslash command anywhere outside quotes — mid-line (`SELECT 1; \\! id`)
/// or after another meta-command's arguments — so no backslash at all is
/// accepted, except pg_dumpall's own whole lines `\\restrict KEY` and
/// `\\unrestrict KEY`. (A backslash inside a role comment is refused too:
/// it fails closed, and the message says what to do.)
pub fn check_globals_sql(sql: &[u8]) -> Result<(), String> {
    let is_restrict = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let key = line
            .strip_prefix(b"\\restrict ")
            .or_else(|| line.strip_prefix(b"\\unrestrict "));
        key.is_some_and(|k| !k.is_empty() && k.iter().all(u8::is_ascii_alphanumeric))
    };
    for (i, line) in sql.split(|&b| b == b'\n').enumerate() {
        if !line.contains(&b'\\') || is_restrict(line) {
            continue;
        }
        let shown: String = String::from_utf8_lossy(line).chars().take(60).collect();
        return Err(format!(
            "has a backslash on line {} (`{}`): psql would run it as a meta-command, and \
             pg_dumpall writes none; refusing to run it (the archive may have been forged; \
             apply the roles by hand after reading them, see docs/RUNBOOK.md)",
            i + 1,
            shown.escape_debug()
        ));
    }
    Ok(())
}

/// Runs `launch` with `input` on its stdin; returns its stderr tail and how
/// it ended.
async fn feed(
    launch: Launch,
    program: &str,
    input: Vec<u8>,
    ctx: &RestoreContext<'_>,
) -> Result<(String, Ended), RestoreError> {
    use tokio::io::AsyncWriteExt;
    let mut child = launch
        .start(program, true)
        .await
        .map_err(|e| RestoreError::Failed(format!("cannot start {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is attached");
    drop(child.stdout.take());
    let stderr = stderr_tail(child.stderr.take(), program, ctx.redactor.clone());
    let mut written = stdin.write_all(&input).await;
    if written.is_ok() {
        written = stdin.shutdown().await;
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(RestoreError::io(format!("cannot wait for {program}")))?;
    let stderr = stderr.await.unwrap_or_default();
    if let Err(e) = written
        && status.success()
    {
        return Err(RestoreError::io(format!("{program} stdin"))(e));
    }
    Ok((stderr, status))
}

/// Streams an archive into a program's stdin; returns plaintext bytes, the
/// program's stderr tail and how it ended. The archive must check out.
async fn pipe_into(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    launch: Launch,
    program: &str,
    tee: Option<std::fs::File>,
) -> Result<(u64, String, Ended), RestoreError> {
    let pb = progress_bar(ctx, item);
    // Verified whole before pg_restore sees a byte: a dump runs code.
    let stored = crate::restore::spool_verified(ctx, item, &pb).await?;
    let mut child = launch
        .start(program, true)
        .await
        .map_err(|e| RestoreError::Failed(format!("cannot start {program}: {e}")))?;
    let stdin = child.stdin.take().expect("stdin is attached");
    drop(child.stdout.take());
    let stderr = stderr_tail(child.stderr.take(), program, ctx.redactor.clone());
    let ids = ctx.identities.clone();
    let copy = tokio::task::spawn_blocking(move || {
        // The decoder is synchronous; the program's stdin (a pipe here, an
        // engine connection for a container) is not.
        let mut out = Tee {
            first: tokio_util::io::SyncIoBridge::new(stdin),
            second: tee,
        };
        let copied = copy_archive(stored, &ids, &mut out);
        // EOF for the program.
        let _ = out.first.shutdown();
        copied
    });
    let copied = copy
        .await
        .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    if let Err(stream::ReadError::WrongKey(_) | stream::ReadError::Damaged(..)) = &copied {
        // Do not let the program finish on a truncated input.
        child.kill();
    }
    let status = child
        .wait()
        .await
        .map_err(RestoreError::io(format!("cannot wait for {program}")))?;
    let stderr = stderr.await.unwrap_or_default();
    pb.finish_and_clear();
    match copied {
        Ok(bytes) => Ok((bytes, stderr, status)),
        // pg_restore stopping early closes its stdin: its own error says more.
        Err(stream::ReadError::Output(..)) if !status.success() => Ok((0, stderr, status)),
        Err(e) => Err(e.into()),
    }
}

/// Restores one database into `name` (see the module documentation for the
/// steps): into a scratch database first, then put in place.
pub async fn restore_database(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    name: &str,
) -> Result<(u64, String), RestoreError> {
    let cfg = resolved_target(ctx).await?;
    let tool = restore_tool(&cfg, &item.choice).await?;
    // The swap needs a session outside the database being replaced: when
    // that is the maintenance database itself (`postgres`), use template1.
    let admin_db = if name == cfg.endpoint.maintenance_db {
        "template1"
    } else {
        cfg.endpoint.maintenance_db.as_str()
    };
    let swap = Swap {
        admin: connect_to(&cfg, admin_db).await?,
        name,
        scratch: format!("kdr_restore_{:08x}", rand::random::<u32>()),
    };
    swap.create_scratch().await?;
    let bytes = match run_pg_restore(ctx, item, &cfg, &tool, &swap.scratch).await {
        Ok(b) => b,
        Err(e) => {
            swap.drop_scratch().await;
            return Err(e.unchanged(format!("database {name}")));
        }
    };
    let message = swap.put_in_place().await?;
    Ok((bytes, message))
}

/// Moving a restored scratch database into place under `name`, through a
/// session on another database.
struct Swap<'a> {
    admin: Client,
    name: &'a str,
    scratch: String,
}

impl Swap<'_> {
    async fn create_scratch(&self) -> Result<(), RestoreError> {
        let (name, scratch) = (self.name, &self.scratch);
        self.admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(scratch)
            ))
            .await
            .map_err(RestoreError::db(format!(
                "cannot create the scratch database {scratch}; database {name} is unchanged"
            )))
    }

    async fn drop_scratch(&self) {
        if let Err(e) = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&self.scratch)
            ))
            .await
        {
            tracing::warn!(database = %self.scratch, error = %RestoreError::db("drop")(e), "could not drop the scratch database: drop it by hand");
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), tokio_postgres::Error> {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(from),
                quote_ident(to)
            ))
            .await
    }

    /// Renames the scratch database to `name`, replacing a database of
    /// that name if there is one; returns what was done.
    async fn put_in_place(&self) -> Result<String, RestoreError> {
        let (name, scratch) = (self.name, &self.scratch);
        let exists = self
            .admin
            .query_opt(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .map_err(RestoreError::db("cannot list databases"))?;
        let Some(row) = exists else {
            self.rename(scratch, name)
                .await
                .map_err(RestoreError::db(format!(
                    "restored into {scratch}, but cannot rename it to {name}: rename it by hand"
                )))?;
            return Ok(format!("restored into new database {name}"));
        };
        let owner: String = row.get(0);
        let (old, terminated) = self.move_aside().await?;
        if let Err(e) = self.rename(scratch, name).await {
            return Err(RestoreError::Failed(format!(
                "{}: the original database is now named {old} (closed to connections) and the restored copy is {scratch}; \
                 rename one of them to {name} by hand",
                RestoreError::db("rename")(e)
            )));
        }
        let _ = self
            .admin
            .batch_execute(&format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote_ident(name),
                quote_ident(&owner)
            ))
            .await;
        if let Err(e) = self
            .admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", quote_ident(&old)))
            .await
        {
            tracing::warn!(database = %old, error = %RestoreError::db("drop")(e), "the replaced database is still there: drop it by hand");
        }
        Ok(format!(
            "replaced database {name} ({terminated} session(s) terminated; the old one was dropped)"
        ))
    }

    /// Closes database `name` to new connections, terminates its sessions
    /// and renames it out of the way; returns its new name and the sessions
    /// terminated. On failure it is opened again and the scratch dropped.
    async fn move_aside(&self) -> Result<(String, i64), RestoreError> {
        let (name, scratch) = (self.name, &self.scratch);
        let old = format!("kdr_replaced_{:08x}", rand::random::<u32>());
        self.admin
            .batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote_ident(name)))
            .await
            .map_err(RestoreError::db(format!("cannot close database {name} to new connections; it is unchanged and the restored copy is {scratch}")))?;
        let mut terminated = 0i64;
        let mut renamed = Err(String::new());
        for _ in 0..20 {
            terminated += self.admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .map_err(RestoreError::db("cannot terminate sessions"))?
                .get::<_, i64>(0);
            match self.rename(name, &old).await {
                Ok(()) => {
                    renamed = Ok(());
                    break;
                }
                Err(e) => {
                    renamed = Err(RestoreError::db("rename")(e).to_string());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        if let Err(e) = renamed {
            let _ = self
                .admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                    quote_ident(name)
                ))
                .await;
            self.drop_scratch().await;
            return Err(RestoreError::Failed(format!(
                "cannot move database {name} aside ({e}); it is unchanged"
            )));
        }
        Ok((old, terminated))
    }
}

/// Runs pg_restore into `scratch`: streamed, or with `--jobs` staged in a
/// private file for a parallel post-data section.
async fn run_pg_restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    scratch: &str,
) -> Result<u64, RestoreError> {
    let mut cmd = command(cfg, tool, "pg_restore", scratch);
    cmd.args(["--exit-on-error", "--dbname", scratch]);
    if ctx.options.no_owner {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    let label = stream::label(&item.choice.artifact);
    let (bytes, stderr, status) = match ctx.options.jobs {
        None => pipe_into(ctx, item, cmd, "pg_restore", None).await?,
        Some(jobs) => run_staged(ctx, item, cmd, tool, cfg, scratch, jobs).await?,
    };
    if !status.success() {
        let hint = if stderr.contains("role") && stderr.contains("does not exist") {
            " (restore the roles first: --source postgres/globals)"
        } else {
            ""
        };
        return Err(RestoreError::Failed(format!(
            "pg_restore of {label} failed ({}): {}{hint}",
            status,
            stderr.trim()
        )));
    }
    Ok(bytes)
}

/// pg_restore -j needs a seekable file. Streams the schema and the data as
/// usual while writing the plaintext dump to a private temporary file, then
/// builds indexes and constraints (the post-data section) from that file
/// with `jobs` jobs.
async fn run_staged(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    mut cmd: Launch,
    tool: &DumpTool,
    cfg: &PostgresConfig,
    scratch: &str,
    jobs: usize,
) -> Result<(u64, String, Ended), RestoreError> {
    let dir = tempfile::Builder::new()
        .prefix("kompose-dr-restore-")
        .tempdir()
        .map_err(RestoreError::io("cannot create a temporary directory"))?;
    let path = dir.path().join("dump");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(RestoreError::io(format!(
                "cannot create {}",
                path.display()
            )))?
    };
    cmd.args(["--section=pre-data", "--section=data"]);
    let (bytes, stderr, status) = pipe_into(ctx, item, cmd, "pg_restore", Some(file)).await?;
    if !status.success() {
        return Ok((bytes, stderr, status));
    }
    let (stderr, status) = post_data(ctx, cfg, tool, scratch, jobs, &path).await?;
    Ok((bytes, stderr, status))
}

/// The post-data section from the staged dump at `path`, with `jobs` jobs.
async fn post_data(
    ctx: &RestoreContext<'_>,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    scratch: &str,
    jobs: usize,
    path: &Path,
) -> Result<(String, Ended), RestoreError> {
    let Launch::Local(mut post) = command(cfg, tool, "pg_restore", scratch) else {
        return Err(RestoreError::Refused(
            "--jobs stages the dump in a local file, which pg_restore inside a container cannot read: drop --jobs".into(),
        ));
    };
    if ctx.options.no_owner {
        post.args(["--no-owner", "--no-privileges"]);
    }
    post.args([
        "--exit-on-error",
        "--section=post-data",
        "--dbname",
        scratch,
    ])
    .arg(format!("--jobs={jobs}"))
    .arg(path)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = post
        .output()
        .await
        .map_err(RestoreError::io("cannot start pg_restore"))?;
    Ok((
        ctx.redactor
            .scrub(String::from_utf8_lossy(&out.stderr).trim()),
        out.status.into(),
    ))
}

/// Writes to a program's stdin and, optionally, to a file as well.
struct Tee<W> {
    first: W,
    second: Option<std::fs::File>,
}

impl<W: std::io::Write> std::io::Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.first.write_all(buf)?;
        if let Some(f) = &mut self.second {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.first.flush()?;
        if let Some(f) = &mut self.second {
            f.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn roles_sql_with_a_meta_command_is_refused_and_pg_dumpall_output_passes() {
        let dumpall = b"\\restrict abc\nSET default_transaction_read_only = off;\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\n\\unrestrict abc\n";
        super::check_globals_sql(dumpall).unwrap();
        for evil in [
            &b"CREATE ROLE a;\n\\! touch /tmp/canary\n"[..],
            b"  \\copy (select 1) to program 'id'\n",
            b"\\o |sh\n",
            b"CREATE ROLE x; \\! id\n",
            b"SELECT 1 \\! id\n",
            b"\\unrestrict k \\! id\n",
            b"\x0b\\! id\n",
            b"\\restrict \n",
        ] {
            let e = super::check_globals_sql(evil).unwrap_err();
            assert!(e.contains("backslash on line"), "{e}");
        }
    }
}
