//! Backfill (`backfill = true` in a policy): after the policy's backup,
//! every snapshot of the policy that one of its repositories lacks is
//! copied there from a repository that has it — the night the offsite
//! upload failed is filled in by the next night's run.
//!
//! Only what the policy's retention would still keep in the target is
//! copied (a snapshot prune already removed there is not brought back),
//! and a backfill that fails is reported, never failing the backup.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{CopyOptions, CopyReport, Selection};
use crate::model::config::Config;
use crate::model::manifest::Manifest;
use crate::model::retention::{Retention, decide};
use crate::repository::Repository;

/// What a policy's backfill copies: its snapshots, between its repositories.
#[derive(Debug, Clone)]
pub struct Backfill {
    /// The policy whose snapshots are filled in.
    pub policy: String,
    /// Its repositories by name; empty means every configured one.
    pub repositories: Vec<String>,
    /// Its retention: what prune would remove is not copied.
    pub retention: Retention,
    /// The time zone of the retention's calendar buckets.
    pub timezone: Option<chrono_tz::Tz>,
}

/// What a backfill did, in the backup's report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    /// One copy per (source, target) pair that had something to copy.
    pub copies: Vec<CopyReport>,
    /// What stopped a repository from being looked at or written.
    pub errors: Vec<String>,
}

impl BackfillReport {
    /// Whether every copy held and every repository answered.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.copies.iter().all(|c| c.failed() == 0)
    }
}

/// What one repository holds: its name, the policy's good snapshots there,
/// and the ids of every good manifest (of any policy; a damaged one is not
/// held, and a copy replaces it).
#[derive(Debug, Clone)]
pub struct Holding {
    /// The repository's name.
    pub repository: String,
    /// The policy's snapshots it holds.
    pub snapshots: Vec<Manifest>,
    /// The id of every good manifest it holds.
    pub ids: BTreeSet<String>,
}

/// One copy to make: snapshot ids from the repository at index `from` to
/// the one at `to` (indexes into the holdings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index of the source.
    pub from: usize,
    /// Index of the target.
    pub to: usize,
    /// The snapshots, oldest first.
    pub snapshots: Vec<String>,
}

/// Plans a backfill: for each repository, the policy's snapshots it lacks,
/// taken from the first repository that holds each, keeping only those the
/// retention would keep among the target's own.
pub fn plan(
    holdings: &[Holding],
    retention: &Retention,
    timezone: Option<chrono_tz::Tz>,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (to, target) in holdings.iter().enumerate() {
        let mut by_source: BTreeMap<usize, Vec<&Manifest>> = BTreeMap::new();
        let mut candidates: Vec<&Manifest> = Vec::new();
        let mut seen = BTreeSet::new();
        for (from, source) in holdings.iter().enumerate() {
            if from == to {
                continue;
            }
            for m in &source.snapshots {
                if target.ids.contains(&m.id) || !seen.insert(m.id.clone()) {
                    continue;
                }
                candidates.push(m);
                by_source.entry(from).or_default().push(m);
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let kept: Option<BTreeSet<String>> = (!retention.is_empty()).then(|| {
            let all: Vec<Manifest> = target
                .snapshots
                .iter()
                .chain(candidates.iter().copied())
                .cloned()
                .collect();
            let reasons = match timezone {
                Some(tz) => decide(&all, retention, now, &tz),
                None => decide(&all, retention, now, &chrono::Local),
            };
            reasons.into_keys().collect()
        });
        for (from, mut ms) in by_source {
            ms.retain(|m| kept.as_ref().is_none_or(|k| k.contains(&m.id)));
            if ms.is_empty() {
                continue;
            }
            ms.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
            steps.push(Step {
                from,
                to,
                snapshots: ms.iter().map(|m| m.id.clone()).collect(),
            });
        }
    }
    steps
}

/// The least a backfill waits for a repository's lock: the backup that
/// just ended releases its S3 leases in the background, and a backfill
/// must not find its own run's lease in the way.
const LEAST_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the policy's backfill on its configured repositories.
pub async fn run(config: &Config, b: &Backfill, lock_wait: std::time::Duration) -> BackfillReport {
    let repositories = config
        .repositories
        .iter()
        .filter(|rc| b.repositories.is_empty() || b.repositories.contains(&rc.name))
        .map(Repository::open)
        .collect();
    run_on(
        repositories,
        b,
        b.timezone.or(config.timezone),
        Utc::now(),
        lock_wait.max(LEAST_LOCK_WAIT),
    )
    .await
}

/// Runs a backfill over `repositories` (which tests build on memory).
pub async fn run_on(
    repositories: Vec<Repository>,
    b: &Backfill,
    timezone: Option<chrono_tz::Tz>,
    now: DateTime<Utc>,
    lock_wait: std::time::Duration,
) -> BackfillReport {
    let mut report = BackfillReport::default();
    let mut holdings = Vec::new();
    let mut answering = Vec::new();
    for repo in repositories {
        match holding(&repo, &b.policy).await {
            Ok(h) => {
                holdings.push(h);
                answering.push(repo);
            }
            Err(e) => {
                let e = format!("repository `{}`: {e}; backfill skips it", repo.name());
                tracing::warn!(policy = %b.policy, "{e}");
                report.errors.push(e);
            }
        }
    }
    for step in plan(&holdings, &b.retention, timezone, now) {
        let (from, to) = (&answering[step.from], &answering[step.to]);
        tracing::info!(policy = %b.policy, from = from.name(), to = to.name(), snapshots = step.snapshots.len(), "backfill: copying what the target lacks");
        let opts = CopyOptions {
            selection: Selection::Snapshots(step.snapshots),
            dry_run: false,
            lock_wait,
        };
        match super::copy(from, to, &opts).await {
            Ok(c) => report.copies.push(c),
            Err(e) => {
                let e = format!("copy from `{}` to `{}`: {e}", from.name(), to.name());
                tracing::error!(policy = %b.policy, "backfill: {e}");
                report.errors.push(e);
            }
        }
    }
    report
}

/// What `repo` holds of `policy`.
async fn holding(
    repo: &Repository,
    policy: &str,
) -> Result<Holding, crate::repository::RepositoryError> {
    repo.marker().await?;
    let (good, _damaged) = repo.snapshots().await?;
    // A manifest readers refuse is not a snapshot held: a copy replaces it.
    let ids = good.iter().map(|m| m.id.clone()).collect();
    Ok(Holding {
        repository: repo.name().to_owned(),
        snapshots: good
            .into_iter()
            .filter(|m| m.policy.as_deref() == Some(policy))
            .collect(),
        ids,
    })
}
