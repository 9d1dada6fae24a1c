//! Restoring PostgreSQL: roles (globals) with psql, databases with
//! pg_restore.
//!
//! A database is always restored into a scratch database on the target
//! server first — created with the snapshot's encoding, locale provider,
//! collation, ctype and ICU locale, and marked (a comment naming this host
//! and process) so that one left by a killed restore is dropped by the
//! next — streamed from a verified copy of the stored bytes → age → zstd →
//! pg_restore's stdin, the post-data section with `pg_restore --jobs` on
//! a plaintext spool written on the way ([`spool`]). When pg_restore
//! succeeded and the archive checked out, the scratch database is given
//! the recorded owner, ACL, connection limit, settings, per-role settings
//! and comment ([`database`]), and swapped in under its name in one transaction
//! ([`Swap`]). A failed or interrupted restore leaves the existing database
//! exactly as it was, open to connections.
//!
//! Roles: the roles archive only creates the roles the target lacks; roles
//! that exist are left as they are (their passwords, attributes,
//! memberships) unless `--overwrite-roles` asks to reset them, and the plan
//! names both ([`globals`]).

pub mod cluster_swap;
pub mod globals;
pub mod pitr;
mod roles_sql;
mod spool;

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::stream;
use super::{Checked, ReadyItem, RestoreContext, RestoreError, Target, open_stored, progress_bar};
use crate::clients::launch::Launch;
use crate::clients::postgres::database::{self, Ownership};
use crate::clients::postgres::{
    DumpTool, beside, choose_client, command, connect, parse_tool_major, quote_ident,
};
use crate::model::config::PostgresConfig;
use crate::model::facts::{DatabaseFacts, SourceFacts};
use crate::process::{Ended, stderr_tail};
use crate::restore::plan::Choice;

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

/// Whether database `name` is where the other restores' sessions are: the
/// target's maintenance database (or `template1`, where its own restore's
/// session goes). Replacing it terminates every session on it, so it is
/// restored alone.
pub fn holds_sessions(ctx: &RestoreContext<'_>, name: &str) -> bool {
    name == "template1"
        || target_config(ctx).map_or(name == "postgres", |c| c.endpoint.maintenance_db == name)
}

/// The target with what its container supplies (user, password) filled in.
async fn resolved_target(ctx: &RestoreContext<'_>) -> Result<PostgresConfig, RestoreError> {
    Ok(crate::clients::postgres::resolve(&target_config(ctx)?).await?)
}

fn server(cfg: &PostgresConfig) -> String {
    match &cfg.container {
        Some(c) => format!("container {}", c.name),
        None => format!("{}:{}", cfg.endpoint.host, cfg.endpoint.port),
    }
}

fn database_name(ctx: &RestoreContext<'_>, c: &Choice) -> String {
    ctx.options.as_name.clone().unwrap_or_else(|| {
        crate::model::selection::source_database(&c.source)
            .unwrap_or_default()
            .to_owned()
    })
}

/// The major version of the server an artifact came from (0: unknown).
fn server_version_of(a: &crate::model::manifest::Artifact) -> u32 {
    a.server_version
        .as_deref()
        .map(|v| {
            v.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
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

/// What makes a database hold something: a restore into a database that
/// holds nothing needs no `--replace`, and keeps nothing aside. It is empty
/// when, outside PostgreSQL's own schemas (`pg_catalog`,
/// `information_schema`, `pg_toast*`, `pg_temp_*`), it has no relation
/// (table, view, sequence, index, …), no schema but `public`, no function or
/// procedure, no type, no extension but `plpgsql`, and no large object:
/// exactly what a fresh server's `postgres` and `template1` hold.
/// Each row of the query names one kind of user object and how many there are.
const USER_OBJECTS_SQL: &str = "\
    WITH sys(nspname) AS (SELECT nspname FROM pg_namespace \
        WHERE nspname IN ('pg_catalog', 'information_schema') \
           OR nspname LIKE 'pg\\_toast%' OR nspname LIKE 'pg\\_temp\\_%') \
    SELECT 'relations', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE n.nspname NOT IN (SELECT nspname FROM sys) \
    UNION ALL SELECT 'schemas', count(*) FROM pg_namespace \
        WHERE nspname <> 'public' AND nspname NOT IN (SELECT nspname FROM sys) \
    UNION ALL SELECT 'functions', count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
        WHERE n.nspname NOT IN (SELECT nspname FROM sys) \
    UNION ALL SELECT 'types', count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
        WHERE n.nspname NOT IN (SELECT nspname FROM sys) \
    UNION ALL SELECT 'extensions', count(*) FROM pg_extension WHERE extname <> 'plpgsql' \
    UNION ALL SELECT 'large objects', count(*) FROM pg_largeobject_metadata";

/// Whether database `name` exists and, if so, whether it holds anything
/// (see [`USER_OBJECTS_SQL`]). `template0`, which accepts no connection,
/// holds nothing by definition.
async fn state(cfg: &PostgresConfig, name: &str) -> Result<Option<bool>, RestoreError> {
    let client = connect_to(cfg, &cfg.endpoint.maintenance_db).await?;
    let row = client
        .query_opt(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(RestoreError::db("cannot list databases"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let allows: bool = row.get(0);
    if !allows && name == "template0" {
        return Ok(Some(false));
    }
    let db = connect_to(cfg, name).await?;
    let rows = db
        .query(USER_OBJECTS_SQL, &[])
        .await
        .map_err(RestoreError::db(format!("cannot inspect database {name}")))?;
    let held: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (kind, n): (&str, i64) = (r.get(0), r.get(1));
            (n > 0).then(|| format!("{n} {kind}"))
        })
        .collect();
    if !held.is_empty() {
        tracing::debug!(database = %name, holds = %held.join(", "), "the target database is not empty");
    }
    Ok(Some(!held.is_empty()))
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
    restore_tool(&cfg, c).await?;
    // An empty database (a fresh server's `postgres`) is filled, not
    // replaced: nothing it held is lost, so nothing is kept aside.
    Ok((target, existing == Some(true)))
}

/// What [`pipe_into`] fed a program: the plaintext bytes, its stderr's
/// tail and how it ended, and what the copy it was given holds.
struct Piped {
    bytes: u64,
    stderr: String,
    status: Ended,
    /// What the copy (`tee`) holds.
    spooled: Spooled,
}

/// What a plaintext copy holds once the feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spooled {
    /// No copy, or one that could not be written: unusable.
    Lost,
    /// The whole plaintext.
    Whole,
    /// Its start only (the limit, or as far as the program read).
    Start,
}

/// How the item's stored bytes are read checked against the signed
/// manifest ([`Checked`]): by pieces, or from a checked copy made now. A
/// dump runs code, so pg_restore sees no byte that did not check out.
async fn verified(ctx: &RestoreContext<'_>, item: &ReadyItem) -> Result<Checked, RestoreError> {
    let pb = progress_bar(ctx, item);
    let checked = Checked::prepare(&ctx.repository, &item.choice.artifact, &pb).await;
    pb.finish_and_clear();
    checked
}

/// Feeds the item's archive, read from its start through `stored`, to
/// `launch`'s stdin as it decodes, and a copy of the plaintext's first
/// bytes to `tee` if given (a file, and how many; a copy that fails to
/// write is dropped, said in the log, and the feed goes on).
async fn pipe_into(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    stored: &Checked,
    launch: Launch,
    tee: Option<(std::fs::File, u64)>,
) -> Result<Piped, RestoreError> {
    let program = "pg_restore";
    let stored = stored
        .reader(&ctx.repository, &item.choice.artifact)
        .await?;
    let mut child = launch
        .start(program, true)
        .await
        .map_err(|e| RestoreError::Failed(format!("cannot start {program}: {e}")))?
        .killed_on_drop();
    let stdin = child.stdin.take().expect("stdin is attached");
    drop(child.stdout.take());
    let stderr = stderr_tail(child.stderr.take(), program, ctx.redactor.clone());
    let ids = ctx.identities.clone();
    let copy = tokio::task::spawn_blocking(move || {
        // The decoder is synchronous; the program's stdin (a pipe here, an
        // engine connection for a container) is not.
        let (tee, limit) = tee.map_or((None, 0), |(file, limit)| (Some(file), limit));
        let mut out = spool::Tee::new(tokio_util::io::SyncIoBridge::new(stdin), tee, limit);
        let copied = stream::copy_archive_to_program(stored, &ids, &mut out);
        // EOF for the program.
        let _ = out.out.shutdown();
        let spooled = match (out.finish(), copied.is_ok() && !out.cut()) {
            (false, _) => Spooled::Lost,
            (true, true) => Spooled::Whole,
            (true, false) => Spooled::Start,
        };
        (copied, spooled)
    });
    let (copied, spooled) = copy
        .await
        .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    if copied
        .as_ref()
        .is_err_and(|e| !matches!(e, stream::ReadError::Output(..)))
    {
        // Do not let the program finish on a truncated input.
        child.kill();
    }
    let status = child
        .wait()
        .await
        .map_err(RestoreError::io(format!("cannot wait for {program}")))?;
    let stderr = stderr.await.unwrap_or_default();
    let bytes = match copied {
        Ok(bytes) => bytes,
        // pg_restore stopping early closes its stdin: its own error says more.
        Err(stream::ReadError::Output(..)) if !status.success() => 0,
        // It succeeded having read what it needed (`--section=post-data`
        // reads no data; with --exit-on-error, input cut short fails it);
        // the rest of the stored bytes was read and checked all the same
        // (`copy_archive_to_program`).
        Err(stream::ReadError::Output(..)) => item.choice.artifact.plaintext_bytes,
        Err(e) => return Err(e.into()),
    };
    Ok(Piped {
        bytes,
        stderr,
        status,
        spooled,
    })
}

/// The recorded database object of the choice's snapshot, if its facts
/// record one (snapshots before they did: `None`).
async fn recorded_object(
    ctx: &RestoreContext<'_>,
    c: &Choice,
) -> Result<Option<DatabaseFacts>, RestoreError> {
    let Some(stored) = &c.facts else {
        return Ok(None);
    };
    if ctx.identities.is_empty() {
        // A dry run holds no key: the plan cannot read the facts.
        return Ok(None);
    }
    let facts = ctx
        .repository
        .facts(stored, &ctx.identities)
        .await
        .map_err(|e| RestoreError::Failed(format!("snapshot {}: facts: {e}", c.snapshot)))?;
    Ok(match facts.sources.get(&c.source) {
        Some(SourceFacts::Postgres { database, .. }) => database.as_deref().cloned(),
        _ => None,
    })
}

/// The roles that exist on the server `client` is connected to.
async fn role_names(client: &Client) -> Result<BTreeSet<String>, RestoreError> {
    Ok(client
        .query("SELECT rolname FROM pg_roles", &[])
        .await
        .map_err(RestoreError::db("cannot list roles"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The roles the recorded object names (owner, ACL grantees, per-role
/// settings) that `roles` lacks.
fn missing_roles(f: &DatabaseFacts, roles: &BTreeSet<String>) -> Vec<String> {
    let named = std::iter::once(f.owner.clone())
        .chain(
            f.acl
                .iter()
                .flatten()
                .filter_map(|a| database::AclItem::parse(a)?.grantee),
        )
        .chain(f.settings.iter().filter_map(|s| s.role.clone()));
    let mut missing: Vec<String> = named.filter(|r| !roles.contains(r)).collect();
    missing.sort();
    missing.dedup();
    missing
}

/// The refusal when roles the database needs are missing on the target.
fn roles_refusal(name: &str, server: &str, missing: &[String]) -> RestoreError {
    RestoreError::Refused(format!(
        "database {name} needs role(s) {} on {server}, which do not exist: \
         restore the roles first (--source postgres/globals), or restore with --no-owner \
         (owner and privileges of the restoring user)",
        missing.join(", ")
    ))
}

/// This host, as the 8 hex digits scratch database names carry.
fn host_tag() -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(crate::model::host::name().as_bytes())[..4])
}

/// A new scratch database's name: `kdr_restore_<host>_<pid>_<random>`. The
/// name itself says which process on which host made it — the server may
/// create the database after a killed client is gone, before anything else
/// could be recorded — so one left by a killed restore can be told from one
/// still in use, and dropped by the next restore.
fn scratch_name() -> String {
    format!(
        "kdr_restore_{}_{}_{:08x}",
        host_tag(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The comment a scratch database carries until it is put in place (for
/// people: the name is what the sweep reads).
fn scratch_marker() -> String {
    format!(
        "kompose-dr restore in progress: host={} pid={}",
        crate::model::host::name(),
        std::process::id()
    )
}

/// Drops the scratch databases of restores on this host whose process is
/// gone (killed: `kill -9`, a power cut), and names databases an
/// unfinished `--replace` kept aside: those hold production's data as it
/// was, so they are never dropped silently.
async fn sweep_leftovers(admin: &Client, server: &str) -> Vec<String> {
    let rows = match admin
        .query(
            "SELECT datname FROM pg_database \
             WHERE datname LIKE 'kdr\\_restore\\_%' OR datname LIKE 'kdr\\_replaced\\_%'",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %RestoreError::db("list")(e), "cannot look for the leftovers of interrupted restores");
            return Vec::new();
        }
    };
    let host = host_tag();
    let mut notes = Vec::new();
    for r in rows {
        let db: String = r.get(0);
        if db.starts_with("kdr_replaced_") {
            if first_mention(&db) {
                notes.push(replaced_note(&db, server));
            }
            continue;
        }
        let parts: Vec<&str> = db.trim_start_matches("kdr_restore_").split('_').collect();
        let pid = match parts.as_slice() {
            [h, pid, _] if *h == host => match pid.parse::<i32>() {
                Ok(pid) => pid,
                Err(_) => continue,
            },
            [_, _, _] => {
                notes.push(format!(
                    "database {db} on {server} is the scratch database of a restore on another host: \
                     drop it (DROP DATABASE {}) if that restore is not running",
                    quote_ident(&db)
                ));
                continue;
            }
            _ => {
                notes.push(format!(
                    "database {db} on {server} looks like a restore's scratch database: \
                     check it, then drop it (DROP DATABASE {})",
                    quote_ident(&db)
                ));
                continue;
            }
        };
        // Gone only if the process does not exist (ESRCH): EPERM means a
        // process of another user runs under that pid.
        let gone = crate::process::is_gone(pid);
        if !gone || pid == std::process::id() as i32 {
            continue;
        }
        match admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&db)
            ))
            .await
        {
            Ok(()) => {
                tracing::info!(database = %db, pid, "dropped the scratch database of an interrupted restore")
            }
            Err(e) => {
                tracing::warn!(database = %db, error = %RestoreError::db("drop")(e), "cannot drop the scratch database of an interrupted restore: drop it by hand")
            }
        }
    }
    notes
}

/// Restores one database into `name` (see the module documentation for the
/// steps): into a scratch database created with the recorded encoding and
/// locale, given the recorded owner, ACL, settings and comment, then
/// swapped into place in one transaction.
///
/// pg_restore reads the archive through a [`Checked`] reader: piece by
/// piece, or, for a snapshot that records no pieces, from a checked copy
/// of the whole archive, made while the server is prepared (a preparation
/// that fails abandons it; a copy that does not check out drops the
/// scratch database).
pub async fn restore_database(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    name: &str,
) -> Result<(u64, String), RestoreError> {
    let cfg = resolved_target(ctx).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (prepared, archive) = tokio::join!(
        async {
            let p = prepare(ctx, item, &cfg, name).await;
            if p.is_err() {
                stop.cancel();
            }
            p
        },
        verified_unless(ctx, item, &stop),
    );
    let (mut job, mut swap, recovered) = prepared?;
    let input = match (recovered, archive) {
        (Some(dump), _) => Ok(Input::Recovered(Box::new(dump))),
        (None, Some(Ok(file))) => Ok(Input::Archive(file)),
        (None, Some(Err(e))) => Err(e),
        (None, None) => Err(RestoreError::Failed("interrupted before pg_restore".into())),
    };
    let done = match input {
        Ok(input) => job.fill_and_swap(&mut swap, input).await,
        Err(e) => Err(e.unchanged(format!("database {name}"))),
    };
    // The one guard of the scratch database: whatever step failed, a copy
    // still under its scratch name is dropped.
    if done.is_err() {
        swap.drop_if_live().await;
    }
    done
}

/// What fills the scratch database.
enum Input {
    /// How the item's archive is read, checked ([`verified`]).
    Archive(Checked),
    /// The dump of a cluster recovered to the time asked for.
    Recovered(Box<pitr::RecoveredDump>),
}

/// How the item's archive is read ([`verified`]), or `None` when the
/// restore is cancelled, `stop` is (the preparation failed), or the item
/// restores from a recovered cluster instead.
async fn verified_unless(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Result<Checked, RestoreError>> {
    if item.choice.recovery.is_some() {
        return None;
    }
    tokio::select! {
        v = verified(ctx, item) => Some(v),
        () = stop.cancelled() => None,
        () = ctx.cancel.cancelled() => None,
    }
}

/// Everything before pg_restore: the restore tool, the database as
/// recorded (or as recovered to a time), the roles on the server, and the
/// scratch database, created and marked. Refuses when the owner or a
/// grantee of the recorded database is not on the server.
async fn prepare<'a, 'c>(
    ctx: &'a RestoreContext<'c>,
    item: &'a ReadyItem,
    cfg: &'a PostgresConfig,
    name: &'a str,
) -> Result<(DatabaseJob<'a, 'c>, Swap<'a>, Option<pitr::RecoveredDump>), RestoreError> {
    let tool = restore_tool(cfg, &item.choice).await?;
    // Base backup + WAL: the database as it was at the time, dumped from a
    // scratch cluster recovered to it.
    let recovered = match &item.choice.recovery {
        Some(r) => Some(pitr::recovered_dump(ctx, &item.choice.source, r).await?),
        None => None,
    };
    let object = match &recovered {
        Some(d) => Some(d.object.clone()),
        None => recorded_object(ctx, &item.choice).await?,
    };
    let admin = admin_session(cfg, name).await?;
    let notes = sweep_leftovers(&admin, &server(cfg)).await;
    let major = crate::clients::postgres::server_version(&admin)
        .await
        .map_err(RestoreError::from_source)?
        .major;
    let roles = role_names(&admin).await?;
    let ownership = if ctx.options.no_owner {
        Ownership::Skip
    } else {
        Ownership::Recorded
    };
    if let Some(f) = &object
        && ownership == Ownership::Recorded
    {
        let missing = missing_roles(f, &roles);
        if !missing.is_empty() {
            return Err(roles_refusal(name, &server(cfg), &missing));
        }
    }
    let mut swap = Swap::new(admin, cfg, name, ctx.options.replace);
    swap.create_scratch(&create_sql(&swap.scratch, object.as_ref(), major, name)?)
        .await?;
    let job = DatabaseJob {
        ctx,
        item,
        tool,
        object,
        ownership,
        roles,
        notes,
    };
    Ok((job, swap, recovered))
}

/// A session for the swap, outside the database being replaced: when that
/// is the maintenance database itself (`postgres`), on template1.
async fn admin_session(cfg: &PostgresConfig, name: &str) -> Result<Client, RestoreError> {
    let admin_db = if name == cfg.endpoint.maintenance_db {
        "template1"
    } else {
        cfg.endpoint.maintenance_db.as_str()
    };
    let admin = connect_to(cfg, admin_db).await?;
    // The literals built here assume standard strings; no statement of the
    // restore waits on a lock for long, nor leaves the server waiting on
    // this client inside a transaction; the commit that puts a restored
    // database in place waits for the disk, and with it everything
    // pg_restore wrote before it (see `session_options`).
    admin
        .batch_execute(
            "SET standard_conforming_strings = on; SET lock_timeout = '30s'; \
             SET idle_in_transaction_session_timeout = '60s'; SET synchronous_commit = on",
        )
        .await
        .map_err(RestoreError::db(format!(
            "cannot prepare the session on {}",
            server(cfg)
        )))?;
    Ok(admin)
}

/// The statement creating the scratch database: as the recorded object
/// was (encoding, locale), or from template0 for a snapshot without one.
fn create_sql(
    scratch: &str,
    object: Option<&DatabaseFacts>,
    major: u32,
    name: &str,
) -> Result<String, RestoreError> {
    Ok(match object {
        Some(f) => database::create_sql(scratch, f, major).map_err(|e| {
            RestoreError::Refused(format!("database {name} cannot be created as it was: {e}"))
        })?,
        None => format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(scratch)
        ),
    })
}

/// One database's restore once the target was looked at: what fills the
/// scratch database and what it is given before the swap.
struct DatabaseJob<'a, 'c> {
    ctx: &'a RestoreContext<'c>,
    item: &'a ReadyItem,
    tool: DumpTool,
    object: Option<DatabaseFacts>,
    ownership: Ownership,
    roles: BTreeSet<String>,
    /// What the final message adds (leftovers found, what was skipped).
    notes: Vec<String>,
}

impl DatabaseJob<'_, '_> {
    /// Fills the scratch database with pg_restore, gives it the recorded
    /// properties and puts it in place; returns the plaintext bytes and the
    /// message. The caller drops the scratch database on an error.
    async fn fill_and_swap(
        &mut self,
        swap: &mut Swap<'_>,
        input: Input,
    ) -> Result<(u64, String), RestoreError> {
        let (ctx, name) = (self.ctx, swap.name);
        let bytes = self
            .fill(swap, input)
            .await
            .map_err(|e| e.unchanged(format!("database {name}")))?;
        let (sql, comment) = self.properties(&swap.scratch);
        swap.apply(&sql)
            .await
            .map_err(|e| e.unchanged(format!("database {name}")))?;
        if ctx.cancel.is_cancelled() {
            return Err(RestoreError::Failed("interrupted before the swap".into())
                .unchanged(format!("database {name}")));
        }
        let mut message = swap.put_in_place(self.object.is_none(), &comment).await?;
        for n in &self.notes {
            message.push_str("; ");
            message.push_str(n);
        }
        Ok((bytes, message))
    }

    /// Runs pg_restore into the scratch database (from the archive, or the
    /// dump of a recovered cluster) unless the restore is cancelled first.
    async fn fill(&self, swap: &Swap<'_>, input: Input) -> Result<u64, RestoreError> {
        let (ctx, cfg, tool, scratch) = (self.ctx, swap.cfg, &self.tool, &swap.scratch);
        tokio::select! {
            r = async {
                match input {
                    Input::Recovered(d) => pg_restore_file(ctx, cfg, tool, scratch, *d).await,
                    Input::Archive(stored) => run_pg_restore(ctx, self.item, cfg, tool, scratch, stored).await,
                }
            } => r,
            () = ctx.cancel.cancelled() => Err(RestoreError::Failed("interrupted during pg_restore".into())),
        }
    }

    /// The statements giving `scratch` its recorded properties, and apart
    /// from them the last one, its comment: it replaces the scratch marker
    /// only in the swap itself, so a copy left by a kill before it is
    /// still recognised and swept. Notes what is not restored.
    fn properties(&mut self, scratch: &str) -> (Vec<String>, String) {
        let (mut sql, skipped) = match &self.object {
            Some(f) => database::apply_sql(scratch, f, self.ownership, &self.roles),
            None => {
                self.notes.push(
                    "the snapshot predates recorded database properties: owner, privileges, settings and locale are the server's defaults".into(),
                );
                (
                    vec![format!(
                        "COMMENT ON DATABASE {} IS NULL",
                        quote_ident(scratch)
                    )],
                    Vec::new(),
                )
            }
        };
        let comment = sql.pop().expect("the last statement sets the comment");
        self.notes
            .extend(skipped.into_iter().map(|s| format!("not restored: {s}")));
        (sql, comment)
    }
}

/// Moving a restored scratch database into place under `name`, through a
/// session on another database.
///
/// The swap is one transaction: the sessions on `name` are terminated,
/// `name` is renamed aside and the scratch database renamed to `name`, and
/// the transaction commits or rolls back as a whole — a failure, a signal
/// or `kill -9` at any moment leaves either the original or the restored
/// database under `name`, never neither, and never a database closed to
/// connections. Only then is the original dropped.
struct Swap<'a> {
    admin: Client,
    cfg: &'a PostgresConfig,
    name: &'a str,
    scratch: String,
    replace: bool,
    /// Whether the scratch database exists under its scratch name, ours to
    /// drop: the guard [`Swap::drop_if_live`] reads it.
    live: bool,
}

/// Why the swap's transaction did not happen, or whether it did is unknown.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// It rolled back (every try, or the one whose answer was lost): nothing
    /// changed.
    #[error("{0}")]
    RolledBack(#[source] RestoreError),
    /// The answer was lost and a fresh session could not tell.
    #[error(
        "{last}; and whether the swap happened is unknown ({check}): look for database {aside}"
    )]
    Unknown {
        /// The swap's error.
        last: RestoreError,
        /// Why the fresh session could not tell.
        #[source]
        check: RestoreError,
        /// The name the original would have now.
        aside: String,
    },
    /// The answer was lost and no fresh session could be had.
    #[error(
        "{last}; the connection was lost and whether the swap happened is unknown ({connect}): \
         if database {aside} exists, {name} holds the restored copy and {aside} the original"
    )]
    Lost {
        /// The swap's error.
        last: RestoreError,
        /// Why no fresh session could be had.
        #[source]
        connect: RestoreError,
        /// The name the original would have now.
        aside: String,
        /// The database swapped.
        name: String,
    },
}

/// The sessions the swap's batch says it terminated.
fn terminated(messages: &[tokio_postgres::SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// How often the swap tries again when sessions keep reconnecting to the
/// database being replaced (each try waits up to 5 s for them to go).
const SWAP_ATTEMPTS: u32 = 5;

impl<'a> Swap<'a> {
    /// A swap into `name` through the session `admin`, with a new scratch
    /// name (nothing created yet).
    fn new(admin: Client, cfg: &'a PostgresConfig, name: &'a str, replace: bool) -> Self {
        Swap {
            admin,
            cfg,
            name,
            scratch: scratch_name(),
            replace,
            live: false,
        }
    }

    /// Creates the scratch database with `create` and marks it as a
    /// restore's (dropped again when the marking fails).
    async fn create_scratch(&mut self, create: &str) -> Result<(), RestoreError> {
        let (name, scratch) = (self.name, self.scratch.clone());
        self.admin.batch_execute(create).await.map_err(RestoreError::db(format!(
            "cannot create the scratch database {scratch} with the snapshot's encoding and locale; database {name} is unchanged"
        )))?;
        self.live = true;
        let marker = format!(
            "COMMENT ON DATABASE {} IS {}",
            quote_ident(&scratch),
            database::literal(&scratch_marker())
        );
        if let Err(e) = self.admin.batch_execute(&marker).await {
            self.drop_if_live().await;
            return Err(RestoreError::db(format!(
                "cannot mark the scratch database {scratch}; database {name} is unchanged"
            ))(e));
        }
        Ok(())
    }

    /// Gives the scratch database the recorded properties, statement by
    /// statement; the first failure names the statement.
    async fn apply(&self, sql: &[String]) -> Result<(), RestoreError> {
        for stmt in sql {
            // One statement per call (the extended protocol refuses a
            // second): nothing built from the facts can smuggle another in.
            self.admin
                .execute(stmt.as_str(), &[])
                .await
                .map_err(RestoreError::db(format!(
                    "cannot give the restored database its recorded properties (`{stmt}`)"
                )))?;
        }
        Ok(())
    }

    /// The scratch database's guard: drops it if it is still there under
    /// its scratch name (a step failed before, or undid, the swap).
    async fn drop_if_live(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
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

    /// The owner of database `db`, if it exists.
    async fn owner(&self, db: &str) -> Result<Option<String>, RestoreError> {
        Ok(self
            .admin
            .query_opt(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
                &[&db],
            )
            .await
            .map_err(RestoreError::db("cannot list databases"))?
            .map(|r| r.get(0)))
    }

    /// In one transaction, sent as one batch so that the server never
    /// waits on this client in the middle of it: terminates the sessions on
    /// `name`, renames it to `aside` and `incoming` to `name`, and runs
    /// `first` (the restored copy's own comment, which replaces the scratch
    /// marker only as it goes live). Returns the sessions terminated, or the
    /// last error after [`SWAP_ATTEMPTS`] tries (nothing changed). When the
    /// answer is lost, a fresh session tells whether the commit happened.
    async fn exchange(
        &mut self,
        incoming: &str,
        aside: &str,
        first: Option<&str>,
    ) -> Result<u64, ExchangeError> {
        let name = self.name;
        let batch = format!(
            "BEGIN; {}SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = {} AND pid <> pg_backend_pid(); \
             ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT",
            first.map(|f| format!("{f}; ")).unwrap_or_default(),
            database::literal(name),
            quote_ident(name),
            quote_ident(aside),
            quote_ident(incoming),
            quote_ident(name)
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match self.admin.simple_query(&batch).await {
                Ok(messages) => return Ok(terminated(&messages)),
                Err(e) => RestoreError::db("swap")(e),
            };
            if self.admin.is_closed() {
                // The answer was lost: ask a fresh session what happened
                // before saying anything.
                return self.after_lost_answer(e, aside).await;
            }
            let _ = self.admin.batch_execute("ROLLBACK").await;
            tracing::warn!(database = %name, attempt, error = %e, "swap rolled back; trying again");
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
            if attempt == SWAP_ATTEMPTS {
                return Err(ExchangeError::RolledBack(e));
            }
        }
    }

    /// The swap's answer was lost with the session: whether it committed,
    /// as a fresh session sees it (database `aside` exists: it did).
    async fn after_lost_answer(
        &mut self,
        last: RestoreError,
        aside: &str,
    ) -> Result<u64, ExchangeError> {
        let aside = aside.to_owned();
        match connect_to(self.cfg, "template1").await {
            Ok(fresh) => {
                self.admin = fresh;
                match self.owner(&aside).await {
                    Ok(Some(_)) => Ok(0),
                    Ok(None) => Err(ExchangeError::RolledBack(last)),
                    Err(check) => Err(ExchangeError::Unknown { last, check, aside }),
                }
            }
            Err(connect) => Err(ExchangeError::Lost {
                last,
                connect,
                aside,
                name: self.name.to_owned(),
            }),
        }
    }

    /// Puts the scratch database in place under `name`, replacing a
    /// database of that name if there is one (re-checking, now, that it
    /// may: `--replace`, or empty); returns what was done. `keep_owner`:
    /// without a recorded owner, a replaced database's owner is kept.
    /// `comment` gives the restored copy its comment in the same
    /// transaction that puts it in place. On an error, the scratch
    /// database is left to the caller's guard ([`Swap::drop_if_live`]).
    async fn put_in_place(
        &mut self,
        keep_owner: bool,
        comment: &str,
    ) -> Result<String, RestoreError> {
        let name = self.name;
        let owner = self
            .owner(name)
            .await
            .map_err(|e| e.unchanged(format!("database {name}")))?;
        let Some(owner) = owner else {
            return self.rename_into_new(comment).await;
        };
        // Checked again now, not only when the plan was made: rows written
        // since (during the question, during pg_restore) are not dropped.
        let holds_data = self.holds_data().await?;
        if keep_owner {
            let stmt = format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote_ident(&self.scratch),
                quote_ident(&owner)
            );
            self.apply(&[stmt])
                .await
                .map_err(|e| e.unchanged(format!("database {name}")))?;
        }
        let old = replaced_name(name);
        let terminated = self.swap_in(&old, comment).await?;
        if holds_data || self.late_with_replace(&old).await {
            // Only with --replace. What production held stays, renamed,
            // until the operator has looked: an incident must not lose it
            // twice.
            first_mention(&old);
            return Ok(format!(
                "replaced database {name} ({terminated} session(s) terminated); what it held is kept as database {old}: \
                 drop it once the restore is confirmed (DROP DATABASE {} — docs/RUNBOOK.md)",
                quote_ident(&old)
            ));
        }
        self.undo_if_late(&old).await?;
        Ok(self.drop_replaced(&old, terminated).await)
    }

    /// Whether `name` holds data now. Without `--replace` that refuses (it
    /// was empty or absent when the plan was made); with it, a database
    /// that cannot be inspected counts as holding data (kept aside).
    async fn holds_data(&self) -> Result<bool, RestoreError> {
        let name = self.name;
        match state(self.cfg, name).await {
            Ok(Some(true)) if !self.replace => Err(RestoreError::Refused(format!(
                "database {name} holds data now (it was empty or absent when the plan was made): \
                 nothing was changed and the restored copy was dropped; restore with --as NEW_NAME, or --replace"
            ))),
            Ok(s) => Ok(s == Some(true)),
            Err(e) if self.replace => {
                tracing::warn!(database = %name, error = %e, "cannot tell whether the database holds data: it is kept aside");
                Ok(true)
            }
            Err(e) => Err(e.unchanged(format!("database {name}"))),
        }
    }

    /// No database is called `name`: renames the scratch database to it.
    async fn rename_into_new(&mut self, comment: &str) -> Result<String, RestoreError> {
        let name = self.name;
        let renamed = self
            .admin
            .batch_execute(&format!(
                "BEGIN; {comment}; ALTER DATABASE {} RENAME TO {}; COMMIT",
                quote_ident(&self.scratch),
                quote_ident(name)
            ))
            .await;
        match renamed {
            Ok(()) => {
                self.live = false;
                Ok(format!("restored into new database {name}"))
            }
            Err(e) => {
                let _ = self.admin.batch_execute("ROLLBACK").await;
                Err(RestoreError::db(format!(
                    "cannot rename the restored copy to {name} (was it created meanwhile?); the restored copy was dropped"
                ))(e)
                .unchanged(format!("database {name}")))
            }
        }
    }

    /// Swaps the scratch database in under `name`, the original aside as
    /// `old`; returns the sessions terminated.
    async fn swap_in(&mut self, old: &str, comment: &str) -> Result<u64, RestoreError> {
        let (name, scratch) = (self.name, self.scratch.clone());
        match self.exchange(&scratch, old, Some(comment)).await {
            Ok(n) => {
                self.live = false;
                Ok(n)
            }
            Err(e) => Err(RestoreError::Failed(format!(
                "cannot swap the restored copy in ({e}): sessions may keep reconnecting; stop the application and try again; \
                 the restored copy was dropped"
            ))
            .unchanged(format!("database {name} (open to connections, under its name)"))),
        }
    }

    /// With `--replace`, after swapping out a database that was empty:
    /// whether it received data since (or cannot be checked), in which
    /// case it is kept aside like any replaced database.
    async fn late_with_replace(&self, old: &str) -> bool {
        self.replace && !matches!(state(self.cfg, old).await, Ok(Some(false)))
    }

    /// Without `--replace`: when the original (now `old`) received rows
    /// between the check and the swap, puts it back and refuses.
    async fn undo_if_late(&mut self, old: &str) -> Result<(), RestoreError> {
        let name = self.name;
        if self.replace {
            return Ok(());
        }
        let late = match state(self.cfg, old).await {
            Ok(s) => s == Some(true),
            Err(e) => {
                return Err(RestoreError::Failed(format!(
                    "database {name} now holds the restored copy; the original is kept as database {old}, \
                     because it could not be checked to be empty ({e}): drop it once you have looked (DROP DATABASE {})",
                    quote_ident(old)
                )));
            }
        };
        if !late {
            return Ok(());
        }
        let scratch = self.scratch.clone();
        match self.exchange(old, &scratch, None).await {
            Ok(_) => {
                // The restored copy is the scratch database again.
                self.live = true;
                Err(RestoreError::Refused(format!(
                    "database {name} received data during the swap: it was put back as it was and the restored copy dropped; \
                     restore with --as NEW_NAME, or --replace"
                )))
            }
            Err(e) => Err(RestoreError::Failed(format!(
                "database {name} received data during the swap, and putting it back failed ({e}): \
                 {name} now holds the restored copy and the original is database {old}; rename them by hand"
            ))),
        }
    }

    /// Drops the original, which held no user objects; returns the message.
    async fn drop_replaced(&self, old: &str, terminated: u64) -> String {
        let name = self.name;
        match self
            .admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", quote_ident(old)))
            .await
        {
            Ok(()) => format!(
                "restored into database {name}, which held no user objects ({terminated} session(s) terminated; \
                 the empty one it replaced was dropped)"
            ),
            Err(e) => {
                let e = RestoreError::db("drop")(e);
                tracing::warn!(database = %old, error = %e, "the replaced database is still there: drop it by hand");
                format!(
                    "restored into database {name}, which held no user objects ({terminated} session(s) terminated); \
                     the empty one it replaced is still there as {old} ({e}): drop it by hand"
                )
            }
        }
    }
}

/// The `kdr_replaced_*` databases this process has named already (in a
/// note, or as what its own `--replace` kept aside): each is named once per
/// run, not again in the message of every database restored after it.
static MENTIONED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Whether `db` is named for the first time in this process (and records it).
fn first_mention(db: &str) -> bool {
    MENTIONED
        .lock()
        .map(|mut m| m.insert(db.to_owned()))
        .unwrap_or(true)
}

/// What a `kdr_replaced_<time>_<tag>_<name>` database is: what `name` held
/// before a `restore --replace` swapped it out at `time`, kept until checked.
pub fn replaced_note(db: &str, server: &str) -> String {
    let rest = db.strip_prefix("kdr_replaced_").unwrap_or(db);
    let mut parts = rest.splitn(3, '_');
    let what = match (parts.next(), parts.next(), parts.next()) {
        (Some(time), Some(_), Some(name)) if !name.is_empty() => {
            format!("what database {name} held before `restore --replace` replaced it ({time} UTC)")
        }
        _ => "what a database held before `restore --replace` replaced it".to_owned(),
    };
    format!(
        "database {db} on {server} holds {what}, kept until checked; once the restore is confirmed, drop it: DROP DATABASE {}",
        quote_ident(db)
    )
}

/// The name a replaced database is kept under:
/// `kdr_replaced_<UTC time>_<name>` (cut to PostgreSQL's 63 bytes).
fn replaced_name(name: &str) -> String {
    let mut s = format!(
        "kdr_replaced_{}_{:04x}_",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u16>()
    );
    for c in name.chars() {
        if s.len() + c.len_utf8() > 63 {
            break;
        }
        s.push(c);
    }
    s
}

/// Runs pg_restore into `scratch` from the item's archive, read through
/// `stored` ([`verified`]); returns the plaintext bytes. With jobs (and room in `$TMPDIR`),
/// the pre-data and data sections stream into one pg_restore as the
/// archive decodes while a plaintext spool is written beside, and the
/// post-data section (indexes, constraints, triggers) runs with the jobs
/// on that spool ([`load_then_index`]); otherwise one pg_restore takes the
/// whole stream.
async fn run_pg_restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    scratch: &str,
    stored: Checked,
) -> Result<u64, RestoreError> {
    let args = pg_restore_args(ctx, scratch);
    let here = || {
        let mut cmd = command(cfg, tool, "pg_restore", scratch);
        cmd.args(&args);
        cmd.env("PGOPTIONS", SESSION_OPTIONS);
        cmd
    };
    let label = stream::label(&item.choice.artifact);
    let spool = if ctx.options.pg_restore_jobs() > 1 {
        // The spool only speeds up the post-data section.
        spool::PlainSpool::create(&item.choice.artifact).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no plaintext spool: the dump streams into one pg_restore job");
            None
        })
    } else {
        tracing::info!("one pg_restore, fed the verified archive as it decodes (--jobs 1)");
        None
    };
    let (bytes, stderr, status) = match spool {
        None => {
            let p = pipe_into(ctx, item, &stored, here(), None).await?;
            (p.bytes, p.stderr, p.status)
        }
        Some(spooled) => load_then_index(ctx, item, cfg, scratch, &here, &stored, spooled).await?,
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

/// The pre-data and data sections streamed into one pg_restore (the
/// archive decodes while the server loads it, as `age -d | zstd -d |
/// pg_restore` does) with the plaintext's start copied into `plain` on
/// the way; then the post-data section with the restore's jobs on that
/// copy, where a single pg_restore builds one index after another. In a
/// container, that runs in a client container beside the server that
/// sees the spool (started while the data loads), or else fed on
/// pg_restore's stdin. A spool that could not be written, or whose
/// table of contents is cut short, is not used: the post-data section
/// then streams from the archive again, one job.
///
/// The sections run one after the other: a single `pg_restore --jobs`
/// may create a trigger or rule on a partitioned table while a
/// partition's rows are still loading, and the trigger then rewrites
/// them.
async fn load_then_index(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    cfg: &PostgresConfig,
    scratch: &str,
    here: &(dyn Fn() -> Launch + Sync),
    stored: &Checked,
    spooled: (spool::PlainSpool, std::fs::File),
) -> Result<(u64, String, Ended), RestoreError> {
    let (mut plain, file) = spooled;
    let mut load = here();
    load.args(["--section=pre-data", "--section=data"]);
    let in_container = !matches!(load, Launch::Local(_));
    tracing::info!("pre-data and data stream into one pg_restore");
    let (loaded, beside) = tokio::join!(
        pipe_into(ctx, item, stored, load, Some((file, plain.kept))),
        async {
            match in_container {
                true => beside_for(cfg, &plain).await,
                false => None,
            }
        }
    );
    let loaded = loaded?;
    if !loaded.status.success() {
        return Ok((loaded.bytes, loaded.stderr, loaded.status));
    }
    plain.bytes = loaded.bytes;
    let there = beside.as_ref().map(|b| {
        move || {
            let mut l = b.launch(cfg, "pg_restore", scratch);
            l.args(pg_restore_args(ctx, scratch));
            l
        }
    });
    let make: &(dyn Fn() -> Launch + Sync) = match &there {
        Some(there) => there,
        None => here,
    };
    let feed = in_container && beside.is_none();
    let usable = match loaded.spooled {
        Spooled::Whole => true,
        Spooled::Start => toc_is_whole(ctx, make, &plain, feed).await,
        Spooled::Lost => false,
    };
    let (stderr, status) = if usable {
        post_data_from(ctx, make, &plain, feed).await?
    } else {
        tracing::warn!(
            "no usable plaintext spool: post-data streams from the checked archive again, one job"
        );
        let mut l = here();
        l.arg("--section=post-data");
        let p = pipe_into(ctx, item, stored, l, None).await?;
        (p.stderr, p.status)
    };
    Ok((loaded.bytes, stderr, status))
}

/// Whether pg_restore (`make`) reads a whole table of contents from the
/// start of the plaintext in `plain` (`--list`: no connection, nothing
/// run); says in the log when it does not.
async fn toc_is_whole(
    ctx: &RestoreContext<'_>,
    make: &(dyn Fn() -> Launch + Sync),
    plain: &spool::PlainSpool,
    feed: bool,
) -> bool {
    let mut launch = make();
    launch.arg("--list");
    let listed = match spool_input(&mut launch, plain, feed).await {
        Ok(file) => run_on(ctx, launch, file).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok((_, status)) if status.success() => true,
        Ok((stderr, status)) => {
            tracing::warn!(%status, stderr = %stderr.trim(), kept_bytes = plain.kept, "pg_restore --list cannot read a whole table of contents from the spool (a larger one than it keeps?)");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the spool's table of contents");
            false
        }
    }
}

/// Points `launch` at the spool: its path as the last argument, or, to
/// `feed` it on stdin, the open file to feed.
async fn spool_input(
    launch: &mut Launch,
    plain: &spool::PlainSpool,
    feed: bool,
) -> Result<Option<tokio::fs::File>, RestoreError> {
    if !feed {
        launch.arg(plain.path.to_string_lossy());
        return Ok(None);
    }
    let file = tokio::fs::File::open(&plain.path)
        .await
        .map_err(RestoreError::io(format!(
            "cannot open {}",
            plain.path.display()
        )))?;
    Ok(Some(file))
}

/// pg_restore's arguments into `scratch`, whatever feeds it.
fn pg_restore_args<'a>(ctx: &RestoreContext<'_>, scratch: &'a str) -> Vec<&'a str> {
    let mut args = vec!["--exit-on-error", "--dbname", scratch];
    if ctx.options.no_owner {
        args.extend(["--no-owner", "--no-privileges"]);
    }
    args
}

/// A client container beside the containerised server that sees the
/// spool, or `None` (said in the log) when there can be none.
async fn beside_for(cfg: &PostgresConfig, plain: &spool::PlainSpool) -> Option<beside::Beside> {
    match beside::start(cfg, None, plain.dir(), &plain.path).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no client container beside the server: post-data runs in its container, one job, fed on its stdin");
            None
        }
    }
}

/// Runs the post-data section (`make` gives pg_restore's command) on the
/// verified plaintext `plain`: with the restore's jobs on the file, or,
/// given `feed`, one job with the file on its stdin. Returns stderr's
/// tail and how it ended.
async fn post_data_from(
    ctx: &RestoreContext<'_>,
    make: &(dyn Fn() -> Launch + Sync),
    plain: &spool::PlainSpool,
    feed: bool,
) -> Result<(String, Ended), RestoreError> {
    let mut launch = make();
    launch.arg("--section=post-data");
    if !feed {
        let jobs = ctx.options.pg_restore_jobs();
        tracing::info!(
            jobs,
            bytes = plain.bytes,
            "post-data: pg_restore --jobs from the verified plaintext spool"
        );
        launch.arg(format!("--jobs={jobs}"));
    }
    let file = spool_input(&mut launch, plain, feed).await?;
    run_on(ctx, launch, file).await
}

/// The settings of pg_restore's own sessions (`PGOPTIONS`): commits that
/// do not wait for their WAL to reach the disk. The restore goes into a
/// scratch database that nothing sees until the admin session's rename,
/// whose commit (`synchronous_commit = on`, set there) flushes all WAL
/// before it; a crash before that leaves a scratch database the next
/// restore drops. Memory settings are left to the server: pg_restore
/// sessions run at once across `--jobs` sources and jobs each.
const SESSION_OPTIONS: &str = "-c synchronous_commit=off";

/// Runs `launch` (pg_restore) to its end, feeding it `feed` on its stdin
/// if given. Returns stderr's tail and how it ended.
async fn run_on(
    ctx: &RestoreContext<'_>,
    launch: Launch,
    feed: Option<tokio::fs::File>,
) -> Result<(String, Ended), RestoreError> {
    let mut launch = launch;
    launch.env("PGOPTIONS", SESSION_OPTIONS);
    let mut child = launch
        .start("pg_restore", feed.is_some())
        .await
        .map_err(|e| RestoreError::Failed(format!("cannot start pg_restore: {e}")))?
        .killed_on_drop();
    // Read to the end (`--list` writes there): a closed stdout would fail it.
    let stdout = child.stdout.take().map(|mut out| {
        tokio::spawn(async move { tokio::io::copy(&mut out, &mut tokio::io::sink()).await })
    });
    let stderr = stderr_tail(child.stderr.take(), "pg_restore", ctx.redactor.clone());
    let fed = match (feed, child.stdin.take()) {
        (Some(mut file), Some(mut stdin)) => {
            use tokio::io::AsyncWriteExt;
            let copied = tokio::io::copy(&mut file, &mut stdin).await.map(|_| ());
            let _ = stdin.shutdown().await;
            copied
        }
        _ => Ok(()),
    };
    let status = child
        .wait()
        .await
        .map_err(RestoreError::io("cannot wait for pg_restore"))?;
    let stderr = stderr.await.unwrap_or_default();
    if let Some(out) = stdout {
        let _ = out.await;
    }
    // pg_restore stopping early closes its stdin: its own error says more;
    // one that succeeded read what it needed (`--list` and the post-data
    // section read no data; with --exit-on-error, input cut short fails it).
    if let Err(e) = fed {
        tracing::debug!(error = %e, %status, "pg_restore's input was not read to its end");
    }
    Ok((stderr, status))
}

/// Runs pg_restore into `scratch` from a dump made here (a recovered
/// cluster's), fed on its stdin so that it works in a container too.
async fn pg_restore_file(
    ctx: &RestoreContext<'_>,
    cfg: &PostgresConfig,
    tool: &DumpTool,
    scratch: &str,
    dump: pitr::RecoveredDump,
) -> Result<u64, RestoreError> {
    let mut cmd = command(cfg, tool, "pg_restore", scratch);
    cmd.args(pg_restore_args(ctx, scratch));
    let file = tokio::fs::File::from_std(dump.file);
    let (stderr, status) = run_on(ctx, cmd, Some(file)).await?;
    if !status.success() {
        return Err(RestoreError::Failed(format!(
            "pg_restore of the recovered database failed ({status}): {}",
            stderr.trim()
        )));
    }
    Ok(dump.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_database_is_named_for_what_it_is() {
        let db = replaced_name("umami");
        let note = replaced_note(&db, "container core-postgres");
        assert!(
            note.contains("what database umami held before `restore --replace` replaced it"),
            "{note}"
        );
        assert!(note.contains(&format!("DROP DATABASE \"{db}\"")), "{note}");
        assert!(!note.contains("did not finish"), "{note}");
        // A name that does not follow the pattern is still named truthfully.
        let odd = replaced_note("kdr_replaced_x", "s");
        assert!(odd.contains("what a database held"), "{odd}");
        // Named once per process.
        assert!(first_mention("kdr_replaced_test_once"));
        assert!(!first_mention("kdr_replaced_test_once"));
    }
}
