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
pub mod wal;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tokio_postgres::{Client, NoTls};

use super::{SourceContext, SourceRun, timed};
use crate::clients::ClientError;
use crate::clients::postgres::{
    DumpTool, ServerVersion, bulk_command, command, connect_within, database, query_error,
    quote_ident,
};
use crate::model::config::PostgresConfig;
use crate::model::facts::SourceFacts;
use crate::model::manifest::ArtifactKind;
use crate::model::source_name::SourceName;
use crate::storage::keys::artifact_key;

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
                .map_err(query_error(format!(
                    "database `{db}`: cannot start a transaction"
                )))?;
            let snapshot: String = client
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(query_error(format!(
                    "database `{db}`: cannot export a snapshot"
                )))?
                .get(0);
            run.captured_at = Some(Utc::now());

            // pg_dump and the row counts read the same exported snapshot, so
            // they can run side by side: the counts cost no wall time.
            let key = artifact_key(&ctx.snapshot, &source, ArtifactKind::PostgresDump);
            let mut cmd = bulk_command(cfg, tool, "pg_dump", db).await;
            cmd.args(["--format=custom", "--compress=0"])
                .arg(format!("--snapshot={snapshot}"))
                .arg(format!("--lock-wait-timeout={}", cfg.lock_wait.as_millis()));
            let facts = async {
                let tables = count_rows(&client, db).await?;
                let object = database::read(&client, db).await?;
                Ok::<_, ClientError>((tables, object))
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
                    return Err(e.into());
                }
            }
            stored
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(ctx.redactor.scrub(&e.to_string())));
        run
    })
    .await
}

/// Exact row counts of every ordinary table, in the current transaction's
/// snapshot. Tables belonging to extensions are skipped (pg_dump does not
/// dump their rows).
pub async fn count_rows(client: &Client, db: &str) -> Result<BTreeMap<String, u64>, ClientError> {
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
        .map_err(query_error(format!("database `{db}`: cannot list tables")))?;
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
            .map_err(query_error(format!(
                "database `{db}`: cannot count rows of {schema}.{table}"
            )))?
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
    let source = SourceName::POSTGRES_GLOBALS;
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
            // As for a database's dump: no configured secret in the report.
            .map_err(|e| crate::sources::Failed(ctx.redactor.scrub(&e.to_string())));
        run
    })
    .await
}
