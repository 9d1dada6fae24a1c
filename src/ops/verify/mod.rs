//! `verify`: restore a snapshot into scratch instances and check it against
//! the facts recorded at backup time.
//!
//! Every database is restored into a scratch PostgreSQL of the source's
//! major version (roles first), and its tables and exact row counts must
//! equal those counted in the dump's own snapshot; Redis must load the
//! restored files with the recorded key counts, compared like with like
//! (the facts were counted in the saved file; the restored file is counted
//! the same way, and what Redis loaded is held against it, with keys whose
//! TTL ran out since the backup the only difference allowed: see
//! `checks::key_check`); an acme.json must parse and
//! every certificate decode with the recorded domains and expiry (a warning
//! for any expiring within 14 days); a directory must hold the recorded
//! number of files and bytes, and each SQLite database in it must pass
//! `PRAGMA integrity_check` with the recorded row counts. The restore itself goes through the
//! same code as `restore` (sha256, age authentication, zstd checksums).
//! Drills reuse [`run`] and keep the scratch instances alive for their own
//! checks through [`Restored`].

mod checks;
mod error;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use globset::GlobSet;
use serde::Serialize;

use crate::error::InvalidInput;
use crate::model::config::{Config, PostgresConfig, RedisConfig};
use crate::model::facts::Facts;
use crate::model::manifest::{ArtifactKind, Manifest};
use crate::model::secret::Redactor;
use crate::ops::restore::{RestoreRunError, Single};
use crate::repository::Repository;
use crate::restore::plan::{self, Choice, Selector};
use crate::restore::{self, RestoreContext, RestoreOptions, RestoreTargets};
use crate::scratch::{ScratchPostgres, ScratchRedis, ScratchRuntime};
pub use checks::table_differences;
pub use error::VerifyError;

/// The private keys archives are decrypted with.
type Identities = Arc<Vec<Box<dyn age::Identity + Send + Sync>>>;

/// One check and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// A warning does not fail the verdict.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

impl Check {
    /// A check that held (or failed) with a detail.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
            warning: false,
        }
    }

    /// The `restore` check: the restore's message either way.
    fn restore(result: &Single) -> Check {
        Check::new("restore", result.ok, result.message.clone())
    }
}

/// The verdict for one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceVerdict {
    /// Source name.
    pub source: String,
    /// Seconds the restore took (the RTO figure).
    pub restore_seconds: f64,
    /// Whether every check held.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl SourceVerdict {
    /// A verdict for `source`: ok when every check is.
    pub fn new(source: &str, restore_seconds: f64, checks: Vec<Check>) -> SourceVerdict {
        SourceVerdict {
            source: source.to_owned(),
            restore_seconds,
            ok: checks.iter().all(|c| c.ok || c.warning),
            checks,
        }
    }
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Repository read.
    pub repository: String,
    /// Snapshot verified.
    pub snapshot: String,
    /// Whether every source verified.
    pub ok: bool,
    /// Per source.
    pub sources: Vec<SourceVerdict>,
}

/// The scratch instances holding the restored data, alive until dropped.
#[derive(Default)]
pub struct Restored {
    /// The scratch PostgreSQL, if databases were restored.
    pub postgres: Option<Box<dyn ScratchPostgres>>,
    /// The scratch Redis, if Redis was restored.
    pub redis: Option<Box<dyn ScratchRedis>>,
    /// Restored files per source.
    pub files: HashMap<String, PathBuf>,
    dirs: Vec<tempfile::TempDir>,
}

impl Restored {
    /// Connection settings for the scratch PostgreSQL.
    pub fn postgres_config(&self) -> Option<PostgresConfig> {
        self.postgres.as_ref().map(|p| p.connection())
    }

    /// Connection settings for the scratch Redis.
    pub fn redis_config(&self) -> Option<RedisConfig> {
        self.redis.as_ref().map(|r| r.connection())
    }
}

/// Which snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The newest.
    Latest,
    /// The oldest (the far end of the retention window).
    Oldest,
    /// By id.
    Id(String),
}

impl Which {
    /// `latest`, `oldest`, or else a snapshot id.
    pub fn parse(s: &str) -> Which {
        match s {
            "latest" => Which::Latest,
            "oldest" => Which::Oldest,
            id => Which::Id(id.to_owned()),
        }
    }
}

/// Finds the snapshot to verify.
pub async fn find_snapshot(repo: &Repository, which: &Which) -> Result<Manifest, VerifyError> {
    let listing = repo.listing().await?;
    let (snaps, damaged) = (&listing.ours, &listing.damaged);
    for d in damaged {
        tracing::warn!(repository = repo.name(), manifest = %d.key, "refused: {}", d.message);
    }
    if let Which::Id(id) = which
        && let Some(d) = damaged
            .iter()
            .find(|d| d.key == crate::storage::keys::manifest_key(id))
    {
        return Err(VerifyError::Refused {
            id: id.clone(),
            reason: d.message.clone(),
        });
    }
    let found = match which {
        Which::Latest => snaps.first(),
        Which::Oldest => snaps.last(),
        // A snapshot of another stack is used when named.
        Which::Id(id) => listing.find(id),
    };
    found.cloned().ok_or_else(|| match which {
        Which::Id(id) => VerifyError::NoSuchSnapshot {
            id: id.clone(),
            repository: repo.name().to_owned(),
        },
        _ => VerifyError::NoSnapshot(repo.name().to_owned()),
    })
}

/// Reads and decrypts a snapshot's facts sidecar.
pub async fn load_facts(
    repo: &Repository,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Facts, VerifyError> {
    let f = manifest
        .facts
        .as_ref()
        .ok_or_else(|| VerifyError::NoFacts(manifest.id.clone()))?;
    repo.facts(f, identities).await.map_err(|e| match e {
        crate::repository::facts::FactsError::Storage(e) => VerifyError::FactsStorage(e),
        crate::repository::facts::FactsError::Damaged { path, problem } => {
            VerifyError::Facts { path, problem }
        }
    })
}

/// Restores `manifest` (the sources `patterns` select; all by default) into
/// scratch instances and checks every source against its facts.
pub async fn run(
    config: &Config,
    repo: &Repository,
    identities: Identities,
    runtime: &dyn ScratchRuntime,
    manifest: &Manifest,
    patterns: &[String],
) -> Result<(VerifyReport, Restored), VerifyError> {
    let facts = load_facts(repo, manifest, &identities).await?;
    let matcher = crate::model::selection::matcher(patterns)
        .map_err(|e| VerifyError::Selection(InvalidInput(e.to_string())))?;
    let mut verdicts = failed_at_backup(manifest, matcher.as_ref());
    let choices = plan::choose(
        std::slice::from_ref(manifest),
        &Selector::Snapshot(manifest.id.clone()),
        matcher.as_ref().map(|m| (m, patterns)),
    )
    .or_else(|e| match e {
        // Everything selected failed at backup time: the verdicts say so.
        plan::PlanError::FailedInSnapshot { .. } if !verdicts.is_empty() => Ok(Vec::new()),
        e => Err(e),
    })?;
    let session = Session {
        targets: RestoreTargets::from_config(config),
        repo,
        identities,
        redactor: config.redactor(),
        manifest,
        facts,
    };
    let mut restored = Restored::default();
    if let Some(v) = verify_config(&session, matcher.as_ref()).await {
        verdicts.push(v);
    }
    let (cluster, choices): (Vec<&Choice>, Vec<&Choice>) = choices
        .iter()
        .filter(|c| c.artifact.kind != ArtifactKind::Config)
        .partition(|c| c.artifact.kind == crate::model::manifest::ArtifactKind::PostgresCluster);
    for c in cluster {
        verdicts.push(session.verify_cluster(c).await);
    }
    let (pg, local): (Vec<&Choice>, Vec<&Choice>) = choices
        .into_iter()
        .partition(|c| c.source.starts_with("postgres/"));
    if !pg.is_empty() {
        let found = session
            .verify_postgres(runtime, &pg, matcher.as_ref(), &mut restored)
            .await?;
        verdicts.extend(found);
    }
    for c in local {
        verdicts.push(session.verify_local(runtime, c, &mut restored).await?);
    }
    // By source, kompose-dr's own configuration last (as in the manifest).
    let config = crate::model::source_name::SourceName::CONFIG;
    verdicts.sort_by(|a, b| (a.source == config, &a.source).cmp(&(b.source == config, &b.source)));
    let ok = !verdicts.is_empty() && verdicts.iter().all(|v| v.ok);
    Ok((
        VerifyReport {
            repository: repo.name().to_owned(),
            snapshot: manifest.id.clone(),
            ok,
            sources: verdicts,
        },
        restored,
    ))
}

/// kompose-dr's own configuration (`config`), when the snapshot has it
/// and it is selected: it must decrypt, and its files must be the ones
/// its facts list (path, size, sha256), as `kompose-dr bootstrap` reads it.
async fn verify_config(session: &Session<'_>, matcher: Option<&GlobSet>) -> Option<SourceVerdict> {
    let a = session
        .manifest
        .artifacts
        .iter()
        .find(|a| a.kind == ArtifactKind::Config && a.is_ok())?;
    if matcher.is_some_and(|m| !m.is_match(&a.source)) {
        return None;
    }
    let start = std::time::Instant::now();
    let check = match crate::ops::bootstrap::read_config(
        session.repo,
        session.manifest,
        a,
        &session.identities,
    )
    .await
    {
        Ok(files) => Check::new(
            "config files",
            true,
            format!("{} files decrypt and match their facts", files.len()),
        ),
        Err(e) => Check::new(
            "config files",
            false,
            session.redactor.scrub(&e.to_string()),
        ),
    };
    Some(SourceVerdict::new(
        &a.source,
        start.elapsed().as_secs_f64(),
        vec![check],
    ))
}

/// The verdicts of selected sources that failed at backup time: they
/// cannot be verified.
fn failed_at_backup(manifest: &Manifest, matcher: Option<&GlobSet>) -> Vec<SourceVerdict> {
    manifest
        .artifacts
        .iter()
        .filter(|a| !a.is_ok() && matcher.is_none_or(|m| m.is_match(&a.source)))
        .map(|a| {
            SourceVerdict::new(
                &a.source,
                0.0,
                vec![Check::new(
                    "backed up",
                    false,
                    format!(
                        "the backup of this source failed: {}",
                        a.error.clone().unwrap_or_default()
                    ),
                )],
            )
        })
        .collect()
}

/// What every source's restore and checks share.
struct Session<'a> {
    /// The configured targets; scratch ones replace them per source.
    targets: RestoreTargets,
    repo: &'a Repository,
    identities: Identities,
    redactor: Redactor,
    manifest: &'a Manifest,
    facts: Facts,
}

impl Session<'_> {
    /// Restores the databases into one scratch server of the source's major
    /// version, roles first, and compares their row counts.
    async fn verify_postgres(
        &self,
        runtime: &dyn ScratchRuntime,
        pg_choices: &[&Choice],
        matcher: Option<&GlobSet>,
        restored: &mut Restored,
    ) -> Result<Vec<SourceVerdict>, VerifyError> {
        let major = pg_choices
            .iter()
            .find_map(|c| c.artifact.server_version.as_deref().and_then(server_major))
            .ok_or(VerifyError::NoServerVersion)?;
        let scratch = runtime.postgres(major).await?;
        let pg = scratch.connection();
        restored.postgres = Some(scratch);
        // Never production: only the scratch server is a target.
        let targets = RestoreTargets {
            postgres: Some(pg.clone()),
            redis: None,
            ..self.targets.clone()
        };
        // Roles are needed for ownership even when only databases are selected.
        let globals = plan::choose(
            std::slice::from_ref(self.manifest),
            &Selector::Snapshot(self.manifest.id.clone()),
            None,
        )
        .ok()
        .and_then(|all| all.into_iter().find(|c| c.source == "postgres/globals"));
        // Without the roles, ownership cannot be restored: restore the data
        // without it (the counts are what is verified).
        let no_owner = globals.is_none();
        let mut pg_items: Vec<Choice> = globals.into_iter().collect();
        pg_items.extend(
            pg_choices
                .iter()
                .filter(|c| c.source != "postgres/globals")
                .map(|c| (*c).clone()),
        );
        let mut verdicts = Vec::new();
        for c in pg_items {
            let selected = matcher.is_none_or(|m| m.is_match(&c.source));
            let mut options = RestoreOptions::default_for(&self.manifest.id);
            options.no_owner = no_owner;
            let (seconds, result) = self.restore_one(&targets, &c, options).await;
            if !selected {
                if !result.ok {
                    tracing::warn!(source = %c.source, "roles could not be applied to the scratch server: {}", result.message);
                }
                continue;
            }
            let mut checks = vec![Check::restore(&result)];
            if result.ok && c.source != "postgres/globals" {
                let db = crate::model::selection::source_database(&c.source)
                    .expect("a database's source");
                let facts = self.facts.sources.get(&c.source);
                checks.push(checks::compare_tables(&pg, db, facts).await);
                let ownership = if no_owner {
                    crate::clients::postgres::database::Ownership::Skip
                } else {
                    crate::clients::postgres::database::Ownership::Recorded
                };
                checks.push(checks::compare_database(&pg, db, facts, ownership).await);
            }
            verdicts.push(SourceVerdict::new(&c.source, seconds, checks));
        }
        Ok(verdicts)
    }

    /// Restores Redis or a file into a private directory, and checks it:
    /// Redis must load it with the recorded key counts; an ACME store's
    /// certificates must decode as recorded.
    async fn verify_local(
        &self,
        runtime: &dyn ScratchRuntime,
        c: &Choice,
        restored: &mut Restored,
    ) -> Result<SourceVerdict, VerifyError> {
        let dir = runtime.tempdir()?;
        let target = match c.artifact.kind {
            ArtifactKind::File => dir.path().join(c.source.trim_start_matches("files/")),
            ArtifactKind::Directory => dir.path().join("directory"),
            _ => dir.path().join("redis-data"),
        };
        let mut options = RestoreOptions::default_for(&self.manifest.id);
        options.to = Some(target.clone());
        // Never production: no configured server is a target.
        let targets = RestoreTargets {
            postgres: None,
            redis: None,
            ..self.targets.clone()
        };
        let (seconds, result) = self.restore_one(&targets, c, options).await;
        let mut checks = vec![Check::restore(&result)];
        let facts = self.facts.sources.get(&c.source);
        if result.ok {
            match c.artifact.kind {
                ArtifactKind::File => {
                    checks.extend(checks::check_file(&target, facts));
                    restored.files.insert(c.source.clone(), target);
                }
                ArtifactKind::Directory => {
                    let (t, f) = (target.clone(), facts.cloned());
                    let found = tokio::task::spawn_blocking(move || {
                        checks::check_directory(&t, f.as_ref())
                    })
                    .await
                    .unwrap_or_else(|e| {
                        vec![Check::new("files", false, format!("the check failed: {e}"))]
                    });
                    checks.extend(found);
                    restored.files.insert(c.source.clone(), target);
                }
                kind => {
                    let aof = kind == ArtifactKind::RedisAof;
                    // Counted before Redis sees the files: what it must load.
                    let t = target.clone();
                    let file = tokio::task::spawn_blocking(move || {
                        crate::sources::redis::count_restored(&t, aof)
                            .map_err(checks::Uncounted::from)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.into()));
                    let started = chrono::Utc::now().timestamp_millis();
                    match runtime.redis(&target, aof).await {
                        Ok(r) => {
                            let cfg = r.connection();
                            restored.redis = Some(r);
                            checks
                                .push(checks::compare_keys(&cfg, facts, file, started, aof).await);
                        }
                        Err(e) => checks.push(Check::new("redis loads", false, e.to_string())),
                    }
                }
            }
        }
        restored.dirs.push(dir);
        Ok(SourceVerdict::new(&c.source, seconds, checks))
    }

    /// A restore context into `targets`, without progress bars; verify
    /// runs under `interruptible`, which drops it whole, so nothing cancels
    /// it from inside.
    fn context<'o>(
        &self,
        targets: &RestoreTargets,
        options: &'o RestoreOptions,
    ) -> RestoreContext<'o> {
        RestoreContext {
            targets: targets.clone(),
            repository: self.repo.clone(),
            identities: self.identities.clone(),
            options,
            redactor: self.redactor.clone(),
            progress: false,
            cancel: tokio_util::sync::CancellationToken::new(),
            recoveries: Default::default(),
        }
    }

    /// A base backup: recovered in scratch to its consistent end, started,
    /// its databases listed, shut down cleanly.
    async fn verify_cluster(&self, c: &Choice) -> SourceVerdict {
        let start = std::time::Instant::now();
        let options = RestoreOptions::default_for(&self.manifest.id);
        let ctx = self.context(&self.targets, &options);
        let result = async {
            let chosen = crate::ops::restore::plan(&crate::ops::restore::Request {
                repository: self.repo,
                snapshots: std::slice::from_ref(self.manifest),
                sources: std::slice::from_ref(&c.source),
                options: &options,
            })
            .await?;
            let recovery = chosen
                .first()
                .and_then(|c| c.recovery.as_deref())
                .ok_or(RestoreRunError::NoRecovery("no recovery could be planned"))?;
            Ok::<_, RestoreRunError>(restore::postgres::pitr::check_recovery(&ctx, recovery).await?)
        }
        .await;
        let check = match result {
            Ok(dbs) => Check::new(
                "recovers",
                true,
                format!(
                    "recovered to consistency and shut down cleanly; databases: {}",
                    dbs.join(", ")
                ),
            ),
            Err(e) => Check::new("recovers", false, self.redactor.scrub(&e.to_string())),
        };
        SourceVerdict::new(&c.source, start.elapsed().as_secs_f64(), vec![check])
    }

    /// Restores one choice into `targets` through [`crate::ops::restore`]:
    /// the seconds it took and what became of it.
    async fn restore_one(
        &self,
        targets: &RestoreTargets,
        choice: &Choice,
        options: RestoreOptions,
    ) -> (f64, Single) {
        let start = std::time::Instant::now();
        let ctx = self.context(targets, &options);
        let result = crate::ops::restore::restore_one(&ctx, choice).await;
        (start.elapsed().as_secs_f64(), result)
    }
}

/// `15` from `15.4 (Debian 15.4-1)`.
pub fn server_major(version: &str) -> Option<u32> {
    version.split(['.', ' ']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_major_is_parsed() {
        assert_eq!(server_major("15.4 (Debian 15.4-1.pgdg120+1)"), Some(15));
        assert_eq!(server_major("16.1"), Some(16));
    }
}
