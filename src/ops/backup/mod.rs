//! One backup run: select the sources, back them up with bounded
//! parallelism into every repository, write the facts sidecar, and commit a
//! manifest per repository — last, and only for what was stored completely.
//!
//! A failing source does not stop the others: the snapshot is committed with
//! that artifact marked failed (exit 3). If nothing succeeded, nothing is
//! committed and the data written so far is removed (exit 1).

pub mod notify;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::error::{Class, Classify, Failure, Outcome};
use crate::model::config::{Config, DatabaseSelection, PostgresConfig};
use crate::model::facts::Facts;
use crate::model::manifest::{
    Artifact, ArtifactKind, ArtifactStatus, MANIFEST_VERSION, Manifest, SnapshotStatus,
    StoredObject,
};
use crate::model::policy::Policy;
use crate::model::selection::database_source;
use crate::pipeline::{self, EncodeSettings};
use crate::repository::lock::RepoLock;
use crate::repository::{Repository, RepositoryError};
use crate::sources::{self, SourceContext, SourceRun, Stored, postgres};
use crate::storage::keys::facts_key;

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// `--source` names or globs; empty means every configured source.
    pub sources: Vec<String>,
    /// The policy the run belongs to, recorded in the manifest.
    pub policy: Option<String>,
    /// Only these repositories (by name); empty means all.
    pub repositories: Vec<String>,
    /// How long to wait for another writer's lock.
    pub lock_wait: std::time::Duration,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// After the run, fill in the policy's snapshots its repositories
    /// lack (`backfill = true` in the policy).
    pub backfill: Option<crate::ops::copy::backfill::Backfill>,
}

/// Overall outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every source stored in every repository.
    Ok,
    /// A snapshot was committed, but something failed.
    Partial,
    /// Nothing was committed.
    Failed,
}

/// One artifact in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactReport {
    /// Source name, as `--source` selects it: `postgres/<db>`,
    /// `postgres/globals`, `redis` or `files/<name>`.
    pub source: String,
    /// Ok or failed.
    pub status: ArtifactStatus,
    /// Key of the archive.
    pub path: Option<String>,
    /// Repositories that hold it.
    pub repositories: Vec<String>,
    /// Bytes before compression.
    pub plaintext_bytes: u64,
    /// Size in bytes of the stored archive (after zstd and age); 0 when
    /// nothing was stored.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes.
    pub sha256: Option<String>,
    /// Wall-clock seconds this source took, until its archive was committed
    /// or it failed.
    pub duration_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// Containers stopped or paused for the copy, and for how long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<crate::model::manifest::Downtime>,
}

/// One repository in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryReport {
    /// The repository's name as configured (`[[repository]]` `name`).
    pub name: String,
    /// Where it is.
    pub location: String,
    /// Whether a manifest was committed there.
    pub committed: bool,
    /// What failed there, if anything.
    pub errors: Vec<String>,
}

/// The result of a backup run, as printed (`--json`) and logged.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Snapshot id (committed only if `status` is not failed).
    pub snapshot: String,
    /// How the run came out as a whole (ok, partial or failed); decides the
    /// exit status through [`BackupReport::outcome`].
    pub status: RunStatus,
    /// When the run started (UTC), after the repositories were opened and
    /// locked; the snapshot id is derived from it.
    pub started_at: DateTime<Utc>,
    /// When the run finished (UTC), after the last manifest was committed
    /// (or given up).
    pub finished_at: DateTime<Utc>,
    /// Wall-clock seconds from `started_at` to the end of the run. Sources run
    /// in parallel, so this is less than the sum of theirs.
    pub duration_seconds: f64,
    /// One entry per source attempted, good or failed, sorted by source
    /// name, the configuration (`config`) last.
    pub artifacts: Vec<ArtifactReport>,
    /// One entry per repository the run meant to write to, including those that
    /// could not be opened or locked.
    pub repositories: Vec<RepositoryReport>,
    /// What the policy's backfill copied afterwards (`backfill = true`);
    /// its failures never change `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<crate::ops::copy::backfill::BackfillReport>,
}

impl BackupReport {
    /// How the run came out, for the exit status.
    pub fn outcome(&self) -> Outcome {
        match self.status {
            RunStatus::Ok => Outcome::Success,
            RunStatus::Partial => Outcome::Partial,
            RunStatus::Failed => Outcome::Failed,
        }
    }
}

type Job<'a> = Pin<Box<dyn Future<Output = SourceRun> + Send + 'a>>;

/// The options of a policy's run: its sources and repositories, recorded
/// in the manifest under its name. An unknown name is a usage error that
/// lists the policies there are.
pub fn policy_options(
    config: &Config,
    policies: &[Policy],
    name: &str,
    lock_wait: std::time::Duration,
    progress: bool,
) -> Result<BackupOptions, Failure> {
    let p = policies.iter().find(|p| p.name == name).ok_or_else(|| {
        Failure::usage(format!(
            "no policy `{name}` in {}; available: {}",
            config.policies_dir.display(),
            if policies.is_empty() {
                "none".to_owned()
            } else {
                policies
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    })?;
    Ok(BackupOptions {
        sources: p.sources.clone(),
        policy: Some(p.name.clone()),
        repositories: p.repositories.clone(),
        lock_wait,
        progress,
        backfill: p.backfill.then(|| crate::ops::copy::backfill::Backfill {
            policy: p.name.clone(),
            repositories: p.repositories.clone(),
            retention: p.retention.clone(),
            timezone: p.timezone,
        }),
    })
}

/// Runs one backup and tells the stack: the healthchecks start ping
/// first, then the event on the bus, the `[[notify]]` notice, the success
/// or failure ping and the series in the metrics textfile
/// ([`crate::ops::backup::notify::around_backup`]). What the CLI and the
/// agent both run.
pub async fn run_and_notify(
    config: &Config,
    opts: &BackupOptions,
) -> Result<BackupReport, Failure> {
    let mut report = crate::ops::backup::notify::around_backup(config, run(config, opts)).await?;
    if let Some(b) = &opts.backfill {
        let filled = crate::ops::copy::backfill::run(config, b, opts.lock_wait).await;
        if !filled.ok() {
            tracing::error!(policy = %b.policy, "backfill did not complete (the backup itself is not affected): see its report");
        }
        report.backfill = Some(filled);
    }
    Ok(report)
}

/// One repository the run writes to: its handle, its writer lock (held
/// until the run ends) and what happened there.
struct Target {
    repo: Repository,
    lock: Option<RepoLock>,
    report: RepositoryReport,
}

impl Target {
    fn new(repo: Repository, lock: Option<RepoLock>) -> Target {
        let report = RepositoryReport {
            name: repo.name().to_owned(),
            location: repo.location(),
            committed: false,
            errors: Vec::new(),
        };
        Target { repo, lock, report }
    }

    /// Removes what this run wrote here without committing it.
    async fn discard(&self, snapshot: &str) {
        if let Err(e) = self.repo.discard_data(snapshot).await {
            tracing::warn!(repository = self.repo.name(), error = %e, "could not remove the data of the uncommitted snapshot; prune will");
        }
    }
}

/// Runs one backup.
pub async fn run(config: &Config, opts: &BackupOptions) -> Result<BackupReport, Failure> {
    if config.repositories.is_empty() {
        return Err(Failure::usage(format!(
            "configuration {}: no [[repository]] is configured",
            config.path.display()
        )));
    }
    for name in &opts.repositories {
        config.repository_named(name)?;
    }
    let repositories = config
        .repositories
        .iter()
        .filter(|rc| opts.repositories.is_empty() || opts.repositories.contains(&rc.name))
        .map(Repository::open)
        .collect();
    run_on(config, opts, repositories).await
}

/// Runs one backup of the sources `config` names into `repositories`
/// (which need not be the configured ones: tests pass repositories on
/// [`MemoryBackend`](crate::storage::memory::MemoryBackend)).
pub async fn run_on(
    config: &Config,
    opts: &BackupOptions,
    repositories: Vec<Repository>,
) -> Result<BackupReport, Failure> {
    let encryption = preflight(config, &repositories)?;
    let resolved = resolve_containers(config).await?;
    let config = &resolved;
    let (mut targets, unavailable) =
        open_targets(repositories, opts.lock_wait, &encryption.recipients).await?;

    let started_at = Utc::now();
    let clock = Instant::now();
    let snapshot = crate::model::time::snapshot_id(started_at);
    let ctx = source_context(config, opts, &snapshot, &targets, encryption);
    tracing::info!(snapshot = %snapshot, "backup started");
    let runs = run_sources(config, opts, &ctx, &targets).await?;

    let facts = store_facts(&ctx, &runs).await;
    let mut head = manifest_head(&snapshot, opts, started_at);
    for target in &mut targets {
        commit_to(target, &mut head, &runs, &facts).await;
    }
    let mut report = report_of(snapshot, started_at, &runs, targets, unavailable);
    report.duration_seconds = clock.elapsed().as_secs_f64();
    Ok(report)
}

/// What a backup needs before anything is opened: recipients to encrypt
/// to, and a signing key for every repository it commits to.
fn preflight<'c>(
    config: &'c Config,
    repositories: &[Repository],
) -> Result<&'c crate::model::config::Encryption, Failure> {
    let encryption = config.encryption.as_ref().ok_or_else(|| {
        Failure::usage(format!(
            "configuration {}: [encryption] recipients are needed to back up",
            config.path.display()
        ))
    })?;
    if let Some(r) = repositories.iter().find(|r| !r.may_commit()) {
        return Err(Failure::usage(format!(
            "configuration {}: no [signing] key_file (or key_credential) to sign snapshots for repository `{}`: \
             readers refuse unsigned snapshots. Make a key with `kompose-dr init --generate-key FILE` \
             (it writes FILE.sign and prints the lines to paste; under systemd install FILE.sign as \
             /etc/kompose-dr/credentials/signing_key, 0600 root: a key_credential that is absent or empty counts as none)",
            config.path.display(),
            r.name()
        )));
    }
    Ok(encryption)
}

/// What every source of this run shares: the snapshot, the repositories
/// written to, encryption, secrets to scrub, progress and stall limits.
fn source_context(
    config: &Config,
    opts: &BackupOptions,
    snapshot: &str,
    targets: &[Target],
    encryption: &crate::model::config::Encryption,
) -> SourceContext {
    SourceContext {
        snapshot: snapshot.to_owned(),
        repositories: targets.iter().map(|t| t.repo.clone()).collect(),
        encode: EncodeSettings {
            level: config.compression.level,
            recipients: encryption.recipients.clone(),
        },
        redactor: config.redactor(),
        progress: opts.progress.then(|| {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
        }),
        timeouts: config.timeouts.clone(),
    }
}

/// Backs up every selected source with bounded parallelism, sorted by
/// source; stops everything once every repository's lock is lost.
async fn run_sources(
    config: &Config,
    opts: &BackupOptions,
    ctx: &SourceContext,
    targets: &[Target],
) -> Result<Vec<SourceRun>, Failure> {
    let jobs = plan(config, opts, ctx).await?;
    let parallel = config.postgres.as_ref().map_or(2, |p| p.jobs.get());
    let all_runs = futures::stream::iter(jobs)
        .buffer_unordered(parallel)
        .inspect(log_run)
        .collect::<Vec<SourceRun>>();
    // Once every repository's lock is lost, another writer may hold each:
    // nothing of this run may be committed anywhere, so it stops now
    // (children killed, uploads aborted) instead of finishing for nothing.
    let mut runs = tokio::select! {
        runs = all_runs => runs,
        () = every_lock_lost(targets) => {
            for target in targets {
                target.discard(&ctx.snapshot).await;
            }
            return Err(Failure {
                class: Class::Failure,
                message: format!(
                    "lost the repository lock of {} (its lease could not be renewed in time, so another writer may hold it): \
                     the backup was stopped and nothing was committed",
                    targets.iter().map(|t| t.repo.name()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    };
    // kompose-dr's own configuration goes with every run that has
    // something to commit, whatever the sources or the policy select: it
    // is small, and the day the host is gone it is what every other
    // artifact needs (docs/DESIGN.md §3). Alone it is no snapshot.
    if runs.iter().any(|r| r.result.is_ok()) {
        let config_run = watched(
            ctx,
            sources::config::SOURCE.into(),
            ArtifactKind::Config,
            sources::config::backup(ctx, config),
        );
        let run = tokio::select! {
            run = config_run => run,
            () = every_lock_lost(targets) => SourceRun::failed(
                sources::config::SOURCE,
                ArtifactKind::Config,
                "every repository's lock was lost",
            ),
        };
        log_run(&run);
        runs.push(run);
    }
    // By source name, kompose-dr's own configuration last.
    runs.sort_by(|a, b| {
        (a.kind == ArtifactKind::Config, &a.source)
            .cmp(&(b.kind == ArtifactKind::Config, &b.source))
    });
    Ok(runs)
}

/// The run's report: per artifact and per repository, and the status they
/// add up to (the caller fills in the duration).
fn report_of(
    snapshot: String,
    started_at: DateTime<Utc>,
    runs: &[SourceRun],
    targets: Vec<Target>,
    unavailable: Vec<RepositoryReport>,
) -> BackupReport {
    let artifacts = runs.iter().map(|r| report_artifact(r, &targets)).collect();
    let mut repositories: Vec<RepositoryReport> = targets.into_iter().map(|t| t.report).collect();
    repositories.extend(unavailable);
    let committed = repositories.iter().any(|r| r.committed);
    let all_good = committed
        && runs.iter().all(|r| r.result.is_ok())
        && repositories
            .iter()
            .all(|r| r.committed && r.errors.is_empty());
    let status = match (committed, all_good) {
        (false, _) => RunStatus::Failed,
        (true, true) => RunStatus::Ok,
        (true, false) => RunStatus::Partial,
    };
    BackupReport {
        snapshot,
        status,
        started_at,
        finished_at: Utc::now(),
        duration_seconds: 0.0,
        artifacts,
        repositories,
        backfill: None,
    }
}

/// Resolves once the lock of every target is lost; never if one of them
/// cannot be lost (a local flock) or holds none.
async fn every_lock_lost(targets: &[Target]) {
    if targets.iter().any(|t| t.lock.is_none()) {
        return std::future::pending().await;
    }
    futures::future::join_all(
        targets
            .iter()
            .filter_map(|t| t.lock.as_ref())
            .map(|l| l.lost()),
    )
    .await;
}

/// What every repository's manifest of this run shares; each fills in its
/// own artifacts, facts, status and end time.
fn manifest_head(snapshot: &str, opts: &BackupOptions, started_at: DateTime<Utc>) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        id: snapshot.to_owned(),
        repository: String::new(),
        hostname: crate::model::host::name(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        policy: opts.policy.clone(),
        started_at,
        finished_at: started_at,
        status: SnapshotStatus::Ok,
        artifacts: Vec::new(),
        facts: None,
        stack: None,
        previous: None,
    }
}

/// Opens the repositories the run writes to and takes their writer locks.
/// A repository that does not answer (or is locked) is reported and
/// skipped, so the others still get the backup; if none is left the run
/// fails (as a usage error when one is not initialised).
async fn open_targets(
    repositories: Vec<Repository>,
    lock_wait: std::time::Duration,
    recipients: &[age::x25519::Recipient],
) -> Result<(Vec<Target>, Vec<RepositoryReport>), Failure> {
    let ours: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    let mut targets = Vec::new();
    let mut unavailable = Vec::new();
    let mut class = Class::Failure;
    for repo in repositories {
        match prepare(&repo, &ours, lock_wait).await {
            Ok(lock) => targets.push(Target::new(repo, lock)),
            Err(e) => {
                if e.class() == Class::Usage {
                    class = Class::Usage;
                }
                // One line that leads with what to do (`run kompose-dr init`).
                tracing::error!("{e}; backing up to the other repositories");
                let mut t = Target::new(repo, None);
                t.report.errors.push(e.to_string());
                unavailable.push(t.report);
            }
        }
    }
    adopt_all(&mut targets).await;
    if targets.is_empty() {
        let why: Vec<String> = unavailable
            .iter()
            .flat_map(|r| r.errors.iter().cloned())
            .collect();
        return Err(Failure {
            class,
            message: why.join("; "),
        });
    }
    Ok((targets, unavailable))
}

/// Gives every repository written before stack ids the stack id of the
/// others (or a new one), once: its marker is re-signed with it.
async fn adopt_all(targets: &mut [Target]) {
    let mut markers = Vec::new();
    for t in targets.iter() {
        if let Ok(m) = t.repo.marker().await {
            markers.push(m);
        }
    }
    let stack = crate::repository::stack::choose(&markers);
    for t in targets.iter_mut() {
        if let Err(e) = t.repo.adopt(&stack).await {
            tracing::error!(repository = t.repo.name(), error = %e, "could not give the repository its stack id");
            t.report
                .errors
                .push(format!("adopting the repository into stack {stack}: {e}"));
        }
    }
}

/// Stores the facts sidecar (encrypted like everything else) of the
/// sources that succeeded.
async fn store_facts(
    ctx: &SourceContext,
    runs: &[SourceRun],
) -> Option<Result<Stored, crate::sources::SourceError>> {
    if !runs.iter().any(|r| r.result.is_ok()) {
        return None;
    }
    let facts = Facts {
        snapshot: ctx.snapshot.clone(),
        sources: runs
            .iter()
            .filter(|r| r.result.is_ok())
            .filter_map(|r| r.facts.clone().map(|f| (r.source.clone(), f)))
            .collect::<BTreeMap<_, _>>(),
    };
    let body = serde_json::to_vec(&facts).expect("facts serialise");
    let key = facts_key(&ctx.snapshot);
    Some(
        match ctx
            .encode(&key, pipeline::input_from_bytes(body.into()))
            .await
        {
            Ok(enc) => ctx.finish(&key, enc, Ok(())).await,
            Err(e) => Err(e),
        },
    )
}

/// Commits the snapshot to one repository: its manifest names what this
/// repository holds, and is written only if the facts and at least one
/// archive are there and the writer lock was never lost.
async fn commit_to(
    target: &mut Target,
    head: &mut Manifest,
    runs: &[SourceRun],
    facts: &Option<Result<Stored, crate::sources::SourceError>>,
) {
    let name = target.repo.name().to_owned();
    let facts_obj = match facts {
        Some(Ok(s)) => match s.failure_in(&name) {
            None => Some(StoredObject {
                path: s.key.clone(),
                stored_bytes: s.stored_bytes,
                sha256: s.sha256.clone(),
            }),
            Some(e) => {
                target.report.errors.push(format!("facts: {e}"));
                None
            }
        },
        Some(Err(e)) => {
            target.report.errors.push(format!("facts: {e}"));
            None
        }
        None => None,
    };
    let artifacts: Vec<Artifact> = runs.iter().map(|r| artifact_for(r, &name)).collect();
    for r in runs {
        if let Ok(s) = &r.result
            && let Some(e) = s.failure_in(&name)
        {
            target.report.errors.push(format!("{}: {e}", r.source));
        }
    }
    // The configuration alone is no snapshot: some data must be there.
    let data_ok = artifacts
        .iter()
        .any(|a| a.is_ok() && a.kind != ArtifactKind::Config);
    if facts_obj.is_none() || !data_ok {
        target.discard(&head.id).await;
        return;
    }
    // A lease is renewed (and checked by the store's clock) right before
    // the commit: a host paused since its last renewal finds out here.
    let held = match &target.lock {
        Some(lock) => lock.confirm().await,
        None => true,
    };
    if !held {
        target.report.errors.push(
            "lost the repository lock (its lease could not be renewed, so another writer may hold it now): not committed".to_owned(),
        );
        target.discard(&head.id).await;
        return;
    }
    let manifest = Manifest {
        repository: name.clone(),
        finished_at: Utc::now(),
        status: if artifacts.iter().all(Artifact::is_ok) {
            SnapshotStatus::Ok
        } else {
            SnapshotStatus::Partial
        },
        artifacts,
        facts: facts_obj,
        ..head.clone()
    };
    match target.repo.commit(&manifest).await {
        Ok(_) => {
            target.report.committed = true;
            tracing::info!(repository = %name, snapshot = %manifest.id, status = ?manifest.status, "snapshot committed");
        }
        Err(e) => {
            tracing::error!(repository = %name, error = %e, "could not commit the snapshot");
            target.report.errors.push(format!("commit: {e}"));
        }
    }
    head.finished_at = manifest.finished_at;
}

/// One source's line in the report: the repositories that hold it are
/// those that committed and did not fail to store it.
fn report_artifact(r: &SourceRun, targets: &[Target]) -> ArtifactReport {
    ArtifactReport {
        source: r.source.clone(),
        status: if r.result.is_ok() {
            ArtifactStatus::Ok
        } else {
            ArtifactStatus::Failed
        },
        path: r.result.as_ref().ok().map(|s| s.key.clone()),
        repositories: match &r.result {
            Ok(s) => targets
                .iter()
                .filter(|t| t.report.committed && s.failure_in(t.repo.name()).is_none())
                .map(|t| t.repo.name().to_owned())
                .collect(),
            Err(_) => Vec::new(),
        },
        plaintext_bytes: r.result.as_ref().map_or(0, |s| s.plaintext_bytes),
        stored_bytes: r.result.as_ref().map_or(0, |s| s.stored_bytes),
        sha256: r.result.as_ref().ok().map(|s| s.sha256.clone()),
        duration_seconds: r.duration_seconds,
        error: r.result.as_ref().err().map(|e| e.0.clone()),
        downtime: r.downtime.clone(),
    }
}

/// Checks that a repository answers and takes its writer lock.
async fn prepare(
    repo: &Repository,
    recipients: &[String],
    lock_wait: std::time::Duration,
) -> Result<Option<RepoLock>, RepositoryError> {
    let marker = match repo.marker().await {
        // A local repository whose directory is gone (the host's disk was
        // lost): say so, with the one command that re-creates it.
        Err(RepositoryError::NotInitialised { name, location })
            if location.starts_with('/') && !std::path::Path::new(&location).exists() =>
        {
            return Err(RepositoryError::NotInitialised {
                name,
                location: format!("{location} (the directory does not exist)"),
            });
        }
        m => m?,
    };
    if marker.recipients != recipients {
        tracing::warn!(
            repository = repo.name(),
            "the configured recipients differ from those the repository was created with; new archives use the configured ones"
        );
    }
    repo.lock("backup", lock_wait).await
}

fn log_run(r: &SourceRun) {
    match &r.result {
        Ok(s) => tracing::info!(
            source = %r.source,
            bytes = s.plaintext_bytes,
            stored = s.stored_bytes,
            seconds = format_args!("{:.1}", r.duration_seconds),
            "source backed up"
        ),
        Err(e) => tracing::error!(source = %r.source, error = %e, "source failed"),
    }
}

/// The manifest entry of a run, as `repository` holds it.
fn artifact_for(r: &SourceRun, repository: &str) -> Artifact {
    let (status, error, stored) = match &r.result {
        Ok(s) => match s.failure_in(repository) {
            None => (ArtifactStatus::Ok, None, Some(s)),
            Some(e) => (ArtifactStatus::Failed, Some(e.to_owned()), None),
        },
        Err(e) => (ArtifactStatus::Failed, Some(e.0.clone()), None),
    };
    Artifact {
        source: r.source.clone(),
        kind: r.kind,
        path: stored.map(|s| s.key.clone()),
        captured_at: r.captured_at,
        plaintext_bytes: stored.map_or(0, |s| s.plaintext_bytes),
        stored_bytes: stored.map_or(0, |s| s.stored_bytes),
        sha256: stored.map(|s| s.sha256.clone()),
        // Only a dump is read by pieces (its restore runs its content).
        pieces: stored
            .and_then(|s| s.pieces.clone())
            .filter(|_| r.kind == ArtifactKind::PostgresDump),
        status,
        error,
        tool_version: r.tool_version.clone(),
        server_version: r.server_version.clone(),
        duration_seconds: r.duration_seconds,
        file: r.file.clone(),
        wal: r.wal.clone(),
        downtime: r.downtime.clone(),
    }
}

/// The configuration with what the sources' containers supply (the
/// PostgreSQL user and password from the container's environment). A
/// container name the engine does not know is a configuration error (exit
/// 2, naming close matches) before anything is written; an engine that does
/// not answer, or a stopped container, fails only the sources that need it.
async fn resolve_containers(config: &Config) -> Result<Config, Failure> {
    use crate::engine::{Engine, EngineError};
    let mut config = config.clone();
    let fatal = |e: EngineError| match e {
        e @ EngineError::NoSuchContainer { .. } | e @ EngineError::BadEndpoint(_) => Err(e),
        e => {
            tracing::warn!(error = %e, "container engine");
            Ok(())
        }
    };
    if let Some(pg) = &config.postgres {
        match crate::clients::postgres::resolve(pg).await {
            Ok(r) => config.postgres = Some(r),
            Err(e) => fatal(e)?,
        }
    }
    if let Some(c) = config.redis.as_ref().and_then(|r| r.container.as_ref()) {
        let found = match Engine::connect(c.engine.as_deref()) {
            Ok(engine) => engine.inspect(&c.name).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = found {
            fatal(e)?;
        }
    }
    for d in &config.directories {
        if d.stop.is_empty() {
            continue;
        }
        let found = match Engine::connect(d.engine()) {
            Ok(engine) => {
                let mut r = Ok(());
                for c in &d.stop {
                    if let Err(e) = engine.inspect(&c.name).await {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = found {
            fatal(e)?;
        }
    }
    Ok(config)
}

/// `job`, backing up `source`, under the stall watchdog: once it has moved
/// no data for its stall limit (`stall_timeout`, else `[timeouts] stall`)
/// it is stopped — dropped, which kills its tools and aborts its uploads —
/// and the source fails, so that one hung server or lock cannot hold the
/// run, and the repository lock, for ever.
fn watched<'a>(
    ctx: &'a SourceContext,
    source: String,
    kind: ArtifactKind,
    job: impl Future<Output = SourceRun> + Send + 'a,
) -> Job<'a> {
    let limit = ctx.timeouts.stall_for(&source);
    Box::pin(async move {
        let start = Instant::now();
        match crate::process::stall::watch(limit, job).await {
            Ok(run) => run,
            Err(stalled) => {
                let mut run = SourceRun::failed(
                    source.clone(),
                    kind,
                    format!(
                        "{source} {stalled} (a lock not granted, or a server or tool that stopped answering): \
                         it was stopped, its tools killed, nothing stored; if it needs longer, raise {} or [timeouts] stall",
                        crate::model::config::Timeouts::stall_key(&source)
                    ),
                );
                run.duration_seconds = start.elapsed().as_secs_f64();
                run
            }
        }
    })
}

/// A job that only reports a source as failed.
fn failed_job<'a>(name: String, error: &str) -> Job<'a> {
    let kind = if name == "postgres/globals" {
        ArtifactKind::PostgresGlobals
    } else if name == postgres::cluster::SOURCE {
        ArtifactKind::PostgresCluster
    } else {
        ArtifactKind::PostgresDump
    };
    let run = SourceRun::failed(name, kind, error);
    Box::pin(async move { run })
}

/// The PostgreSQL part of a run's plan.
struct PgPlan<'a> {
    /// The selected source names.
    names: Vec<String>,
    /// One job per name.
    jobs: Vec<Job<'a>>,
    /// The database names could not be discovered (`["*"]` and no
    /// connection): the sources fail as one `postgres` entry.
    unknown: bool,
}

impl<'a> PgPlan<'a> {
    /// Every name fails with `error`.
    fn failed(names: Vec<String>, error: &str, unknown: bool) -> PgPlan<'a> {
        let jobs = names.iter().map(|n| failed_job(n.clone(), error)).collect();
        PgPlan {
            names,
            jobs,
            unknown,
        }
    }
}

/// The PostgreSQL jobs: connects once to learn the server version and, for
/// `["*"]`, the databases.
async fn plan_postgres<'a>(
    pg: &'a PostgresConfig,
    ctx: &'a SourceContext,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> PgPlan<'a> {
    let limit = ctx.timeouts.stall_for("postgres");
    let (server, dbs) = match pg_setup(pg, ctx, limit).await {
        Ok(x) => x,
        Err(e) => {
            // Without a connection every selected database fails with the
            // same error; unknown names (["*"]) fail as one `postgres` entry.
            let e = ctx.redactor.scrub(&e.to_string());
            return match &pg.databases {
                DatabaseSelection::List(l) => PgPlan::failed(pg_names(pg, l, wanted), &e, false),
                DatabaseSelection::All => PgPlan::failed(vec!["postgres".into()], &e, true),
            };
        }
    };
    let names = pg_names(pg, &dbs, wanted);
    if names.is_empty() {
        return PgPlan::failed(names, "", false);
    }
    let tool = match tokio::time::timeout(limit, crate::clients::postgres::choose_tool(pg, &server))
        .await
        .map(|r| r.map_err(crate::sources::SourceError::from))
        .unwrap_or_else(|_| {
            Err(crate::sources::SourceError::Tool(format!(
                "pg_dump --version did not answer within {}",
                humantime::format_duration(limit)
            )))
        }) {
        Ok(tool) => tool,
        Err(e) => return PgPlan::failed(names, &e.to_string(), false),
    };
    tracing::info!(server = %server.text, tool = %tool.version(), "PostgreSQL");
    if names.iter().any(|n| {
        matches!(
            crate::model::source_name::SourceName::parse(n),
            Some(crate::model::source_name::SourceName::PostgresDatabase(_))
        )
    }) {
        tool.prepare(pg);
    }
    let jobs = names
        .iter()
        .map(|name| pg_job(ctx, pg, name, &tool, &server))
        .collect();
    PgPlan {
        names,
        jobs,
        unknown: false,
    }
}

/// Connects within `limit` for the server's version and, for `["*"]`, its
/// databases.
async fn pg_setup(
    pg: &PostgresConfig,
    ctx: &SourceContext,
    limit: std::time::Duration,
) -> Result<(crate::clients::postgres::ServerVersion, Vec<String>), crate::sources::SourceError> {
    let setup = async {
        let client = crate::clients::postgres::connect_within(
            pg,
            &pg.endpoint.maintenance_db,
            ctx.timeouts.connect,
        )
        .await?;
        let server = crate::clients::postgres::server_version(&client).await?;
        let dbs = match &pg.databases {
            DatabaseSelection::All => crate::clients::postgres::discover(&client).await?,
            DatabaseSelection::List(l) => l.clone(),
        };
        Ok::<_, crate::sources::SourceError>((server, dbs))
    };
    tokio::time::timeout(limit, setup)
        .await
        .unwrap_or_else(|_| {
            Err(crate::sources::SourceError::Query(format!(
                "PostgreSQL did not answer the version and database queries within {}: \
             is the server overloaded? ({} sets the limit)",
                humantime::format_duration(limit),
                crate::model::config::Timeouts::stall_key("postgres/")
            )))
        })
}

/// The selected PostgreSQL source names: the roles, the cluster, then the
/// databases `dbs`.
fn pg_names(
    pg: &PostgresConfig,
    dbs: &[String],
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<String> {
    (pg.globals && wanted("postgres/globals"))
        .then(|| "postgres/globals".to_owned())
        .into_iter()
        .chain(
            (pg.wal.is_some() && wanted(postgres::cluster::SOURCE))
                .then(|| postgres::cluster::SOURCE.to_owned()),
        )
        .chain(
            dbs.iter()
                .map(|db| database_source(db))
                .filter(|n| wanted(n)),
        )
        .collect()
}

/// The job backing up one PostgreSQL source `name`.
fn pg_job<'a>(
    ctx: &'a SourceContext,
    pg: &'a PostgresConfig,
    name: &str,
    tool: &crate::clients::postgres::DumpTool,
    server: &crate::clients::postgres::ServerVersion,
) -> Job<'a> {
    let (tool, server) = (tool.clone(), server.clone());
    use crate::model::source_name::SourceName;
    match SourceName::parse(name) {
        Some(SourceName::PostgresCluster) => watched(
            ctx,
            name.to_owned(),
            ArtifactKind::PostgresCluster,
            async move { postgres::cluster::base_backup(ctx, pg, &server).await },
        ),
        Some(SourceName::PostgresGlobals) => watched(
            ctx,
            name.to_owned(),
            ArtifactKind::PostgresGlobals,
            async move { postgres::dump_globals(ctx, pg, &tool, &server).await },
        ),
        Some(SourceName::PostgresDatabase(db)) => watched(
            ctx,
            name.to_owned(),
            ArtifactKind::PostgresDump,
            async move { postgres::dump_database(ctx, pg, &tool, &server, &db).await },
        ),
        _ => failed_job(
            name.to_owned(),
            "not a PostgreSQL source name (postgres/globals, postgres/cluster or postgres/<database>)",
        ),
    }
}

/// Turns the configuration and `--source` patterns into jobs.
async fn plan<'a>(
    config: &'a Config,
    opts: &BackupOptions,
    ctx: &'a SourceContext,
) -> Result<Vec<Job<'a>>, Failure> {
    let matcher = crate::model::selection::matcher(&opts.sources)?;
    let wanted = |name: &str| matcher.as_ref().is_none_or(|m| m.is_match(name));
    let mut names: Vec<String> = Vec::new();
    let mut jobs: Vec<Job<'a>> = Vec::new();
    let mut pg_unknown = false; // postgres names could not be discovered

    // Skip connecting when every pattern clearly names Redis or files.
    let any_pg = matcher.is_none()
        || opts
            .sources
            .iter()
            .any(|p| p != "redis" && !p.starts_with("files/") && !p.starts_with("directories/"));
    if let Some(pg) = &config.postgres
        && any_pg
    {
        let planned = plan_postgres(pg, ctx, &wanted).await;
        names.extend(planned.names);
        jobs.extend(planned.jobs);
        pg_unknown = planned.unknown;
    }
    if let Some(redis) = &config.redis
        && wanted("redis")
    {
        names.push("redis".into());
        jobs.push(watched(
            ctx,
            "redis".into(),
            ArtifactKind::RedisRdb,
            sources::redis::backup(ctx, redis),
        ));
    }
    for f in &config.files {
        let name = format!("files/{}", f.name);
        if wanted(&name) {
            jobs.push(watched(
                ctx,
                name.clone(),
                ArtifactKind::File,
                sources::files::backup(ctx, f),
            ));
            names.push(name);
        }
    }

    for d in &config.directories {
        let name = format!("directories/{}", d.name);
        if wanted(&name) {
            jobs.push(watched(
                ctx,
                name.clone(),
                ArtifactKind::Directory,
                sources::directories::backup(ctx, d),
            ));
            names.push(name);
        }
    }

    every_pattern_hits(opts, &names, pg_unknown)?;
    if jobs.is_empty() {
        return Err(Failure::usage(format!(
            "configuration {}: no source is configured ([postgres], [redis], [[files]] or [[directories]])",
            config.path.display()
        )));
    }
    Ok(jobs)
}

/// Every `--source` pattern must select something among `names`: a typo
/// must not back up nothing (a policy's is only warned of). With the
/// PostgreSQL names unknown, a `postgres…` pattern counts as a hit.
fn every_pattern_hits(
    opts: &BackupOptions,
    names: &[String],
    pg_unknown: bool,
) -> Result<(), Failure> {
    for p in &opts.sources {
        let single =
            crate::model::selection::matcher(std::slice::from_ref(p))?.expect("one pattern");
        let hit =
            names.iter().any(|n| single.is_match(n)) || (pg_unknown && p.starts_with("postgres"));
        let glob = p.contains(['*', '?', '[']);
        if !hit && opts.policy.is_some() && glob {
            // A shipped policy selects every kind (`directories/*`): a
            // kind this stack does not configure is no mistake.
            tracing::debug!(pattern = %p, policy = ?opts.policy, "the policy's pattern selects no configured source");
        } else if !hit && opts.policy.is_some() {
            tracing::warn!(pattern = %p, policy = ?opts.policy, "the policy names a source that is not configured");
        } else if !hit {
            return Err(Failure::usage(format!(
                "--source {p} matches no configured source; configured: {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod memory_tests;
