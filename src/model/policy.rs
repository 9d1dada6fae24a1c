//! Policies (`policies_dir/*.toml`, docs/DESIGN.md §6b): what to back up, where,
//! when, and how long to keep it.
//!
//! ```toml
//! name = "nightly"
//! schedule = "0 0 3 * * *"   # cron with a seconds field: sec min hour day month weekday
//! timezone = "Europe/Berlin" # optional; default: the configured or local zone
//! sources = ["postgres/*", "redis", "files/*"]
//! repositories = ["local", "offsite"]
//!
//! backfill = true          # optional: fill in what a repository missed
//!
//! [retention]
//! keep_daily = 14
//! ```

use crate::error::InvalidInput;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::retention::Retention;
use crate::model::schedule::Schedule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    schedule: String,
    timezone: Option<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    backfill: bool,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name (`backup --policy NAME`; recorded in manifests).
    pub name: String,
    /// When it runs, parsed once when the policy is loaded.
    pub schedule: Schedule,
    /// The schedule as written; the same text as `schedule.as_str()`, kept
    /// as a field for the callers that read it so.
    pub schedule_text: String,
    /// The time zone of the schedule and of retention's calendar buckets.
    pub timezone: Option<chrono_tz::Tz>,
    /// Sources (names or globs); empty means all.
    pub sources: Vec<String>,
    /// Repositories by name; empty means all.
    pub repositories: Vec<String>,
    /// How long its snapshots are kept.
    pub retention: Retention,
    /// The file it came from.
    pub path: PathBuf,
    /// After its backup, copy its snapshots that one of its repositories
    /// lacks from one that has them (`backfill = true`).
    pub backfill: bool,
}

impl Policy {
    /// Reads and validates a policy file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Policy, InvalidInput> {
        Policy::parse_file(path)
    }

    fn parse_file(path: &Path) -> Result<Policy, InvalidInput> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InvalidInput(format!("policy {}: cannot read it: {e}", path.display())))?;
        let raw: RawPolicy = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            InvalidInput(format!(
                "policy {}{}: {}",
                path.display(),
                line.map(|l| format!(" line {l}")).unwrap_or_default(),
                e.message().trim()
            ))
        })?;
        let at = |msg: String| InvalidInput(format!("policy {}: {msg}", path.display()));
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at(format!(
                "name `{}`: use letters, digits, '-', '_' or '.'",
                raw.name
            )));
        }
        let schedule: Schedule = raw.schedule.parse().map_err(|e| {
            at(format!(
                "schedule `{}` is not a cron expression ({e}); it has a seconds field first: \"0 0 3 * * *\" is 03:00:00 daily",
                raw.schedule
            ))
        })?;
        let timezone = raw
            .timezone
            .as_deref()
            .map(crate::model::time::parse_timezone)
            .transpose()
            .map_err(|e| at(e.0))?;
        crate::model::selection::matcher(&raw.sources).map_err(|e| at(e.0))?;
        Ok(Policy {
            name: raw.name,
            schedule,
            schedule_text: raw.schedule,
            timezone,
            sources: raw.sources,
            repositories: raw.repositories,
            retention: raw.retention,
            path: path.to_owned(),
            backfill: raw.backfill,
        })
    }

    /// Every policy in `dir` (none if it does not exist), sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, InvalidInput> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(InvalidInput(format!(
                    "cannot read policies_dir {}: {e}",
                    dir.display()
                )));
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let policies: Vec<Policy> = paths
            .iter()
            .map(|p| Policy::load(p))
            .collect::<Result<_, _>>()?;
        for (i, p) in policies.iter().enumerate() {
            if policies[..i].iter().any(|q| q.name == p.name) {
                return Err(InvalidInput(format!(
                    "policy name `{}` is used twice in {}",
                    p.name,
                    dir.display()
                )));
            }
        }
        Ok(policies)
    }
}
