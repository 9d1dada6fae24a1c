//! Restore drills (design §7): verify plus the drill's own checks, the
//! measured time to restore each source, a report (JSON and Markdown) in
//! `reports_dir`, the `drill/completed` or `drill/failed` event and the
//! drill metrics.
//!
//! A drill file (`restore-drills/*.toml`):
//!
//! ```toml
//! name = "kompose-quarterly"
//! snapshot = "latest"              # or "oldest", or an id
//! sources = ["postgres/*", "redis", "files/*"]
//! # point_in_time = "now-1h"       # PostgreSQL recovered from base backup + WAL
//!                                  # to that moment instead (docs/DESIGN.md §11)
//!
//! [[check]]
//! source = "postgres/linkwarden"
//! sql = 'select count(*) from "Link"'
//! min = 1                          # or: equals = "…", max = …
//! ```
//!
//! A stack drill (`scope = "stack"`, [`stack`]) brings the whole stack up
//! in scratch containers instead, apps included, and measures the RTO:
//!
//! ```toml
//! name = "quarterly-stack"
//! scope = "stack"                  # default "sources"
//! apps = ["link_app", "umami_app"] # cloned from production, waited on until healthy
//! app_timeout = "5m"               # per app (default 5 minutes)
//! # scratch_dir = "/var/local/data/backups/drill-scratch"  # restored files, bind-mounted
//! #                                # into the apps: a path dockerd sees (default: TMPDIR)
//!
//! [[app]]                          # optional: an HTTP check instead of Docker's health
//! name = "link_app"
//! http = "http://link:3000/api/health"   # host: an alias on the drill's network
//! # repository = "offsite"         # default: the first non-local repository
//! ```

mod check;
mod error;
mod report;
pub mod stack;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::model::config::Config;
use crate::ops::restore::RestoreRunError;
use crate::ops::verify::{self, Check, SourceVerdict, Which};
use crate::repository::Repository;
pub use check::{Bound, CertificateLimits, DrillCheck, SqlExpect};
pub use error::DrillError;
pub use report::markdown;

/// A drill file, validated.
#[derive(Debug, Clone)]
pub struct Drill {
    /// Its name (reports and metrics use it).
    pub name: String,
    /// Which snapshot: `latest` (default), `oldest`, or an id.
    pub snapshot: Which,
    /// Sources to restore (names or globs); default every source.
    pub sources: Vec<String>,
    /// The repository to drill (default: the first that answers).
    pub repository: Option<String>,
    /// The drill's own checks.
    pub checks: Vec<DrillCheck>,
    /// Recover PostgreSQL from a base backup and the archived WAL to this
    /// long before the drill starts (`point_in_time = "now-1h"`), instead of
    /// restoring a snapshot's dumps.
    pub point_in_time_ago: Option<std::time::Duration>,
    /// What the drill brings back: each source on its own, or the stack.
    pub scope: Scope,
    /// Stack drills: the app containers cloned and waited on.
    pub apps: Vec<String>,
    /// Stack drills: how long each app may take to become healthy.
    pub app_timeout: std::time::Duration,
    /// Stack drills: apps judged by an HTTP check (a 2xx answer) instead of
    /// Docker's health, by app name.
    pub app_http: Vec<(String, url::Url)>,
    /// Stack drills: where the restored files and directories go (a
    /// private directory is made inside); default the temporary directory.
    /// The engine bind-mounts from it, so it must be the same path for
    /// dockerd (not under a systemd `PrivateTmp`).
    pub scratch_dir: Option<PathBuf>,
}

/// An `[[app]]` table of a drill file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    name: String,
    http: String,
}

/// What a drill brings back (`scope` in the drill file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Each source into its own scratch server, checked (`"sources"`).
    #[default]
    Sources,
    /// The whole stack in scratch containers, apps included (`"stack"`).
    Stack,
}

/// How long an app may take to become healthy when the drill file does
/// not say (`app_timeout`).
pub const DEFAULT_APP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A drill file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillFile {
    name: String,
    #[serde(default = "latest")]
    snapshot: String,
    #[serde(default)]
    sources: Vec<String>,
    repository: Option<String>,
    point_in_time: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    apps: Vec<String>,
    app_timeout: Option<String>,
    #[serde(default, rename = "app")]
    app_checks: Vec<AppFile>,
    scratch_dir: Option<PathBuf>,
    #[serde(default, rename = "check")]
    checks: Vec<check::CheckFile>,
}

fn latest() -> String {
    "latest".into()
}

impl Drill {
    /// The stack drill `kompose-dr drill --stack` runs when no drill file
    /// has `scope = "stack"`: every source of the latest snapshot, no app.
    pub fn stack_default() -> Drill {
        Drill {
            name: "stack".into(),
            snapshot: Which::parse("latest"),
            sources: Vec::new(),
            repository: None,
            checks: Vec::new(),
            point_in_time_ago: None,
            scope: Scope::Stack,
            apps: Vec::new(),
            app_timeout: DEFAULT_APP_TIMEOUT,
            app_http: Vec::new(),
            scratch_dir: None,
        }
    }

    /// Reads and validates a drill file; errors name the file and line, or
    /// the check by its index.
    pub fn load(path: &Path) -> Result<Drill, DrillError> {
        let text = std::fs::read_to_string(path).map_err(|source| DrillError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: DrillFile = toml::from_str(&text).map_err(|e| DrillError::Parse {
            path: path.to_owned(),
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            message: e.message().trim().to_owned(),
        })?;
        Drill::validate(file).map_err(|problem| DrillError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// The drill a file describes, or what is wrong with it (without the
    /// file's name, which [`Drill::load`] adds).
    fn validate(file: DrillFile) -> Result<Drill, InvalidInput> {
        if file.name.is_empty()
            || !file
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(InvalidInput(format!(
                "name `{}`: use letters, digits, '-', '_' or '.'",
                file.name
            )));
        }
        crate::model::selection::matcher(&file.sources)?;
        let (scope, app_timeout, app_http) = stack_keys(&file, file.checks.is_empty())?;
        let checks: Vec<DrillCheck> = file
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.validate(i))
            .collect::<Result<_, _>>()?;
        let point_in_time_ago = match &file.point_in_time {
            None => None,
            Some(p) => Some(
                p.strip_prefix("now-")
                    .and_then(|d| humantime::parse_duration(d.trim()).ok())
                    .ok_or_else(|| {
                        InvalidInput(format!(
                            "point_in_time `{p}`: write now-1h (a duration before the drill starts)"
                        ))
                    })?,
            ),
        };
        Ok(Drill {
            scratch_dir: file.scratch_dir,
            scope,
            app_http,
            apps: file.apps,
            app_timeout,
            point_in_time_ago,
            name: file.name,
            snapshot: Which::parse(&file.snapshot),
            sources: file.sources,
            repository: file.repository,
            checks,
        })
    }
}

/// Apps judged by an HTTP check: app name → URL.
type AppChecks = Vec<(String, url::Url)>;

/// A drill file's stack keys, checked: `scope`, `app_timeout`, the
/// `[[app]]` checks; `apps`, `point_in_time` and `[[check]]` only where
/// they fit; `scratch_dir` absolute.
fn stack_keys(
    file: &DrillFile,
    no_checks: bool,
) -> Result<(Scope, std::time::Duration, AppChecks), InvalidInput> {
    let scope = match file.scope.as_deref() {
        None | Some("sources") => Scope::Sources,
        Some("stack") => Scope::Stack,
        Some(other) => {
            return Err(InvalidInput(format!(
                "scope `{other}`: write \"sources\" (each source on its own) or \"stack\" (the whole stack, apps included)"
            )));
        }
    };
    if scope == Scope::Stack && (file.point_in_time.is_some() || !no_checks) {
        return Err(InvalidInput(
            "a stack drill (scope = \"stack\") judges the stack by its apps' health: \
                 leave out point_in_time and [[check]] (put them in a drill of their own)"
                .into(),
        ));
    }
    if scope != Scope::Stack && !file.apps.is_empty() {
        return Err(InvalidInput(
            "apps: only a stack drill starts apps; add scope = \"stack\"".into(),
        ));
    }
    let app_timeout = match &file.app_timeout {
        None => DEFAULT_APP_TIMEOUT,
        Some(t) => humantime::parse_duration(t.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                InvalidInput(format!("app_timeout `{t}`: write a duration such as 5m"))
            })?,
    };
    let app_http = app_http(&file.apps, &file.app_checks)?;
    if let Some(d) = &file.scratch_dir
        && !d.is_absolute()
    {
        return Err(InvalidInput(format!(
            "scratch_dir `{}`: write an absolute path",
            d.display()
        )));
    }
    Ok((scope, app_timeout, app_http))
}

/// The `[[app]]` HTTP checks: each of an app in `apps`, once, with a
/// plain `http://` URL (a scratch app has no valid certificate).
fn app_http(apps: &[String], checks: &[AppFile]) -> Result<Vec<(String, url::Url)>, InvalidInput> {
    let mut out: Vec<(String, url::Url)> = Vec::new();
    for (i, a) in checks.iter().enumerate() {
        if !apps.contains(&a.name) {
            return Err(InvalidInput(format!(
                "app[{i}].name `{}`: not in apps; list it there",
                a.name
            )));
        }
        if out.iter().any(|(n, _)| *n == a.name) {
            return Err(InvalidInput(format!(
                "app[{i}].name `{}`: a second [[app]] for it",
                a.name
            )));
        }
        let url = url::Url::parse(&a.http)
            .ok()
            .filter(|u| u.scheme() == "http" && u.host_str().is_some())
            .ok_or_else(|| {
                InvalidInput(format!(
                    "app[{i}].http `{}`: write http://ALIAS:PORT/PATH (plain HTTP, the host an alias on the drill's network)",
                    a.http
                ))
            })?;
        out.push((a.name.clone(), url));
    }
    Ok(out)
}

/// The report of one drill run.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Drill name.
    pub drill: String,
    /// Repository drilled.
    pub repository: String,
    /// Snapshot restored.
    pub snapshot: String,
    /// When the snapshot was taken.
    pub snapshot_time: DateTime<Utc>,
    /// Start of the drill.
    pub started_at: DateTime<Utc>,
    /// End of the drill.
    pub finished_at: DateTime<Utc>,
    /// Whether every check held.
    pub ok: bool,
    /// Per source: time to restore and every check.
    pub sources: Vec<SourceVerdict>,
    /// Where the report was written.
    pub report_files: Vec<PathBuf>,
    /// A stack drill's steps, apps, RTO and RPO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<stack::StackReport>,
}

/// The private keys a drill restores with: what the CLI and the agent both
/// load before running drills.
pub fn identities(
    config: &Config,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, DrillError> {
    crate::pipeline::load_identities(config).map_err(DrillError::Key)
}

/// Every drill in `drills_dir` (sorted), or the one file given.
pub fn find(config: &Config, file: Option<&Path>) -> Result<Vec<Drill>, DrillError> {
    if let Some(f) = file {
        return Ok(vec![Drill::load(f)?]);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&config.drills_dir)
        .map_err(|source| DrillError::DrillsDir {
            dir: config.drills_dir.clone(),
            config: config.path.clone(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(DrillError::NoDrills(config.drills_dir.clone()));
    }
    paths.iter().map(|p| Drill::load(p)).collect()
}

/// Runs one drill: restore, check, report, publish, record; between the
/// `[healthchecks] drill_url` start ping and its success or failure ping
/// (a drill that cannot even run pings failure and is told to
/// `[[notify]]`).
pub async fn run(
    config: &Config,
    drill: &Drill,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<DrillReport, DrillError> {
    use crate::events::notify::{Job, Notice, Ping, notify, ping};
    ping(
        config,
        Job::Drill,
        Ping::Start,
        &format!("drill {} started", drill.name),
    )
    .await;
    let result = run_inner(config, drill, identities).await;
    if let Err(e) = &result {
        let message = config
            .redactor()
            .scrub(&format!("drill {}: {e}", drill.name));
        let prefix = config
            .mqtt
            .as_ref()
            .map_or("kompose", |m| m.topic_prefix.as_str());
        let notice = Notice {
            success: false,
            title: format!(
                "kompose-dr drill {} failed on {}",
                drill.name,
                crate::ops::backup::notify::host()
            ),
            message: message.clone(),
            tags: vec!["rotating_light".into(), "drill".into()],
            event: crate::events::event(
                prefix,
                "drill",
                "failed",
                serde_json::json!({ "drill": drill.name, "status": "failed", "error": message }),
            ),
        };
        notify(config, &notice).await;
        ping(config, Job::Drill, Ping::Failure, &message).await;
    }
    result
}

async fn run_inner(
    config: &Config,
    drill: &Drill,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<DrillReport, DrillError> {
    let started_at = Utc::now();
    let repo = match &drill.repository {
        Some(name) => {
            let rc = config
                .repository_named(name)
                .map_err(|e| DrillError::Repository {
                    drill: drill.name.clone(),
                    message: e.to_string(),
                })?;
            Repository::open(rc)
        }
        // The offsite copy: the one left when the host is gone.
        None => {
            Repository::open(stack::default_repository(config).ok_or(DrillError::NoRepository)?)
        }
    };
    if drill.scope == Scope::Stack {
        return stack::run(config, drill, identities, repo, started_at).await;
    }
    if let Some(ago) = drill.point_in_time_ago {
        return point_in_time(config, drill, identities, repo, started_at, ago).await;
    }
    let manifest = verify::find_snapshot(&repo, &drill.snapshot).await?;
    let runtime = crate::scratch::runtime(config);
    let (vr, restored) = verify::run(
        config,
        &repo,
        identities,
        runtime.as_ref(),
        &manifest,
        &drill.sources,
    )
    .await?;
    finish(
        config,
        drill,
        repo.name(),
        &manifest,
        started_at,
        vr.sources,
        restored,
    )
    .await
}

/// Runs the drill's checks against what was restored, writes and
/// publishes the report.
async fn finish(
    config: &Config,
    drill: &Drill,
    repository: &str,
    manifest: &crate::model::manifest::Manifest,
    started_at: DateTime<Utc>,
    mut sources: Vec<SourceVerdict>,
    restored: verify::Restored,
) -> Result<DrillReport, DrillError> {
    for c in &drill.checks {
        let result = c.run(&restored).await;
        match sources.iter_mut().find(|v| v.source == c.source()) {
            Some(v) => {
                v.ok &= result.ok;
                v.checks.push(result);
            }
            None => sources.push(SourceVerdict {
                source: c.source().to_owned(),
                restore_seconds: 0.0,
                ok: false,
                checks: vec![Check::new(
                    c.describe(),
                    false,
                    "this source was not restored by the drill",
                )],
            }),
        }
    }
    drop(restored);
    let ok = !sources.is_empty() && sources.iter().all(|v| v.ok);
    let mut report = DrillReport {
        drill: drill.name.clone(),
        repository: repository.to_owned(),
        snapshot: manifest.id.clone(),
        snapshot_time: manifest.started_at,
        started_at,
        finished_at: Utc::now(),
        ok,
        sources,
        report_files: Vec::new(),
        stack: None,
    };
    report.report_files = report::write_report(&config.reports_dir, &report)?;
    report::publish_and_record(config, &report).await;
    Ok(report)
}

/// A drill to a point in time: PostgreSQL recovered from the newest base
/// backup before `now - ago` and the archived WAL, in a scratch cluster the
/// drill's SQL checks then query.
async fn point_in_time(
    config: &Config,
    drill: &Drill,
    identities: Identities,
    repo: Repository,
    started_at: DateTime<Utc>,
    ago: std::time::Duration,
) -> Result<DrillReport, DrillError> {
    let target = started_at - chrono::Duration::from_std(ago).unwrap_or_default();
    let (snapshots, _) = repo.snapshots().await.map_err(|e| DrillError::Repository {
        drill: drill.name.clone(),
        message: e.to_string(),
    })?;
    let start = std::time::Instant::now();
    let recovery = Recovery {
        config,
        repo: &repo,
        snapshots: &snapshots,
        identities,
        target,
    };
    let outcome = recovery.run().await;
    let seconds = start.elapsed().as_secs_f64();
    let ended = Ended {
        config,
        drill,
        repo: &repo,
        started_at,
        seconds,
    };
    match outcome {
        Ok(recovered) => ended.recovered(recovered, target).await,
        Err(e) => ended.failed(&e, &snapshots).await,
    }
}

/// The private keys archives are decrypted with.
type Identities = Arc<Vec<Box<dyn age::Identity + Send + Sync>>>;

/// A point-in-time recovery of the cluster into scratch.
struct Recovery<'a> {
    config: &'a Config,
    repo: &'a Repository,
    snapshots: &'a [crate::model::manifest::Manifest],
    identities: Identities,
    target: DateTime<Utc>,
}

/// What a point-in-time recovery brought back.
struct Recovered {
    server: crate::scratch::Recovered,
    base: crate::model::manifest::Manifest,
    recovery: Box<crate::restore::plan::Recovery>,
}

impl Recovery<'_> {
    /// Plans the cluster to the target time (the one planning of every
    /// restore) and recovers it in scratch.
    async fn run(&self) -> Result<Recovered, RestoreRunError> {
        let options = crate::restore::RestoreOptions {
            selector: crate::restore::plan::Selector::PointInTime(self.target),
            ..crate::restore::RestoreOptions::default_for("")
        };
        let choices = crate::ops::restore::plan(&crate::ops::restore::Request {
            repository: self.repo,
            snapshots: self.snapshots,
            sources: &["postgres/cluster".to_owned()],
            options: &options,
        })
        .await?;
        let choice = choices
            .into_iter()
            .next()
            .ok_or(RestoreRunError::NoRecovery("no base backup"))?;
        let recovery = choice
            .recovery
            .clone()
            .ok_or(RestoreRunError::NoRecovery("no recovery could be planned"))?;
        let options = crate::restore::RestoreOptions::default_for(&choice.snapshot);
        let ctx = crate::restore::RestoreContext {
            targets: crate::restore::RestoreTargets::from_config(self.config),
            repository: self.repo.clone(),
            identities: self.identities.clone(),
            options: &options,
            redactor: self.config.redactor(),
            progress: false,
            cancel: tokio_util::sync::CancellationToken::new(),
            recoveries: Default::default(),
        };
        let (server, _) = crate::restore::postgres::pitr::recover(&ctx, &recovery, None).await?;
        let base = self
            .snapshots
            .iter()
            .find(|m| m.id == choice.snapshot)
            .cloned()
            .ok_or(RestoreRunError::NoRecovery(
                "the base backup's snapshot is gone",
            ))?;
        Ok(Recovered {
            server,
            base,
            recovery,
        })
    }
}

/// A point-in-time drill whose recovery ended, well or not: its checks and
/// report are next.
struct Ended<'a> {
    config: &'a Config,
    drill: &'a Drill,
    repo: &'a Repository,
    started_at: DateTime<Utc>,
    seconds: f64,
}

impl Ended<'_> {
    /// The cluster recovered: the databases the checks name came back with
    /// it; the drill's checks run against it.
    async fn recovered(
        self,
        r: Recovered,
        target: DateTime<Utc>,
    ) -> Result<DrillReport, DrillError> {
        let mut restored = verify::Restored::default();
        restored.postgres = Some(Box::new(r.server));
        let mut verdicts = vec![SourceVerdict::new(
            "postgres/cluster",
            self.seconds,
            vec![Check::new(
                "recovers to the point in time",
                true,
                format!(
                    "base backup {} + {} WAL file(s), recovered to {}",
                    r.recovery.base_snapshot,
                    r.recovery.wal_files,
                    target.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )],
        )];
        for c in &self.drill.checks {
            let s = c.source();
            if s.starts_with("postgres/") && !verdicts[1..].iter().any(|v| v.source == s) {
                verdicts.push(SourceVerdict::new(
                    s,
                    self.seconds,
                    vec![Check::new("recovered", true, "with the cluster")],
                ));
            }
        }
        let (config, drill, repo) = (self.config, self.drill, self.repo);
        finish(
            config,
            drill,
            repo.name(),
            &r.base,
            self.started_at,
            verdicts,
            restored,
        )
        .await
    }

    /// The recovery failed: the report says why, against the newest
    /// snapshot for want of the base backup's.
    async fn failed(
        self,
        e: &RestoreRunError,
        snapshots: &[crate::model::manifest::Manifest],
    ) -> Result<DrillReport, DrillError> {
        let message = self.config.redactor().scrub(&e.to_string());
        let verdict = SourceVerdict::new(
            "postgres/cluster",
            self.seconds,
            vec![Check::new("recovers to the point in time", false, message)],
        );
        let placeholder = snapshots
            .first()
            .cloned()
            .ok_or_else(|| DrillError::Repository {
                drill: self.drill.name.clone(),
                message: e.to_string(),
            })?;
        let (config, drill, repo) = (self.config, self.drill, self.repo);
        let restored = verify::Restored::default();
        finish(
            config,
            drill,
            repo.name(),
            &placeholder,
            self.started_at,
            vec![verdict],
            restored,
        )
        .await
    }
}

#[cfg(test)]
mod tests;
