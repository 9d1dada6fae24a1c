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
//!
//! [[check]]
//! source = "postgres/linkwarden"
//! sql = 'select count(*) from "Link"'
//! min = 1                          # or: equals = "…", max = …
//! ```

mod check;
mod error;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::config::Config;
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
}

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
    #[serde(default, rename = "check")]
    checks: Vec<check::CheckFile>,
}

fn latest() -> String {
    "latest".into()
}

impl Drill {
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
    fn validate(file: DrillFile) -> Result<Drill, String> {
        if file.name.is_empty()
            || !file
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name `{}`: use letters, digits, '-', '_' or '.'",
                file.name
            ));
        }
        crate::model::selection::matcher(&file.sources).map_err(|e| e.to_string())?;
        let checks = file
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.validate(i))
            .collect::<Result<_, _>>()?;
        Ok(Drill {
            name: file.name,
            snapshot: Which::parse(&file.snapshot),
            sources: file.sources,
            repository: file.repository,
            checks,
        })
    }
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
        let message = crate::model::secret::Redactor::new(config.secrets())
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
        None => Repository::open(
            config
                .repositories
                .first()
                .ok_or(DrillError::NoRepository)?,
        ),
    };
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
    let mut sources = vr.sources;
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
        repository: repo.name().to_owned(),
        snapshot: manifest.id.clone(),
        snapshot_time: manifest.started_at,
        started_at,
        finished_at: Utc::now(),
        ok,
        sources,
        report_files: Vec::new(),
    };
    report.report_files = report::write_report(&config.reports_dir, &report)?;
    report::publish_and_record(config, &report).await;
    Ok(report)
}

#[cfg(test)]
mod tests;
