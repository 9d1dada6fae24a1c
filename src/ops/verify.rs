//! `verify`: restore a snapshot into scratch instances and check it against
//! the facts recorded at backup time.
//!
//! Every database is restored into a scratch PostgreSQL of the source's
//! major version (roles first), and its tables and exact row counts must
//! equal those counted in the dump's own snapshot; Redis must load the
//! restored files with the recorded key counts; an acme.json must parse and
//! every certificate decode with the recorded domains and expiry (a warning
//! for any expiring within 14 days). The restore itself goes through the
//! same code as `restore` (sha256, age authentication, zstd checksums).
//! Drills reuse [`run`] and keep the scratch instances alive for their own
//! checks through [`Restored`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use crate::model::config::{Config, PostgresConfig, RedisConfig};
use crate::model::facts::{Facts, SourceFacts};
use crate::model::manifest::{ArtifactKind, Manifest};
use crate::model::secret::Redactor;
use crate::repository::Repository;
use crate::restore::plan::{self, Choice, Selector};
use crate::restore::{self, RestoreContext, RestoreOptions};
use crate::scratch::{ScratchPostgres, ScratchRedis, ScratchRuntime};

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
    fn new(source: &str, restore_seconds: f64, checks: Vec<Check>) -> SourceVerdict {
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
        self.postgres
            .as_ref()
            .map(|p| scratch_pg_config(p.as_ref()))
    }

    /// Connection settings for the scratch Redis.
    pub fn redis_config(&self) -> Option<RedisConfig> {
        self.redis.as_ref().map(|r| RedisConfig {
            host: "127.0.0.1".into(),
            port: r.port(),
            username: None,
            password: None,
            data_dir: None,
        })
    }
}

fn scratch_pg_config(p: &dyn ScratchPostgres) -> PostgresConfig {
    PostgresConfig {
        endpoint: p.endpoint(),
        password: None,
        databases: crate::model::config::DatabaseSelection::All,
        globals: true,
        docker_container: None,
        bin_dir: None,
        jobs: std::num::NonZeroUsize::new(1).expect("1 > 0"),
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

/// Finds the snapshot to verify.
pub async fn find_snapshot(repo: &Repository, which: &Which) -> Result<Manifest, String> {
    let (snaps, _) = repo.snapshots().await.map_err(|e| e.to_string())?;
    let found = match which {
        Which::Latest => snaps.first(),
        Which::Oldest => snaps.last(),
        Which::Id(id) => snaps.iter().find(|m| &m.id == id),
    };
    found.cloned().ok_or_else(|| match which {
        Which::Id(id) => format!(
            "no snapshot `{id}` in repository {}: list them with `kompose-dr snapshots`",
            repo.name()
        ),
        _ => format!("repository {} holds no snapshot", repo.name()),
    })
}

/// Reads and decrypts a snapshot's facts sidecar.
pub async fn load_facts(
    repo: &Repository,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Facts, String> {
    let f = manifest.facts.as_ref().ok_or_else(|| {
        format!(
            "snapshot {} has no facts sidecar: it cannot be verified",
            manifest.id
        )
    })?;
    let body = repo
        .backend()
        .get(&f.path)
        .await
        .map_err(|e| format!("facts: {e}"))?;
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&body));
    if sha != f.sha256 || body.len() as u64 != f.stored_bytes {
        return Err(format!(
            "facts ({}): the stored bytes differ from the manifest: the sidecar is damaged",
            f.path
        ));
    }
    let plain = crate::pipeline::decode_all(&body, identities)
        .map_err(|e| format!("facts ({}): cannot decrypt: {e}", f.path))?;
    serde_json::from_slice(&plain).map_err(|e| format!("facts ({}): not readable: {e}", f.path))
}

/// Restores `manifest` (the sources `patterns` select; all by default) into
/// scratch instances and checks every source against its facts.
pub async fn run(
    config: &Config,
    repo: &Repository,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    runtime: &dyn ScratchRuntime,
    manifest: &Manifest,
    patterns: &[String],
) -> Result<(VerifyReport, Restored), String> {
    let facts = load_facts(repo, manifest, &identities).await?;
    let matcher = crate::model::selection::matcher(patterns)?;
    let wanted = |s: &str| matcher.as_ref().is_none_or(|m| m.is_match(s));
    let mut verdicts = Vec::new();
    // Sources that failed at backup time cannot be verified.
    for a in manifest
        .artifacts
        .iter()
        .filter(|a| !a.is_ok() && wanted(&a.source))
    {
        verdicts.push(SourceVerdict::new(
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
        ));
    }
    let choices = plan::choose(
        std::slice::from_ref(manifest),
        &Selector::Snapshot(manifest.id.clone()),
        matcher.as_ref().map(|m| (m, patterns)),
    )
    .or_else(|e| match e {
        // Everything selected failed at backup time: the verdicts say so.
        plan::PlanError::FailedInSnapshot { .. } if !verdicts.is_empty() => Ok(Vec::new()),
        e => Err(e.to_string()),
    })?;
    let mut restored = Restored::default();
    let redactor = Redactor::new(config.secrets());

    // PostgreSQL: one scratch server of the source's major version, roles first.
    let pg_choices: Vec<&Choice> = choices
        .iter()
        .filter(|c| c.source.starts_with("postgres/"))
        .collect();
    if !pg_choices.is_empty() {
        let major = pg_choices
            .iter()
            .find_map(|c| c.artifact.server_version.as_deref().and_then(server_major))
            .ok_or("the manifest records no PostgreSQL server version")?;
        let scratch = runtime.postgres(major).await?;
        let mut scratch_config = config.clone();
        scratch_config.postgres = Some(scratch_pg_config(scratch.as_ref()));
        restored.postgres = Some(scratch);
        // Roles are needed for ownership even when only databases are selected.
        let globals = plan::choose(
            std::slice::from_ref(manifest),
            &Selector::Snapshot(manifest.id.clone()),
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
        for c in pg_items {
            let selected = wanted(&c.source);
            let mut options = RestoreOptions::default_for(&manifest.id);
            options.no_owner = no_owner;
            let (seconds, result) =
                restore_one(&scratch_config, repo, &identities, &redactor, &c, options).await;
            if !selected {
                if let Err(e) = result {
                    tracing::warn!(source = %c.source, "roles could not be applied to the scratch server: {e}");
                }
                continue;
            }
            let mut checks = vec![match &result {
                Ok(m) => Check::new("restore", true, m.clone()),
                Err(e) => Check::new("restore", false, e.clone()),
            }];
            if result.is_ok() && c.source != "postgres/globals" {
                let db = c.source.trim_start_matches("postgres/");
                checks
                    .push(compare_tables(&scratch_config, db, facts.sources.get(&c.source)).await);
            }
            verdicts.push(SourceVerdict::new(&c.source, seconds, checks));
        }
    }

    for c in choices
        .iter()
        .filter(|c| !c.source.starts_with("postgres/"))
    {
        let dir = runtime.tempdir()?;
        let target = match c.artifact.kind {
            ArtifactKind::File => dir.path().join(c.source.trim_start_matches("files/")),
            _ => dir.path().join("redis-data"),
        };
        let mut options = RestoreOptions::default_for(&manifest.id);
        options.to = Some(target.clone());
        let mut local_config = config.clone();
        local_config.redis = None; // never the production Redis
        let (seconds, result) =
            restore_one(&local_config, repo, &identities, &redactor, c, options).await;
        let mut checks = vec![match &result {
            Ok(m) => Check::new("restore", true, m.clone()),
            Err(e) => Check::new("restore", false, e.clone()),
        }];
        if result.is_ok() {
            match c.artifact.kind {
                ArtifactKind::File => {
                    checks.extend(check_file(&target, facts.sources.get(&c.source)));
                    restored.files.insert(c.source.clone(), target);
                }
                kind => match runtime.redis(&target, kind == ArtifactKind::RedisAof).await {
                    Ok(r) => {
                        restored.redis = Some(r);
                        let cfg = restored.redis_config().expect("just set");
                        checks.push(compare_keys(&cfg, facts.sources.get(&c.source)).await);
                    }
                    Err(e) => checks.push(Check::new("redis loads", false, e)),
                },
            }
        }
        restored.dirs.push(dir);
        verdicts.push(SourceVerdict::new(&c.source, seconds, checks));
    }

    verdicts.sort_by(|a, b| a.source.cmp(&b.source));
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

impl RestoreOptions {
    /// Options that restore one snapshot's artifacts as they are.
    pub fn default_for(snapshot: &str) -> RestoreOptions {
        RestoreOptions {
            selector: Selector::Snapshot(snapshot.to_owned()),
            sources: Vec::new(),
            as_name: None,
            to: None,
            target: None,
            replace: false,
            jobs: None,
            no_owner: false,
        }
    }
}

/// `15` from `15.4 (Debian 15.4-1)`.
pub fn server_major(version: &str) -> Option<u32> {
    version.split(['.', ' ']).next()?.parse().ok()
}

async fn restore_one(
    config: &Config,
    repo: &Repository,
    identities: &Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    redactor: &Redactor,
    choice: &Choice,
    options: RestoreOptions,
) -> (f64, Result<String, String>) {
    let start = std::time::Instant::now();
    let ctx = RestoreContext {
        config,
        repository: repo.clone(),
        identities: identities.clone(),
        options: &options,
        redactor: redactor.clone(),
        progress: false,
    };
    let result = match restore::prepare(&ctx, vec![choice.clone()]).await {
        Err(e) => Err(e),
        Ok(items) => match items[0].refused.clone() {
            Some(why) => Err(why),
            None => {
                let r = restore::execute(&ctx, &items).await.remove(0);
                if r.ok { Ok(r.message) } else { Err(r.message) }
            }
        },
    };
    (start.elapsed().as_secs_f64(), result)
}

async fn compare_tables(cfg: &Config, db: &str, facts: Option<&SourceFacts>) -> Check {
    let Some(SourceFacts::Postgres { tables: recorded }) = facts else {
        return Check::new(
            "row counts",
            false,
            "the facts hold no row counts for this database",
        );
    };
    let pg = cfg.postgres.as_ref().expect("scratch postgres");
    let restored = match crate::sources::postgres::connect(pg, db).await {
        Ok(client) => crate::sources::postgres::count_rows(&client, db).await,
        Err(e) => Err(e),
    };
    let restored = match restored {
        Ok(r) => r,
        Err(e) => return Check::new("row counts", false, e),
    };
    let problems = table_differences(recorded, &restored);
    if problems.is_empty() {
        Check::new(
            "row counts",
            true,
            format!(
                "{} tables, {} rows, as recorded",
                restored.len(),
                restored.values().sum::<u64>()
            ),
        )
    } else {
        Check::new("row counts", false, problems.join("; "))
    }
}

/// What differs between the recorded and the restored row counts.
pub fn table_differences(
    recorded: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (t, n) in recorded {
        match restored.get(t) {
            None => problems.push(format!("table {t} is missing ({n} rows recorded)")),
            Some(m) if m != n => problems.push(format!("table {t} has {m} rows, {n} recorded")),
            Some(_) => {}
        }
    }
    for t in restored.keys().filter(|t| !recorded.contains_key(*t)) {
        problems.push(format!("table {t} was not recorded at backup time"));
    }
    problems
}

async fn compare_keys(cfg: &RedisConfig, facts: Option<&SourceFacts>) -> Check {
    let Some(SourceFacts::Redis { keys: recorded }) = facts else {
        return Check::new(
            "key counts",
            false,
            "the facts hold no key counts for Redis",
        );
    };
    let found = async {
        let mut con = crate::sources::redis::connect(cfg).await?;
        let text: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("INFO keyspace: {e}"))?;
        let info = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Ok::<_, String>(crate::sources::redis::parse_keyspace(&info))
    }
    .await;
    match found {
        Err(e) => Check::new("key counts", false, e),
        Ok(found) if &found == recorded => Check::new(
            "key counts",
            true,
            format!(
                "{} keys in {} database(s), as recorded",
                found.values().sum::<u64>(),
                found.len()
            ),
        ),
        Ok(found) => Check::new(
            "key counts",
            false,
            format!("Redis loaded {found:?}, the backup recorded {recorded:?}"),
        ),
    }
}

fn check_file(path: &std::path::Path, facts: Option<&SourceFacts>) -> Vec<Check> {
    let Some(SourceFacts::File {
        certificates: Some(recorded),
    }) = facts
    else {
        return Vec::new();
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            return vec![Check::new(
                "certificates",
                false,
                format!("cannot read the restored file: {e}"),
            )];
        }
    };
    let Some(found) = crate::sources::acme::certificates(&data) else {
        return vec![Check::new(
            "certificates",
            false,
            "the restored file is not an ACME store any more",
        )];
    };
    let mut checks = Vec::new();
    let undecodable: Vec<&str> = found
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.main.as_str())
        .collect();
    let same = found.len() == recorded.len()
        && found
            .iter()
            .zip(recorded)
            .all(|(a, b)| a.main == b.main && a.domains == b.domains && a.not_after == b.not_after);
    checks.push(Check::new(
        "certificates",
        same && undecodable.is_empty(),
        if !undecodable.is_empty() {
            format!(
                "certificates that do not decode: {}",
                undecodable.join(", ")
            )
        } else if same {
            format!(
                "{} certificate(s) decode with the recorded domains and expiry",
                found.len()
            )
        } else {
            "the certificates differ from those recorded at backup time".to_owned()
        },
    ));
    let soon = Utc::now() + chrono::Duration::days(14);
    for c in found
        .iter()
        .filter(|c| c.not_after.is_some_and(|t| t < soon))
    {
        let mut w = Check::new(
            format!("certificate {} expiry", c.main),
            false,
            format!(
                "expires {} (within 14 days)",
                c.not_after.expect("filtered").to_rfc3339()
            ),
        );
        w.warning = true;
        checks.push(w);
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_differences_are_named() {
        let rec: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.b".into(), 1)].into();
        let got: BTreeMap<String, u64> = [("public.a".into(), 2), ("public.c".into(), 0)].into();
        let d = table_differences(&rec, &got);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("public.a has 2 rows, 3 recorded"));
        assert!(d[1].contains("public.b is missing"));
        assert!(d[2].contains("public.c was not recorded"));
        assert!(table_differences(&rec, &rec).is_empty());
    }

    #[test]
    fn server_major_is_parsed() {
        assert_eq!(server_major("15.4 (Debian 15.4-1.pgdg120+1)"), Some(15));
        assert_eq!(server_major("16.1"), Some(16));
    }
}
