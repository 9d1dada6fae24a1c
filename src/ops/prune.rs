//! `prune`: apply retention, per policy and per source, and remove what no
//! manifest names.
//!
//! Each snapshot is judged under the retention of the policy that made it
//! (the top-level `[retention]` for snapshots made without one; no
//! retention at all keeps everything). The newest good artifact of every
//! source is always kept. A snapshot's manifest is removed before its data,
//! so a crash in between leaves unreferenced data (removed next time), never
//! a manifest naming missing data. Data that no manifest names and that is
//! older than the grace period (so not a backup being written right now —
//! the writer lock also excludes that) is removed too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Failure;
use crate::model::config::{Config, RepositoryConfig};
use crate::model::manifest::Manifest;
use crate::model::policy::Policy;
use crate::model::retention::{Retention, decide};
use crate::repository::Repository;
use crate::storage::keys::manifest_key;

/// What to do.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Only say what would go.
    pub dry_run: bool,
    /// Only snapshots of this policy.
    pub policy: Option<String>,
    /// Unreferenced data younger than this stays.
    pub grace: Duration,
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Id of the snapshot judged, as in `snapshots/<ID>.json`.
    pub snapshot: String,
    /// The policy that made the snapshot, whose retention judged it; `None` for
    /// a snapshot made without one, judged by the top-level `[retention]`.
    pub policy: Option<String>,
    /// Kept or removed.
    pub keep: bool,
    /// The rules that kept it, or why it goes.
    pub reasons: Vec<String>,
}

/// The result of `prune`.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Name of the repository pruned; `prune` makes one report per repository.
    pub repository: String,
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// Every snapshot considered, newest first.
    pub snapshots: Vec<Decision>,
    /// Unreferenced objects removed (or that would be).
    pub unreferenced: Vec<String>,
    /// Unfinished writes older than the grace period — `.tmp` files of a
    /// killed run, open S3 multipart uploads — removed (or that would be).
    pub abandoned: Vec<String>,
    /// Archived WAL files no retained base backup needs (older than the
    /// oldest one's start), and WAL objects no record names, removed (or
    /// that would be).
    pub wal: Vec<String>,
}

fn retention_for<'a>(
    config: &'a Config,
    policies: &'a [Policy],
    name: Option<&str>,
) -> Option<&'a Retention> {
    match name {
        Some(n) => policies.iter().find(|p| p.name == n).map(|p| &p.retention),
        None => Some(&config.retention),
    }
}

/// Decides which snapshots stay (pure: no I/O).
pub fn plan(
    config: &Config,
    policies: &[Policy],
    snapshots: &[Manifest],
    only: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut by_policy: BTreeMap<Option<String>, Vec<Manifest>> = BTreeMap::new();
    for m in snapshots {
        by_policy
            .entry(m.policy.clone())
            .or_default()
            .push(m.clone());
    }
    let mut decisions = Vec::new();
    for (policy, group) in by_policy {
        if only.is_some_and(|o| policy.as_deref() != Some(o)) {
            continue;
        }
        let retention = retention_for(config, policies, policy.as_deref());
        let tz = policy
            .as_deref()
            .and_then(|n| policies.iter().find(|p| p.name == n))
            .and_then(|p| p.timezone)
            .or(config.timezone);
        let kept = match (retention, tz) {
            (Some(r), _) if r.is_empty() => None,
            (Some(r), Some(tz)) => Some(decide(&group, r, now, &tz)),
            (Some(r), None) => Some(decide(&group, r, now, &chrono::Local)),
            (None, _) => None,
        };
        for m in &group {
            let (keep, reasons) = match &kept {
                None => (
                    true,
                    vec![match (policy.as_deref(), retention) {
                        (Some(p), None) => format!("policy `{p}` is not configured any more: kept"),
                        (None, _) => {
                            "no [retention] for snapshots made without a policy: kept".to_owned()
                        }
                        (Some(p), Some(_)) => format!("policy `{p}` has no retention rules: kept"),
                    }],
                ),
                Some(k) => match k.get(&m.id) {
                    Some(r) => (true, r.iter().cloned().collect()),
                    None => (false, vec!["matched no retention rule".to_owned()]),
                },
            };
            decisions.push(Decision {
                snapshot: m.id.clone(),
                policy: policy.clone(),
                keep,
                reasons,
            });
        }
    }
    decisions.sort_by(|a, b| b.snapshot.cmp(&a.snapshot));
    decisions
}

/// Prunes one configured repository as `prune` and the agent both do: it
/// must answer, its writer lock is taken (waiting up to `lock_wait`; none
/// for a dry run) and held until the end, then [`run`] applies retention.
/// A real run pings `[healthchecks] prune_url` at its start and end.
pub async fn prune_repository(
    config: &Config,
    policies: &[Policy],
    rc: &RepositoryConfig,
    opts: &PruneOptions,
    lock_wait: Duration,
) -> Result<PruneReport, Failure> {
    use crate::events::notify::{Job, Ping, ping};
    if opts.dry_run {
        return prune_locked(config, policies, rc, opts, lock_wait).await;
    }
    let what = format!("prune of repository {}", rc.name);
    ping(config, Job::Prune, Ping::Start, &format!("{what} started")).await;
    let result = prune_locked(config, policies, rc, opts, lock_wait).await;
    match &result {
        Ok(_) => ping(config, Job::Prune, Ping::Success, &format!("{what} done")).await,
        Err(e) => {
            let message = config.redactor().scrub(&format!("{what}: {e}"));
            ping(config, Job::Prune, Ping::Failure, &message).await
        }
    };
    result
}

async fn prune_locked(
    config: &Config,
    policies: &[Policy],
    rc: &RepositoryConfig,
    opts: &PruneOptions,
    lock_wait: Duration,
) -> Result<PruneReport, Failure> {
    let repo = Repository::open(rc);
    repo.marker().await?;
    let lock = if opts.dry_run {
        None
    } else {
        repo.lock("prune", lock_wait).await?
    };
    run(config, policies, &repo, lock.as_ref(), opts, Utc::now())
        .await
        .map_err(|e| Failure::from(e).context(format_args!("repository {}", repo.name())))
}

/// Why prune stopped. Whatever it removed before stopping was removed
/// manifest first, so no manifest ever names missing data.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The lease could not be renewed: another writer may hold the lock.
    #[error(
        "lost the repository lock (its lease could not be renewed): stopped before removing anything more; run prune again"
    )]
    LockLost,
    /// Manifests that cannot be read would make their data look unreferenced.
    #[error(
        "{} manifest(s) cannot be read ({}): fix or move them before pruning, so that nothing they name is taken for unreferenced data",
        .0.len(),
        .0.join(", ")
    )]
    DamagedManifests(Vec<String>),
    /// Listing the snapshots failed.
    #[error(transparent)]
    Repository(#[from] crate::repository::RepositoryError),
    /// Listing or removing objects failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl crate::error::Classify for PruneError {
    fn class(&self) -> crate::error::Class {
        match self {
            PruneError::Repository(e) => e.class(),
            _ => crate::error::Class::Failure,
        }
    }
}

/// Prunes one repository. The caller holds its writer `lock` (none for a
/// dry run); if the lock is lost midway, pruning stops before the next
/// removal.
pub async fn run(
    config: &Config,
    policies: &[Policy],
    repo: &Repository,
    lock: Option<&crate::repository::lock::RepoLock>,
    opts: &PruneOptions,
    now: DateTime<Utc>,
) -> Result<PruneReport, PruneError> {
    let still_held = || {
        if lock.is_some_and(|l| l.is_lost()) {
            Err(PruneError::LockLost)
        } else {
            Ok(())
        }
    };
    let listing = repo.listing().await?;
    if !listing.damaged.is_empty() {
        return Err(PruneError::DamagedManifests(
            listing.damaged.into_iter().map(|d| d.key).collect(),
        ));
    }
    // Retention decides among this stack's snapshots only; another stack's
    // keep their data (and WAL) whatever this one's policy says.
    let snapshots = listing.ours;
    let all: Vec<_> = snapshots.iter().chain(&listing.others).cloned().collect();
    let decisions = plan(config, policies, &snapshots, opts.policy.as_deref(), now);
    if !opts.dry_run {
        remove_snapshots(repo, &decisions, &still_held).await?;
    }
    // Older than this is past the grace period; a grace longer than the
    // calendar means "nothing is old enough".
    let before = chrono::Duration::from_std(opts.grace)
        .ok()
        .and_then(|g| now.checked_sub_signed(g))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let unreferenced =
        remove_unreferenced(repo, &all, &decisions, opts, before, &still_held).await?;
    if !opts.dry_run {
        still_held()?;
    }
    let wal = prune_wal(repo, &all, &decisions, opts, before, &still_held).await?;
    let abandoned = repo
        .backend()
        .abandoned_writes(before, !opts.dry_run)
        .await?;
    for a in &abandoned {
        tracing::info!(repository = repo.name(), write = %a, dry_run = opts.dry_run, "abandoned write removed");
    }
    Ok(PruneReport {
        repository: repo.name().to_owned(),
        dry_run: opts.dry_run,
        snapshots: decisions,
        unreferenced,
        abandoned,
        wal,
    })
}

/// WAL retention: a segment stays as long as a retained base backup of
/// its cluster may need it — from the oldest retained base backup's start
/// on. A cluster with no retained base backup keeps all its WAL (nothing
/// says what it is for). History files always stay (they are tiny, and a
/// later timeline needs them). Objects under `wal/` that no record names
/// (a shipment killed before its record, a superseded partial copy) go
/// once older than the grace period.
async fn prune_wal(
    repo: &Repository,
    snapshots: &[Manifest],
    decisions: &[Decision],
    opts: &PruneOptions,
    before: DateTime<Utc>,
    still_held: &(dyn Fn() -> Result<(), PruneError> + Sync),
) -> Result<Vec<String>, PruneError> {
    let removed: BTreeSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.snapshot.as_str())
        .collect();
    let mut out = Vec::new();
    for id in repo.wal_clusters().await? {
        let oldest = snapshots
            .iter()
            .filter(|m| !removed.contains(m.id.as_str()))
            .flat_map(|m| m.artifacts.iter())
            .filter(|a| a.is_ok())
            .filter_map(|a| a.wal.as_ref())
            .filter(|w| w.system_identifier == id)
            .map(|w| w.start_lsn.segment(w.segment_size))
            .min();
        let (records, damaged) = repo.wal_records(&id).await?;
        let mut named: BTreeSet<String> = BTreeSet::new();
        for r in &records {
            let old = oldest.is_some_and(|first| r.segment().is_some_and(|s| s.number < first));
            if old {
                out.push(r.name.clone());
                if !opts.dry_run {
                    still_held()?;
                    repo.delete_wal(r).await?;
                }
            } else {
                named.insert(r.path.clone());
            }
        }
        if !damaged.is_empty() {
            // A record this build cannot read (a newer version, a rotated
            // key, damage) still names its file: nothing here is a stray.
            tracing::warn!(
                repository = repo.name(),
                records = damaged.len(),
                "WAL records that cannot be read: their files are kept; `kompose-dr check` names them"
            );
            continue;
        }
        let all: BTreeSet<&str> = records.iter().map(|r| r.path.as_str()).collect();
        for o in repo
            .backend()
            .list(&crate::storage::keys::wal_cluster_prefix(&id))
            .await?
        {
            let stray = o.key.ends_with(".zst.age")
                && !named.contains(&o.key)
                && !all.contains(o.key.as_str())
                && o.modified.is_some_and(|m| m < before);
            if stray {
                out.push(o.key.clone());
                if !opts.dry_run {
                    still_held()?;
                    repo.backend().delete(&o.key).await?;
                }
            }
        }
    }
    if !out.is_empty() {
        tracing::info!(
            repository = repo.name(),
            files = out.len(),
            dry_run = opts.dry_run,
            "WAL no retained base backup needs removed"
        );
    }
    Ok(out)
}

/// Removes the snapshots `decisions` let go, after a signed record of
/// them, each manifest first: from that moment the snapshot no longer
/// exists, and a crash before its data is gone leaves only unreferenced
/// data.
async fn remove_snapshots(
    repo: &Repository,
    decisions: &[Decision],
    still_held: &(dyn Fn() -> Result<(), PruneError> + Sync),
) -> Result<(), PruneError> {
    let backend = repo.backend();
    let gone: Vec<String> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.snapshot.clone())
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    // Recorded, signed, before the first removal: a snapshot gone without
    // a record is one that vanished, and check says so.
    still_held()?;
    repo.record_prune(&gone).await?;
    for d in decisions.iter().filter(|d| !d.keep) {
        still_held()?;
        backend.delete(&manifest_key(&d.snapshot)).await?;
        // Its signature is worthless without it.
        backend
            .delete(&crate::storage::keys::signature_key(&manifest_key(
                &d.snapshot,
            )))
            .await?;
        backend
            .delete_prefix(&crate::storage::keys::snapshot_data_prefix(&d.snapshot))
            .await?;
        tracing::info!(repository = repo.name(), snapshot = %d.snapshot, "snapshot removed");
    }
    Ok(())
}

/// Removes (or, on a dry run, lists) data that no manifest names and that
/// started `before` the grace period, so not a backup being written now.
async fn remove_unreferenced(
    repo: &Repository,
    snapshots: &[Manifest],
    decisions: &[Decision],
    opts: &PruneOptions,
    before: DateTime<Utc>,
    still_held: &(dyn Fn() -> Result<(), PruneError> + Sync),
) -> Result<Vec<String>, PruneError> {
    let live: BTreeSet<String> = snapshots
        .iter()
        .filter(|m| decisions.iter().any(|d| d.snapshot == m.id && d.keep) || opts.policy.is_some())
        .map(|m| m.id.clone())
        .collect();
    let removed: BTreeSet<String> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.snapshot.clone())
        .collect();
    let mut unreferenced = Vec::new();
    for id in repo.backend().list_dirs(crate::storage::keys::DATA).await? {
        // Only what kompose-dr could have written: a snapshot id.
        if !crate::model::time::is_snapshot_id(&id)
            || live.contains(&id)
            || removed.contains(&id)
            || snapshots.iter().any(|m| m.id == id)
        {
            continue;
        }
        let young = id_time(&id).is_none_or(|t| t > before);
        if young {
            continue;
        }
        let prefix = crate::storage::keys::snapshot_data_prefix(&id);
        unreferenced.push(prefix.clone());
        if !opts.dry_run {
            still_held()?;
            repo.backend().delete_prefix(&prefix).await?;
            tracing::info!(repository = repo.name(), prefix = %prefix, "unreferenced data removed");
        }
    }
    Ok(unreferenced)
}

/// The time in a snapshot id.
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod memory_tests;
