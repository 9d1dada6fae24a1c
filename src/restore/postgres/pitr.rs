//! Point-in-time recovery from a base backup and the archived WAL
//! (docs/DESIGN.md §11).
//!
//! **One database to any second.** `restore --point-in-time T --source
//! postgres/<db>`, when a base backup and the WAL after it cover T: the
//! base backup is unpacked into a private scratch directory, the WAL files
//! recovery needs are fetched, checked and decrypted beside it, and a
//! scratch PostgreSQL replays them to T (`recovery_target_time`, inclusive,
//! then promoted). That one database is dumped from it and restored through
//! the usual plan and swap: the other databases of the server are not
//! touched, and `--replace` keeps the replaced database, renamed, until the
//! operator drops it.
//!
//! **A whole cluster.** `--source postgres/cluster --to DIR` recovers the
//! data directory itself into DIR, shuts it down cleanly and leaves it for
//! the operator to swap in (docs/RUNBOOK.md). With `--replace` instead, it
//! goes into the server's container in place of its data directory, the
//! old one kept aside in the volume ([`super::cluster_swap`]).
//!
//! **Where the recovering server runs.** `[scratch] runtime`: local server
//! binaries (`process`), or a scratch container of the production image
//! (`docker`: the host needs no PostgreSQL, and the recovered database is
//! dumped inside that container). Both fill the same private directory.
//!
//! **The window.** A T after the newest archived WAL, or a gap in the WAL
//! between the base backup and T, is refused, naming the covered window or
//! the missing segment — never a silent recovery to the end of the log. A T
//! before the first base backup takes the newest dump at or before it, and
//! the plan says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{quote_ident, server_version_of};
use crate::model::manifest::{Artifact, ArtifactKind, Manifest};
use crate::model::selection::source_database;
use crate::model::wal::{BasePosition, CoverageError, WalArchive, WalRecord};
use crate::repository::Repository;
use crate::restore::plan::{Choice, Recovery, Selector};
use crate::restore::stream::{self, VerifyingReader};
use crate::restore::{RestoreContext, RestoreError, Target};
use crate::scratch::process::{RecoveryDir, RecoveryRequest, RecoveryTarget};
use crate::scratch::{Recovered, RecoveryRuntime, ScratchError};

/// How long a recovery may replay WAL before it is given up.
const RECOVERY_LIMIT: Duration = Duration::from_secs(6 * 3600);

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One cluster's base backups (oldest first) and archived WAL.
struct Coverage {
    bases: Vec<(String, Artifact, BasePosition)>,
    archive: WalArchive,
}

impl Coverage {
    /// The window `[first base backup, newest covered commit]`.
    fn window(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let from = self
            .bases
            .iter()
            .filter_map(|(_, a, _)| a.captured_at)
            .min();
        (from, self.archive.covered_until())
    }

    fn describe(&self) -> String {
        match self.window() {
            (Some(f), Some(u)) => format!("{} … {}", rfc(f), rfc(u)),
            (Some(f), None) => format!("from {} (no WAL is archived after it)", rfc(f)),
            _ => "nothing".into(),
        }
    }
}

/// Reads the base backups of `snapshots` and the WAL of their clusters.
async fn coverage(
    repo: &Repository,
    snapshots: &[Manifest],
) -> Result<BTreeMap<String, Coverage>, RestoreError> {
    let mut out: BTreeMap<String, Coverage> = BTreeMap::new();
    for m in snapshots {
        for a in &m.artifacts {
            if a.kind == ArtifactKind::PostgresCluster
                && a.is_ok()
                && let Some(w) = &a.wal
            {
                out.entry(w.system_identifier.clone())
                    .or_insert_with(|| Coverage {
                        bases: Vec::new(),
                        archive: WalArchive::default(),
                    })
                    .bases
                    .push((m.id.clone(), a.clone(), w.clone()));
            }
        }
    }
    for (id, c) in out.iter_mut() {
        c.bases.sort_by_key(|(_, a, _)| a.captured_at);
        let (records, damaged) = repo
            .wal_records(id)
            .await
            .map_err(|e| RestoreError::Failed(format!("cannot list the archived WAL: {e}")))?;
        for d in damaged {
            tracing::warn!(record = %d.key, "refused: {}", d.message);
        }
        c.archive = WalArchive::from_records(records);
    }
    Ok(out)
}

/// Where a recovery goes.
#[derive(Debug, Clone, Copy)]
enum Goal<'a> {
    /// The state at this time: the newest base backup at or before it,
    /// carried forward by the WAL.
    At(DateTime<Utc>),
    /// The base backup of this snapshot, to its own consistent end.
    BaseEnd(&'a str),
    /// The newest base backup and every archived WAL file after it.
    Newest,
}

/// The recovery that brings `cov`'s cluster to `goal`, or why none can.
fn recovery_for(cov: &Coverage, goal: Goal<'_>) -> Result<Recovery, RestoreError> {
    let base = match goal {
        Goal::BaseEnd(id) => cov.bases.iter().find(|(s, _, _)| s == id),
        Goal::At(t) => cov
            .bases
            .iter()
            .rev()
            .find(|(_, a, _)| a.captured_at.is_some_and(|c| c <= t)),
        Goal::Newest => cov.bases.last(),
    };
    let Some((snapshot, artifact, position)) = base else {
        let at = match goal {
            Goal::At(t) => rfc(t),
            Goal::BaseEnd(id) => format!("snapshot {id}"),
            Goal::Newest => "now".into(),
        };
        return Err(RestoreError::Refused(format!(
            "no base backup is at or before {at}: base backups and archived WAL cover {}",
            cov.describe()
        )));
    };
    let (chain, covered) = match goal {
        Goal::BaseEnd(_) => (Vec::new(), None),
        Goal::At(t) => cov
            .archive
            .chain(position, Some(t))
            .map_err(|e| not_covered(cov, snapshot, &rfc(t), e))?,
        Goal::Newest => cov
            .archive
            .chain(position, None)
            .map_err(|e| not_covered(cov, snapshot, "the archive's end", e))?,
    };
    let mut files: Vec<WalRecord> = chain.into_iter().cloned().collect();
    files.extend(cov.archive.histories.values().cloned());
    Ok(Recovery {
        base_snapshot: snapshot.clone(),
        base_captured_at: artifact.captured_at,
        target: match goal {
            Goal::At(t) => Some(t),
            _ => None,
        },
        newest: matches!(goal, Goal::Newest),
        first_wal: files.first().map(|r| r.name.clone()),
        last_wal: files
            .iter()
            .rev()
            .find(|r| r.segment().is_some())
            .map(|r| r.name.clone()),
        wal_files: files.len(),
        covered_until: covered.or(cov.archive.covered_until()),
        base: artifact.clone(),
        position: position.clone(),
        records: files,
    })
}

/// Why the archive cannot carry base backup `snapshot` forward to `to`.
fn not_covered(cov: &Coverage, snapshot: &str, to: &str, e: CoverageError) -> RestoreError {
    RestoreError::Refused(match e {
        CoverageError::EndsBefore(_) => format!(
            "{to} is after the newest archived WAL: base backups and archived WAL cover {} \
             (is the WAL archiver running? `kompose-dr check` says how far it got); pick a time inside it, \
             or leave out --point-in-time for the newest state",
            cov.describe()
        ),
        CoverageError::Missing(seg) => format!(
            "WAL segment {seg} is missing from the archive, so base backup {snapshot} cannot be carried \
             forward to {to}: `kompose-dr check` lists the gaps; restore a nightly dump with --snapshot \
             instead, or a time before the gap"
        ),
    })
}

/// The cluster this server is: the one of the newest base backup.
fn newest_cluster(cov: &BTreeMap<String, Coverage>) -> Option<&Coverage> {
    cov.values()
        .filter_map(|c| c.bases.last().map(|b| (b.1.captured_at, c)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, c)| c)
}

/// Rewrites database choice `c` to come from recovery `r`: the base
/// backup, carried forward, then dumped.
fn take_recovery(c: &mut Choice, r: Recovery, asked_at: Option<DateTime<Utc>>) {
    let mut a = r.base.clone();
    a.source = c.source.clone();
    a.kind = ArtifactKind::PostgresDump;
    a.captured_at = r.target.or(r.covered_until).or(r.base_captured_at);
    c.distance_seconds = match (r.target, asked_at, a.captured_at) {
        (Some(_), _, _) => Some(0),
        (None, Some(at), Some(state)) => Some((at - state).num_seconds()),
        _ => None,
    };
    c.snapshot = r.base_snapshot.clone();
    c.artifact = a;
    c.skipped_failed.clear();
    c.facts = None;
    c.recovery = Some(Box::new(r));
}

/// A database dump choice for the newest state: the base backup and every
/// archived WAL file when that is newer than the dump, the dump otherwise
/// (said in the plan, with the reason).
fn newest_state(c: &mut Choice, cov: &Coverage, at: DateTime<Utc>) {
    let dumped = c.artifact.captured_at;
    match recovery_for(cov, Goal::Newest) {
        Ok(r)
            if r.covered_until
                .is_some_and(|u| dumped.is_none_or(|d| u > d)) =>
        {
            let behind = r.covered_until.map(|u| (at - u).num_seconds()).unwrap_or(0);
            c.path_note = Some(format!(
                "the newest state: base backup and all archived WAL, to {} ({} behind now)",
                r.covered_until.map(rfc).unwrap_or_default(),
                ago(behind)
            ));
            take_recovery(c, r, Some(at));
        }
        Ok(_) => {
            c.path_note = Some(format!(
                "the newest dump ({}): newer than what the archived WAL holds",
                dumped.map(rfc).unwrap_or_default()
            ));
        }
        Err(e) => {
            tracing::warn!(source = %c.source, "the newest state comes from the dump: {e}");
            c.path_note = Some(format!(
                "the newest dump ({}), because the archived WAL cannot carry a base backup forward: {e}",
                dumped.map(rfc).unwrap_or_default()
            ));
        }
    }
}

/// `seconds` as a short duration (`42s`, `3m 5s`, `2h 10m`).
pub fn ago(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// A database dump choice for time `t`: the base backup carried forward
/// when base backups cover `t`; the dump, said so, when `t` is before them.
fn at_time(c: &mut Choice, cov: &Coverage, t: DateTime<Utc>) -> Result<(), RestoreError> {
    let (from, _) = cov.window();
    if from.is_some_and(|f| t < f) {
        c.path_note = Some(format!(
            "dump: {} is before the first base backup ({})",
            rfc(t),
            from.map(rfc).unwrap_or_default()
        ));
    } else {
        take_recovery(c, recovery_for(cov, Goal::At(t))?, None);
    }
    Ok(())
}

/// Gives the PostgreSQL choices of a plan their path: base backup + WAL
/// where those cover the time (the choice is rewritten to it), the dump
/// otherwise; a time the WAL should cover but does not is an error naming
/// the window. For the newest state, the base backup and all archived WAL
/// when that is newer than the dump. `postgres/cluster` always recovers
/// (to its own end with `--snapshot`).
pub async fn attach(
    repo: &Repository,
    snapshots: &[Manifest],
    selector: &Selector,
    choices: Vec<Choice>,
) -> Result<Vec<Choice>, RestoreError> {
    let by_time = matches!(selector, Selector::PointInTime(_) | Selector::Newest { .. });
    let wants = choices.iter().any(|c| {
        c.artifact.kind == ArtifactKind::PostgresCluster
            || (by_time && c.artifact.kind == ArtifactKind::PostgresDump)
    });
    if !wants {
        return Ok(choices);
    }
    let cov = coverage(repo, snapshots).await?;
    let newest = newest_cluster(&cov);
    let mut out = Vec::with_capacity(choices.len());
    for mut c in choices {
        match (c.artifact.kind, selector, newest) {
            (ArtifactKind::PostgresCluster, sel, Some(cov)) => {
                let goal = match sel {
                    Selector::PointInTime(t) => Goal::At(*t),
                    Selector::Newest { .. } => Goal::Newest,
                    _ => Goal::BaseEnd(c.snapshot.as_str()),
                };
                c.recovery = Some(Box::new(recovery_for(cov, goal)?));
            }
            (ArtifactKind::PostgresCluster, _, None) => {
                return Err(RestoreError::Refused(
                    "no base backup records its WAL position: take one with `kompose-dr backup --source postgres/cluster`".into(),
                ));
            }
            (ArtifactKind::PostgresDump, Selector::PointInTime(t), Some(cov)) => {
                at_time(&mut c, cov, *t)?;
            }
            (ArtifactKind::PostgresDump, Selector::Newest { at }, Some(cov)) => {
                newest_state(&mut c, cov, *at);
            }
            _ => {}
        }
        out.push(c);
    }
    Ok(out)
}

/// Choices for databases that no dump holds (`--source postgres/NAME`
/// matching no archive): recovered from the base backup the selector
/// picks, and dumped from it — any database the cluster held then. The
/// recovered cluster says whether NAME existed.
pub async fn attach_unlisted(
    repo: &Repository,
    snapshots: &[Manifest],
    selector: &Selector,
    sources: &[String],
) -> Result<Vec<Choice>, RestoreError> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let cov = coverage(repo, snapshots).await?;
    let Some(cov) = newest_cluster(&cov) else {
        return Err(RestoreError::Refused(format!(
            "{} is in no dump, and no base backup with its WAL position can bring it back: \
             `kompose-dr snapshots` lists what the repository holds",
            sources.join(", ")
        )));
    };
    let latest = snapshots.first().map(|m| m.id.as_str()).unwrap_or_default();
    let (goal, at) = match selector {
        Selector::PointInTime(t) => (Goal::At(*t), None),
        Selector::Newest { at } => (Goal::Newest, Some(*at)),
        Selector::Snapshot(id) => (Goal::BaseEnd(id.as_str()), None),
        Selector::Latest => (Goal::BaseEnd(latest), None),
    };
    let r = recovery_for(cov, goal)?;
    Ok(sources
        .iter()
        .map(|source| {
            let mut c = Choice {
                source: source.clone(),
                snapshot: r.base_snapshot.clone(),
                artifact: r.base.clone(),
                distance_seconds: None,
                skipped_failed: Vec::new(),
                facts: None,
                recovery: None,
                path_note: Some(format!(
                    "in no dump: recovered from base backup {} and dumped",
                    r.base_snapshot
                )),
            };
            take_recovery(&mut c, r.clone(), at);
            c
        })
        .collect())
}

/// The cluster target: a new data directory, `--to DIR` (absent or
/// empty), or with `--replace` the data directory of the server's
/// container.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    c: &Choice,
) -> Result<(Target, bool), RestoreError> {
    let dir = match (&ctx.options.to, ctx.options.replace) {
        (Some(dir), _) => dir,
        (None, true) => {
            if c.recovery.is_none() {
                return Err(no_position());
            }
            return super::cluster_swap::preflight(ctx).await;
        }
        (None, false) => {
            return Err(RestoreError::Refused(
                "a whole cluster is recovered into a new data directory (add --to DIR, then swap it in: docs/RUNBOOK.md), \
                 or into the server's container in place of its data (add --replace: the container is stopped, its data \
                 directory kept aside inside its volume, and started again on the recovered one)"
                    .into(),
            ));
        }
    };
    if c.recovery.is_none() {
        return Err(no_position());
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::Refused(format!(
            "{} exists and is not empty: recover into a new directory",
            dir.display()
        )));
    }
    Ok((Target::Cluster { path: dir.clone() }, false))
}

fn no_position() -> RestoreError {
    RestoreError::Refused(
        "this base backup records no WAL position (taken before kompose-dr recorded them)".into(),
    )
}

/// The scratch runtime recoveries run in (`[scratch] runtime`): local
/// server binaries, or a scratch container from the production image.
fn runtime(ctx: &RestoreContext<'_>) -> RecoveryRuntime {
    RecoveryRuntime::new(
        &ctx.targets.scratch,
        ctx.targets
            .postgres
            .as_ref()
            .and_then(|p| p.container.as_ref()),
    )
}

/// Who to connect to the recovered cluster as: the configured user (it
/// took the base backup, so it exists there), or the one the server's
/// container names (`POSTGRES_USER`) when none is configured.
async fn cluster_user(ctx: &RestoreContext<'_>) -> String {
    let Some(p) = ctx.targets.postgres.as_ref() else {
        return "postgres".into();
    };
    if p.container.is_some() && !p.user_configured {
        match crate::clients::postgres::resolve(p).await {
            Ok(r) => return r.endpoint.user,
            Err(e) => tracing::debug!(error = %e, "cannot ask the server's container for its user"),
        }
    }
    p.endpoint.user.clone()
}

/// Reads a stored object against what its record or manifest says, into a
/// private temporary file, and returns a verifying reader of that copy.
async fn fetch_verified(
    repo: &Repository,
    artifact: &Artifact,
) -> Result<VerifyingReader<std::fs::File>, RestoreError> {
    crate::restore::spool_artifact(repo, artifact, &indicatif::ProgressBar::hidden()).await
}

/// Unpacks the base backup into `data` and puts the WAL files recovery
/// needs, checked and decrypted, into `wal`.
async fn fill(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
    data: &Path,
    wal: &Path,
) -> Result<u64, RestoreError> {
    let unpacked = unpack_base(ctx, &recovery.base, data).await?;
    for r in &recovery.records {
        if ctx.cancel.is_cancelled() {
            return Err(RestoreError::Failed(
                "interrupted while fetching WAL".into(),
            ));
        }
        // The record read last names the file (a partial segment may have
        // been completed meanwhile).
        let (r, stored) = fetch_wal(ctx, r).await?;
        let ids = ctx.identities.clone();
        let to = wal.join(&r.name);
        tokio::task::spawn_blocking(move || -> Result<(), RestoreError> {
            let tmp = to.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)
                .map_err(RestoreError::io(format!("cannot create {}", tmp.display())))?;
            stream::copy_archive(stored, &ids, &mut f).map_err(RestoreError::from)?;
            std::fs::rename(&tmp, &to)
                .map_err(RestoreError::io(format!("cannot create {}", to.display())))
        })
        .await
        .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))??;
    }
    Ok(unpacked)
}

/// Unpacks the base backup `base` into `data` as it streams from the
/// repository, checking it on the way; returns its plaintext bytes.
///
/// No spooled copy first: nothing runs what is unpacked before the whole
/// archive checked out (the server starts only after [`fill`] succeeded,
/// and a failed fill's directory is removed), and the unpacking itself
/// treats the archive as untrusted (no name outside `data`, nothing
/// overwritten).
async fn unpack_base(
    ctx: &RestoreContext<'_>,
    base: &Artifact,
    data: &Path,
) -> Result<u64, RestoreError> {
    let stored =
        crate::restore::open_artifact(&ctx.repository, base, &indicatif::ProgressBar::hidden())
            .await?;
    let ids = ctx.identities.clone();
    let data_dir = data.to_owned();
    let label = stream::label(base);
    tokio::task::spawn_blocking(move || -> Result<u64, RestoreError> {
        let (reader, writer) = std::io::pipe().map_err(RestoreError::io("cannot make a pipe"))?;
        let ids2 = ids.clone();
        let producer = std::thread::spawn(move || {
            let mut w = writer;
            stream::copy_archive(stored, &ids2, &mut w)
        });
        // Large reads: tar asks for 512-byte headers and small pieces.
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, reader));
        archive.set_preserve_permissions(true);
        // The owner too, when we may set it: a recovery in a container
        // runs the server as the uid that owns the files in production.
        archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
        archive.set_overwrite(false);
        let unpacked = archive.unpack(&data_dir);
        // What the tar reader left unread (its padding; what a replaced
        // archive holds past its end) is read to the end, so that the
        // producer checks the whole archive against the manifest.
        let mut rest = archive.into_inner();
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
        drop(rest);
        let copied = producer
            .join()
            .map_err(|_| RestoreError::Failed(format!("{label}: the decoder thread failed")))?;
        let bytes = copied.map_err(RestoreError::from)?;
        unpacked.map_err(|e| RestoreError::Failed(format!("{label}: cannot unpack it: {e}")))?;
        Ok(bytes)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?
}

/// Reads WAL record `r`'s copy against its record. A partial segment's
/// copy is replaced while the archiver runs: its record is read again when
/// the copy named is gone. Returns the record read last, and the reader.
async fn fetch_wal(
    ctx: &RestoreContext<'_>,
    r: &WalRecord,
) -> Result<(WalRecord, VerifyingReader<std::fs::File>), RestoreError> {
    let mut r = r.clone();
    let mut tries = 0;
    loop {
        match fetch_verified(&ctx.repository, &Artifact::of_wal(&r)).await {
            Ok(s) => return Ok((r, s)),
            Err(RestoreError::Storage {
                source: crate::storage::StorageError::NotFound(_),
                ..
            }) if r.kind == crate::model::wal::WalKind::Partial && tries < 5 => {
                tries += 1;
                r = match ctx.repository.wal_record_again(&r).await {
                    Ok(again) => again,
                    // Completed meanwhile: the partial record went
                    // with its copy; the complete segment replaces it.
                    Err(crate::repository::wal::RecordAgainError::Gone(_)) => {
                        let mut complete = r.clone();
                        complete.kind = crate::model::wal::WalKind::Segment;
                        ctx.repository
                            .wal_record_again(&complete)
                            .await
                            .map_err(|e| RestoreError::Failed(format!("WAL {}: {e}", r.name)))?
                    }
                    Err(e) => return Err(RestoreError::Failed(format!("WAL {}: {e}", r.name))),
                };
            }
            Err(e) => return Err(e),
        }
    }
}

/// Recovers the choice's cluster into a scratch server (or into `data`).
///
/// PostgreSQL stops a recovery to a time at the first commit after it; when
/// the archive holds no commit after T (the newest moments, a quiet
/// server) it refuses, having reached the end of the log first. The plan
/// has already proven that the archive holds every commit made before T,
/// so the end of that log *is* the state at T: the recovery is then run
/// again to the end of the log.
pub async fn recover(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
    data: Option<&Path>,
) -> Result<(Recovered, u64), RestoreError> {
    let first = match (recovery.target, recovery.newest) {
        (Some(t), _) => RecoveryTarget::Time(t),
        (None, true) => RecoveryTarget::EndOfWal,
        (None, false) => RecoveryTarget::Immediate,
    };
    match recover_to(ctx, recovery, data, first).await {
        Ok((server, bytes)) if first == RecoveryTarget::EndOfWal => {
            replayed_to_end(&server, recovery).await?;
            Ok((server, bytes))
        }
        Err(RestoreError::Scratch(ScratchError::TargetNotReached(_)))
            if matches!(first, RecoveryTarget::Time(_)) =>
        {
            tracing::info!(
                "the archive holds no commit after the target, and every commit before it: recovering to the end of the archived WAL"
            );
            if let Some(d) = data {
                let _ = std::fs::remove_dir_all(d);
                std::fs::create_dir_all(d)
                    .map_err(RestoreError::io(format!("cannot create {}", d.display())))?;
            }
            let (server, bytes) = recover_to(ctx, recovery, data, RecoveryTarget::EndOfWal).await?;
            replayed_to_end(&server, recovery).await?;
            Ok((server, bytes))
        }
        r => r,
    }
}

/// The end of the log must be the end of what was planned: a replay that
/// stopped earlier (a page PostgreSQL rejected) is not the state at T.
async fn replayed_to_end(server: &Recovered, recovery: &Recovery) -> Result<(), RestoreError> {
    let Some(last) = recovery
        .records
        .iter()
        .rev()
        .find_map(|r| r.segment().map(|s| s.start(r.segment_size)))
    else {
        return Ok(());
    };
    let cfg = server.connection();
    let replayed = async {
        let c = crate::clients::postgres::connect(&cfg, &cfg.endpoint.maintenance_db)
            .await
            .ok()?;
        let row = c
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .ok()?;
        crate::model::wal::Lsn::parse(&row.get::<_, Option<String>>(0)?)
    }
    .await;
    if replayed.is_none_or(|r| r < last) {
        return Err(RestoreError::Failed(format!(
            "the recovery stopped at {} before the last archived WAL file it was given (from {last}):                          the archive does not hold the log up to the target; see `kompose-dr check`",
            replayed
                .map(|r| r.to_string())
                .unwrap_or_else(|| "an unknown position".into())
        )));
    }
    Ok(())
}

async fn recover_to(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
    data: Option<&Path>,
    target: RecoveryTarget,
) -> Result<(Recovered, u64), RestoreError> {
    let rt = runtime(ctx);
    let dir: RecoveryDir = rt.recovery_dir()?;
    let data_dir = data.map(Path::to_owned).unwrap_or_else(|| dir.data.clone());
    let bytes = fill(ctx, recovery, &data_dir, &dir.wal).await?;
    let major = server_version_of(&recovery.base);
    tracing::info!(
        base = %recovery.base_snapshot,
        target = ?recovery.target.map(rfc),
        wal_files = recovery.wal_files,
        "recovering a scratch cluster"
    );
    let user = cluster_user(ctx).await;
    let request = RecoveryRequest {
        major,
        data: Some(&data_dir),
        target,
        user: &user,
        limit: RECOVERY_LIMIT,
    };
    let server = rt.recover(dir, request, &ctx.cancel).await?;
    Ok((server, bytes))
}

/// A database dumped from a recovered cluster, ready for pg_restore.
pub struct RecoveredDump {
    /// The dump (pg_dump custom format), in a private temporary file.
    pub file: std::fs::File,
    /// The database object as it was at the target time.
    pub object: crate::model::facts::DatabaseFacts,
    /// Its size.
    pub bytes: u64,
}

/// The recovered cluster the databases of one restore share: several
/// databases to the same point take one recovery, each then dumped from
/// it. Held until the restore ends (its [`RestoreContext`] drops).
#[derive(Default)]
pub struct Recoveries {
    current: tokio::sync::Mutex<Option<(RecoveryKey, Recovered)>>,
    made: std::sync::atomic::AtomicUsize,
}

/// What makes two recoveries the same: the base backup, the target, and
/// whether it goes to the archive's end.
type RecoveryKey = (String, Option<DateTime<Utc>>, bool);

fn key_of(r: &Recovery) -> RecoveryKey {
    (r.base_snapshot.clone(), r.target, r.newest)
}

impl Recoveries {
    /// How many recoveries were run.
    pub fn made(&self) -> usize {
        self.made.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Recovers the cluster to the choice's time (or takes the cluster already
/// recovered to it for another database of this restore) and dumps the
/// database the choice names from it.
pub async fn recovered_dump(
    ctx: &RestoreContext<'_>,
    source: &str,
    recovery: &Recovery,
) -> Result<RecoveredDump, RestoreError> {
    let db = source_database(source)
        .ok_or_else(|| RestoreError::Refused(format!("{source} is not a database")))?;
    let mut slot = ctx.recoveries.current.lock().await;
    let key = key_of(recovery);
    if slot.as_ref().is_none_or(|(k, _)| *k != key) {
        // The previous one goes first: one scratch cluster at a time.
        *slot = None;
        ctx.recoveries
            .made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            base = %recovery.base_snapshot,
            target = ?recovery.target.map(rfc),
            newest = recovery.newest,
            "recovering the cluster once for every database restored to this point"
        );
        let (server, _) = recover(ctx, recovery, None).await?;
        *slot = Some((key, server));
    }
    let Some((_, server)) = slot.as_ref() else {
        unreachable!("set above")
    };
    let cfg = server.connection();
    let object = recovered_object(&cfg, db, recovery).await?;
    let tool = crate::clients::postgres::choose_client(
        &cfg,
        "pg_dump",
        server.major(),
        &format!("the recovered PostgreSQL {}", server.major()),
    )
    .await
    .map_err(RestoreError::from_source)?;
    let (file, bytes) = dump_to_file(&cfg, &tool, db).await?;
    Ok(RecoveredDump {
        file,
        object,
        bytes,
    })
}

/// Database `db`'s object as the recovered cluster `cfg` holds it; refused,
/// naming the databases there were, when it did not exist at the target.
async fn recovered_object(
    cfg: &crate::model::config::PostgresConfig,
    db: &str,
    recovery: &Recovery,
) -> Result<crate::model::facts::DatabaseFacts, RestoreError> {
    let client = crate::clients::postgres::connect(cfg, &cfg.endpoint.maintenance_db)
        .await
        .map_err(RestoreError::from_source)?;
    // A database being dropped (datconnlimit -2, PostgreSQL 15.4+) is
    // not there any more: DROP DATABASE removes its files before its
    // commit, the record a time target stops at.
    let rows = client
        .query(
            "SELECT datname, datconnlimit = -2 FROM pg_database \
             WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(RestoreError::db("cannot list the recovered databases"))?;
    let there: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let when = match (recovery.target, recovery.newest) {
        (Some(t), _) => rfc(t),
        (None, true) => "the end of the archived WAL".into(),
        (None, false) => format!("the end of base backup {}", recovery.base_snapshot),
    };
    if rows
        .iter()
        .any(|r| r.get::<_, &str>(0) == db && r.get::<_, bool>(1))
    {
        return Err(RestoreError::Refused(format!(
            "database {} was being dropped at {when}: the server committed nothing between that time and the \
             DROP DATABASE, and a recovery to a time stops only at a commit; pick a time before the last commit \
             that preceded the drop",
            quote_ident(db)
        )));
    }
    if !there.iter().any(|d| d == db) {
        return Err(RestoreError::Refused(format!(
            "database {} did not exist at {when} (recovered from base backup {}); the databases then were: {}",
            quote_ident(db),
            recovery.base_snapshot,
            there.join(", ")
        )));
    }
    drop(client);
    let dbc = crate::clients::postgres::connect(cfg, db)
        .await
        .map_err(RestoreError::from_source)?;
    crate::clients::postgres::database::read(&dbc, db)
        .await
        .map_err(RestoreError::from_source)
}

/// Dumps `db` of the recovered cluster `cfg` with `tool` (here, or inside
/// the recovery's container) into a private temporary file; returns it,
/// rewound, and its size.
async fn dump_to_file(
    cfg: &crate::model::config::PostgresConfig,
    tool: &crate::clients::postgres::DumpTool,
    db: &str,
) -> Result<(std::fs::File, u64), RestoreError> {
    use std::io::Seek;
    use tokio::io::AsyncWriteExt;
    let mut file = tempfile::tempfile().map_err(RestoreError::io(
        "cannot create a private temporary file ($TMPDIR)",
    ))?;
    let mut launch = crate::clients::postgres::command(cfg, tool, "pg_dump", db);
    launch.args(["--format=custom", "--compress=0"]);
    let mut run = launch
        .start("pg_dump", false)
        .await
        .map_err(RestoreError::from_source)?
        .killed_on_drop();
    let stderr = crate::process::stderr_tail(
        run.stderr.take(),
        "pg_dump",
        crate::model::secret::Redactor::new(cfg.password.clone()),
    );
    let mut stdout = run
        .stdout
        .take()
        .ok_or_else(|| RestoreError::Failed("pg_dump has no output stream".into()))?;
    let mut out = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(
            file.try_clone()
                .map_err(RestoreError::io("cannot share the temporary file"))?,
        ),
    );
    let copied = tokio::io::copy(&mut stdout, &mut out).await;
    let flushed = out.flush().await;
    let ended = run
        .wait_within(Duration::from_secs(60), "pg_dump")
        .await
        .map_err(RestoreError::io("cannot run pg_dump"))?;
    let said = stderr.await.unwrap_or_default();
    if !ended.success() {
        return Err(RestoreError::Failed(format!(
            "pg_dump of {db} from the recovered cluster failed ({ended}): {}",
            said.trim()
        )));
    }
    copied.map_err(RestoreError::io("cannot write the dump to $TMPDIR"))?;
    flushed.map_err(RestoreError::io("cannot write the dump to $TMPDIR"))?;
    let bytes = file
        .seek(std::io::SeekFrom::End(0))
        .map_err(RestoreError::io("cannot read the dump"))?;
    file.rewind()
        .map_err(RestoreError::io("cannot read the dump"))?;
    Ok((file, bytes))
}

/// Recovers the whole cluster into `path`, shut down cleanly.
pub async fn restore_cluster(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
    path: &PathBuf,
) -> Result<(u64, String), RestoreError> {
    std::fs::create_dir_all(path).map_err(RestoreError::io(format!(
        "cannot create {}",
        path.display()
    )))?;
    let (server, bytes) = match recover(ctx, recovery, Some(path)).await {
        Ok(x) => x,
        Err(e) => {
            // Not a usable data directory: leave nothing that looks like one.
            let _ = std::fs::remove_dir_all(path);
            return Err(e);
        }
    };
    server
        .shut_down(Duration::from_secs(600))
        .await
        .map_err(RestoreError::from)?;
    Ok((
        bytes,
        format!(
            "data directory {} recovered to {} from base backup {} and {} WAL file(s), shut down cleanly; \
             swap it in as docs/RUNBOOK.md says",
            path.display(),
            recovery
                .target
                .map(rfc)
                .unwrap_or_else(|| "the base backup's end".into()),
            recovery.base_snapshot,
            recovery.wal_files
        ),
    ))
}

/// Recovers the choice's cluster in scratch (to its target, or the base
/// backup's end) and lists its databases: what `verify` and drills check
/// of a base backup. Returns the databases found.
pub async fn check_recovery(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
) -> Result<Vec<String>, RestoreError> {
    let (server, _) = recover(ctx, recovery, None).await?;
    let cfg = server.connection();
    let client = crate::clients::postgres::connect(&cfg, &cfg.endpoint.maintenance_db)
        .await
        .map_err(RestoreError::from_source)?;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(RestoreError::db("cannot list the recovered databases"))?;
    drop(client);
    server
        .shut_down(Duration::from_secs(120))
        .await
        .map_err(RestoreError::from)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::fixtures::{artifact, t};
    use crate::model::wal::{Lsn, Segment, WalKind};

    const MB16: u64 = 16 << 20;

    fn rec(n: u64, kind: WalKind, covered: &str) -> WalRecord {
        let name = Segment {
            timeline: 1,
            number: n,
        }
        .name(MB16);
        WalRecord {
            version: 1,
            system_identifier: "1".into(),
            path: format!("wal/1/00000001/{name}.zst.age"),
            name,
            timeline: 1,
            kind,
            segment_size: MB16,
            plaintext_bytes: MB16,
            stored_bytes: 1,
            sha256: "0".repeat(64),
            archived_at: t(covered),
            covered_until: Some(t(covered)),
            end_lsn: None,
        }
    }

    /// A base backup at 03:00 (segments 2–3) and WAL through segment
    /// `last`, the last one covering until `until`.
    fn coverage(last: u64, until: &str) -> Coverage {
        let position = BasePosition {
            system_identifier: "1".into(),
            timeline: 1,
            start_lsn: Lsn(2 * MB16 + 40),
            end_lsn: Lsn(3 * MB16 + 100),
            segment_size: MB16,
        };
        let base = artifact("postgres/cluster", "2026-11-27T03:00:00Z", true);
        let mut records: Vec<WalRecord> = (2..last)
            .map(|n| rec(n, WalKind::Segment, "2026-11-27T03:30:00Z"))
            .collect();
        records.push(rec(last, WalKind::Partial, until));
        Coverage {
            bases: vec![("s27".into(), base, position)],
            archive: WalArchive::from_records(records),
        }
    }

    fn dump(at: &str) -> Choice {
        Choice {
            source: "postgres/app".into(),
            snapshot: "s-dump".into(),
            artifact: artifact("postgres/app", at, true),
            distance_seconds: None,
            skipped_failed: Vec::new(),
            facts: None,
            recovery: None,
            path_note: None,
        }
    }

    #[test]
    fn the_newest_state_replays_every_archived_wal_file_past_the_dump() {
        let cov = coverage(6, "2026-11-27T11:59:30Z");
        let mut c = dump("2026-11-27T02:00:00Z");
        newest_state(&mut c, &cov, t("2026-11-27T12:00:00Z"));
        let r = c.recovery.as_ref().expect("a recovery");
        assert!(r.newest && r.target.is_none());
        assert_eq!(r.last_wal.as_deref(), Some("000000010000000000000006"));
        assert_eq!(c.distance_seconds, Some(30));
        assert!(
            c.path_note.as_deref().unwrap().contains("30s behind now"),
            "{:?}",
            c.path_note
        );
    }

    #[test]
    fn a_dump_newer_than_the_archive_or_a_broken_chain_keeps_the_dump_and_says_why() {
        let cov = coverage(6, "2026-11-27T11:59:30Z");
        let mut newer = dump("2026-11-27T12:00:00Z");
        newest_state(&mut newer, &cov, t("2026-11-27T12:00:10Z"));
        assert!(newer.recovery.is_none());
        assert!(
            newer
                .path_note
                .unwrap()
                .contains("newer than what the archived WAL holds")
        );

        let mut gap = coverage(6, "2026-11-27T11:59:30Z");
        gap.archive = WalArchive::from_records(
            [2, 3, 5, 6].map(|n| rec(n, WalKind::Segment, "2026-11-27T11:59:30Z")),
        );
        let mut c = dump("2026-11-27T02:00:00Z");
        newest_state(&mut c, &gap, t("2026-11-27T12:00:00Z"));
        assert!(c.recovery.is_none());
        let note = c.path_note.unwrap();
        assert!(note.contains("000000010000000000000004"), "{note}");
    }

    #[test]
    fn a_time_after_the_archive_is_refused_naming_the_window_and_the_newest_state() {
        let cov = coverage(6, "2026-11-27T11:59:30Z");
        let e = recovery_for(&cov, Goal::At(t("2026-11-27T12:30:00Z"))).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("after the newest archived WAL"), "{m}");
        assert!(m.contains("2026-11-27T11:59:30Z"), "{m}");
        assert!(m.contains("leave out --point-in-time"), "{m}");
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(ago(42), "42s");
        assert_eq!(ago(185), "3m 5s");
        assert_eq!(ago(7800), "2h 10m");
        assert_eq!(ago(-3), "0s");
    }
}
