//! The `postgres/cluster` source: a base backup of the whole server
//! (docs/DESIGN.md §11), the starting point of a point-in-time recovery.
//!
//! `pg_basebackup -D - -F tar -X fetch` writes the data directory as one
//! tar stream to stdout, which goes through the same zstd → age → sha256 →
//! repositories pipeline as a dump: nothing of the cluster is staged
//! locally. `-X fetch` puts the WAL written during the backup into the tar
//! too, so the archive alone is a consistent cluster; the WAL archive then
//! carries it forward to any later moment. The tool runs locally (of the
//! server's major version or newer) or inside the server's container, like
//! pg_dump.
//!
//! The manifest entry records where the backup starts and ends in the log
//! (from pg_basebackup's own report, read in the C locale), the cluster's
//! system identifier and its WAL segment size: what `check` and a
//! point-in-time plan need without a key.

use chrono::Utc;

use crate::clients::postgres::{
    DumpTool, ServerVersion, choose_client, command, connect_within, query_error,
};
use crate::model::config::PostgresConfig;
use crate::model::manifest::ArtifactKind;
use crate::model::source_name::SourceName;
use crate::model::wal::{BasePosition, Lsn, valid_segment_size};
use crate::sources::{SourceContext, SourceError, SourceRun, timed};
use crate::storage::keys::artifact_key;

/// The source name of base backups.
pub const SOURCE: &str = SourceName::POSTGRES_CLUSTER;

/// What identifies the cluster's log: its system identifier and WAL
/// segment size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// `pg_control_system().system_identifier`, as decimal text.
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub segment_size: u64,
    /// The timeline the server is on now.
    pub timeline: u32,
}

/// Reads the cluster's identity through a session on `db`.
pub async fn identity(client: &tokio_postgres::Client) -> Result<ClusterIdentity, SourceError> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
                    (SELECT timeline_id FROM pg_control_checkpoint())::int4",
            &[],
        )
        .await
        .map_err(query_error(
            "cannot read the cluster's system identifier and WAL segment size \
             (the role needs superuser or pg_monitor)",
        ))?;
    let system_identifier: String = row.get(0);
    let size: String = row.get(1);
    let timeline: i32 = row.get(2);
    let segment_size = size
        .parse::<u64>()
        .ok()
        .filter(|s| valid_segment_size(*s))
        .ok_or_else(|| {
            SourceError::Data(format!(
                "the server reports wal_segment_size `{size}`, not a size in bytes (PostgreSQL 11 or newer is needed)"
            ))
        })?;
    if system_identifier.is_empty() || !system_identifier.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SourceError::Data(format!(
            "the server reports system identifier `{system_identifier}`"
        )));
    }
    Ok(ClusterIdentity {
        system_identifier,
        segment_size,
        timeline: u32::try_from(timeline).unwrap_or(1),
    })
}

/// Reads pg_basebackup's verbose report (in the C locale): the start
/// position and timeline, and the end position.
pub fn parse_report(stderr: &str) -> Option<(Lsn, u32, Lsn)> {
    let mut start = None;
    let mut end = None;
    for line in stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut words = rest.split_whitespace();
            let lsn = words.next().and_then(Lsn::parse);
            let tl = rest
                .split("on timeline ")
                .nth(1)
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let (Some(l), Some(t)) = (lsn, tl) {
                start = Some((l, t));
            }
        }
        if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            end = rest.split_whitespace().next().and_then(Lsn::parse);
        }
    }
    let (s, tl) = start?;
    Some((s, tl, end?))
}

/// Takes a base backup of the whole server.
pub async fn base_backup(
    ctx: &SourceContext,
    cfg: &PostgresConfig,
    server: &ServerVersion,
) -> SourceRun {
    timed(async {
        let mut run = SourceRun::failed(SOURCE, ArtifactKind::PostgresCluster, "");
        run.server_version = Some(server.text.clone());
        let result = async {
            let tool: DumpTool = choose_client(
                cfg,
                "pg_basebackup",
                server.major,
                &format!("the server (PostgreSQL {})", server.text),
            )
            .await?;
            run.tool_version = Some(tool.version().to_owned());
            let client =
                connect_within(cfg, &cfg.endpoint.maintenance_db, ctx.timeouts.connect).await?;
            let id = identity(&client).await?;
            drop(client);
            let key = artifact_key(&ctx.snapshot, SOURCE, ArtifactKind::PostgresCluster);
            let mut cmd = command(cfg, &tool, "pg_basebackup", &cfg.endpoint.maintenance_db);
            // The report is parsed: keep it in English.
            cmd.env("LC_ALL", "C").env("LC_MESSAGES", "C");
            cmd.args([
                "--pgdata=-",
                "--format=tar",
                "--wal-method=fetch",
                "--checkpoint=fast",
                "--verbose",
                "--label=kompose-dr",
            ]);
            let (stored, report) = ctx.store_child_logged(&key, "pg_basebackup", cmd).await;
            // pg_basebackup's own stderr says why, not our message.
            let stored = stored.map_err(|e| match e {
                SourceError::Tool(m) if report.contains("single tablespace") => SourceError::Tool(format!(
                    "{m}: a base backup streams one tar, which needs every table in the default tablespace"
                )),
                e => e,
            })?;
            run.captured_at = Some(Utc::now());
            let Some((start, timeline, end)) = parse_report(&report) else {
                for repo in &ctx.repositories {
                    let _ = repo.backend().delete(&stored.key).await;
                }
                return Err(SourceError::Tool(format!(
                    "pg_basebackup did not report its WAL start and end points: {}",
                    report.trim()
                )));
            };
            run.wal = Some(BasePosition {
                system_identifier: id.system_identifier,
                timeline,
                start_lsn: start,
                end_lsn: end,
                segment_size: id.segment_size,
            });
            Ok::<_, SourceError>(stored)
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(ctx.redactor.scrub(&e.to_string())));
        run
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_gives_start_timeline_and_end() {
        let report = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
            pg_basebackup: checkpoint completed\n\
            pg_basebackup: write-ahead log start point: 0/2000028 on timeline 3\n\
            pg_basebackup: write-ahead log end point: 0/2000100\n\
            pg_basebackup: base backup completed\n";
        let (s, tl, e) = parse_report(report).unwrap();
        assert_eq!(s.to_string(), "0/2000028");
        assert_eq!(tl, 3);
        assert_eq!(e.to_string(), "0/2000100");
        assert!(parse_report("pg_basebackup: base backup completed").is_none());
    }
}
