//! Choosing what to restore: per source, which artifact of which snapshot.
//!
//! `--snapshot ID|latest` takes the artifacts of one snapshot;
//! `--point-in-time T` (and the default, T = now) takes per source the newest
//! *good* artifact captured at or before T, skipping failed ones and saying
//! so. A time before every good artifact of a source is an error naming the
//! earliest time available — never a silent fallback to something newer.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use globset::GlobSet;
use serde::Serialize;

use crate::error::InvalidInput;
use crate::model::manifest::{Artifact, Manifest};

/// Which snapshot(s) to take artifacts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One snapshot by id.
    Snapshot(String),
    /// The newest snapshot.
    Latest,
    /// Per source, the newest good artifact captured at or before this time.
    PointInTime(DateTime<Utc>),
    /// The newest state there is (`restore` with neither `--snapshot` nor
    /// `--point-in-time`): per source the newest good artifact, and for a
    /// database with archived WAL, its base backup replayed to the end of
    /// the archive (docs/DESIGN.md §11). `at` is when it was asked.
    Newest {
        /// When the restore was asked for (what "behind" is measured from).
        at: DateTime<Utc>,
    },
}

/// One source to restore.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Source name.
    pub source: String,
    /// The snapshot it comes from.
    pub snapshot: String,
    /// The artifact.
    pub artifact: Artifact,
    /// Seconds between `captured_at` and the requested time (point in time).
    pub distance_seconds: Option<i64>,
    /// Newer snapshots in which this source failed and was skipped.
    pub skipped_failed: Vec<String>,
    /// The snapshot's facts sidecar (what the restore sets and checks
    /// beyond the archive: a database's own properties).
    #[serde(skip)]
    pub facts: Option<crate::model::manifest::StoredObject>,
    /// The path through a base backup and archived WAL, when the database
    /// (or the cluster) is recovered to a point in time rather than taken
    /// from a dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Box<Recovery>>,
    /// Why the plan took the path it did, when that needs saying (a dump
    /// because the time is before the first base backup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_note: Option<String>,
}

/// A recovery from a base backup and the archived WAL (docs/DESIGN.md §11).
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// The snapshot holding the base backup.
    pub base_snapshot: String,
    /// When the base backup was consistent.
    pub base_captured_at: Option<DateTime<Utc>>,
    /// The time recovered to (None: the base backup's own end, or with
    /// `newest` the end of the archived WAL).
    pub target: Option<DateTime<Utc>>,
    /// Replay every archived WAL file: the newest state the archive holds.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub newest: bool,
    /// The first WAL file recovery reads.
    pub first_wal: Option<String>,
    /// The last WAL segment recovery reads.
    pub last_wal: Option<String>,
    /// How many WAL files are fetched (segments and timeline histories).
    pub wal_files: usize,
    /// How far the archive covers (the newest commit it holds, server time).
    pub covered_until: Option<DateTime<Utc>>,
    /// The base backup.
    #[serde(skip)]
    pub base: Artifact,
    /// Where it lies in the log.
    #[serde(skip)]
    pub position: crate::model::wal::BasePosition,
    /// The WAL files to fetch, in order.
    #[serde(skip)]
    pub records: Vec<crate::model::wal::WalRecord>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The repository has no snapshot at all.
    #[error("the repository holds no snapshot")]
    Empty,
    /// `--snapshot ID` names no snapshot.
    #[error("no snapshot `{0}`: list them with `kompose-dr snapshots`")]
    NoSuchSnapshot(String),
    /// A source selected explicitly failed in the chosen snapshot.
    #[error(
        "{name} failed in snapshot {snapshot} ({error}): choose another with --snapshot, or use --point-in-time to take its newest good copy"
    )]
    FailedInSnapshot {
        /// Source.
        name: String,
        /// Snapshot.
        snapshot: String,
        /// The recorded error.
        error: String,
    },
    /// The point in time is before every good artifact of a source.
    #[error(
        "{name} has no good backup at or before {requested}; the earliest available is {earliest} (snapshot {snapshot})"
    )]
    TooEarly {
        /// Source.
        name: String,
        /// Requested time.
        requested: String,
        /// Earliest good captured_at.
        earliest: String,
        /// Its snapshot.
        snapshot: String,
    },
    /// A source has no good artifact at all.
    #[error("{0} has no good backup in this repository")]
    NeverGood(String),
    /// `--source` selected nothing.
    #[error("--source {0} matches no source in the chosen snapshot(s); available: {1}")]
    NoMatch(String, String),
}

impl crate::error::Classify for PlanError {
    /// A snapshot or source that is not there, or one selected by name that
    /// failed, asks the operator to choose again; an empty repository, or a
    /// time before every good backup, is a failure of what is stored.
    fn class(&self) -> crate::error::Class {
        match self {
            PlanError::NoSuchSnapshot(_)
            | PlanError::NoMatch(..)
            | PlanError::FailedInSnapshot { .. } => crate::error::Class::Usage,
            PlanError::Empty | PlanError::TooEarly { .. } | PlanError::NeverGood(_) => {
                crate::error::Class::Failure
            }
        }
    }
}

/// Parses `--point-in-time`: RFC 3339 (`2026-11-27T03:00:00Z`) or
/// `YYYY-MM-DD HH:MM[:SS]` in local time.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, InvalidInput> {
    parse_time_in(s, &Local)
}

/// [`parse_time`] in a given time zone (for tests).
pub fn parse_time_in<Tz: TimeZone>(s: &str, tz: &Tz) -> Result<DateTime<Utc>, InvalidInput> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .ok_or_else(|| {
            InvalidInput(format!("`{s}` is not a time: write 2026-11-27T03:00:00Z (RFC 3339) or \"2026-11-27 03:00\" (local time)"))
        })?;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(..) => Err(InvalidInput(format!(
            "`{s}` happens twice in local time (a daylight-saving change): write it in RFC 3339 with an offset"
        ))),
        chrono::LocalResult::None => Err(InvalidInput(format!(
            "`{s}` does not exist in local time (a daylight-saving change): write it in RFC 3339 with an offset"
        ))),
    }
}

/// Chooses the artifacts to restore. `snapshots` is newest first;
/// `sources` filters by name (None: every source).
pub fn choose(
    snapshots: &[Manifest],
    selector: &Selector,
    sources: Option<(&GlobSet, &[String])>,
) -> Result<Vec<Choice>, PlanError> {
    if snapshots.is_empty() {
        return Err(PlanError::Empty);
    }
    let mut out = match selector {
        Selector::Snapshot(id) => {
            let m = snapshots
                .iter()
                .find(|m| &m.id == id)
                .ok_or_else(|| PlanError::NoSuchSnapshot(id.clone()))?;
            choose_in(m, sources)?
        }
        Selector::Latest => choose_in(&snapshots[0], sources)?,
        Selector::PointInTime(t) | Selector::Newest { at: t } => choose_at(snapshots, *t, sources)?,
    };
    // Roles first, then databases, Redis, files.
    out.sort_by_key(|c| (rank(&c.source), c.source.clone()));
    Ok(out)
}

/// The good artifacts of one snapshot. A source that failed in it is
/// skipped, or an error when it was selected by name.
fn choose_in(
    m: &Manifest,
    sources: Option<(&GlobSet, &[String])>,
) -> Result<Vec<Choice>, PlanError> {
    let wanted = |name: &str| wanted_source(name, sources);
    let mut out = Vec::new();
    for a in m.artifacts.iter().filter(|a| wanted(&a.source)) {
        if a.is_ok() {
            out.push(Choice {
                facts: m.facts.clone(),
                source: a.source.clone(),
                snapshot: m.id.clone(),
                artifact: a.clone(),
                distance_seconds: None,
                skipped_failed: Vec::new(),
                recovery: None,
                path_note: None,
            });
        } else if sources.is_some() {
            return Err(PlanError::FailedInSnapshot {
                name: a.source.clone(),
                snapshot: m.id.clone(),
                error: a.error.clone().unwrap_or_default(),
            });
        } else {
            tracing::warn!(source = %a.source, snapshot = %m.id, "skipping a source that failed in this snapshot");
        }
    }
    check_patterns(&out, sources, m.artifacts.iter().map(|a| a.source.as_str()))?;
    Ok(out)
}

/// Per source, the newest good artifact captured at or before `t`.
fn choose_at(
    snapshots: &[Manifest],
    t: DateTime<Utc>,
    sources: Option<(&GlobSet, &[String])>,
) -> Result<Vec<Choice>, PlanError> {
    let wanted = |name: &str| wanted_source(name, sources);
    let mut names: Vec<&str> = snapshots
        .iter()
        .flat_map(|m| m.artifacts.iter().map(|a| a.source.as_str()))
        .filter(|n| wanted(n))
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        match choose_source_at(snapshots, name, t) {
            Ok(c) => out.push(c),
            Err(None) if sources.is_some() => return Err(PlanError::NeverGood(name.to_owned())),
            Err(None) => {
                tracing::warn!(source = name, "skipping a source that has no good backup");
            }
            Err(Some(e)) => return Err(e),
        }
    }
    check_patterns(
        &out,
        sources,
        snapshots
            .iter()
            .flat_map(|m| m.artifacts.iter().map(|a| a.source.as_str())),
    )?;
    Ok(out)
}

/// Source `name`'s newest good artifact captured at or before `t`, noting
/// the newer failed ones skipped. `Err(None)`: it has no good artifact at
/// all; `Err(Some(TooEarly))`: only newer ones.
fn choose_source_at(
    snapshots: &[Manifest],
    name: &str,
    t: DateTime<Utc>,
) -> Result<Choice, Option<PlanError>> {
    let mut skipped = Vec::new();
    let mut chosen = None;
    let mut earliest: Option<(&Manifest, &Artifact)> = None;
    // This source's artifacts, newest capture first.
    let mut history: Vec<(&Manifest, &Artifact, DateTime<Utc>)> = snapshots
        .iter()
        .filter_map(|m| {
            let a = m.artifacts.iter().find(|a| a.source == name)?;
            Some((m, a, a.captured_at.unwrap_or(m.started_at)))
        })
        .collect();
    history.sort_by_key(|x| std::cmp::Reverse(x.2));
    for (m, a, at) in history {
        if a.is_ok() {
            earliest = Some((m, a));
        }
        if chosen.is_some() || at > t {
            continue;
        }
        if a.is_ok() {
            chosen = Some((m, a, at));
        } else {
            skipped.push(m.id.clone());
        }
    }
    match (chosen, earliest) {
        (Some((m, a, at)), _) => Ok(Choice {
            facts: m.facts.clone(),
            source: name.to_owned(),
            snapshot: m.id.clone(),
            artifact: a.clone(),
            distance_seconds: Some((t - at).num_seconds()),
            skipped_failed: skipped,
            recovery: None,
            path_note: None,
        }),
        (None, Some((m, a))) => Err(Some(PlanError::TooEarly {
            name: name.to_owned(),
            requested: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            earliest: a
                .captured_at
                .unwrap_or(m.started_at)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            snapshot: m.id.clone(),
        })),
        (None, None) => Err(None),
    }
}

/// Whether `name` is selected: kompose-dr's own configuration (`config`)
/// only when a pattern names it exactly (`kompose-dr bootstrap` is what
/// writes it back), every other source when no pattern or a matching one.
fn wanted_source(name: &str, sources: Option<(&GlobSet, &[String])>) -> bool {
    let config = crate::model::source_name::SourceName::CONFIG;
    match sources {
        None => name != config,
        Some((g, patterns)) => {
            g.is_match(name) && (name != config || patterns.iter().any(|p| p == config))
        }
    }
}

fn rank(source: &str) -> u8 {
    match source {
        "postgres/globals" => 0,
        s if s.starts_with("postgres/") => 1,
        "redis" => 2,
        _ => 3,
    }
}

fn check_patterns<'a>(
    chosen: &[Choice],
    sources: Option<(&GlobSet, &[String])>,
    available: impl Iterator<Item = &'a str>,
) -> Result<(), PlanError> {
    let Some((_, patterns)) = sources else {
        return Ok(());
    };
    let mut avail: Vec<&str> = available.collect();
    avail.sort();
    avail.dedup();
    for p in patterns {
        let single = crate::model::selection::matcher(std::slice::from_ref(p))
            .ok()
            .flatten();
        let hit = single.is_some_and(|s| chosen.iter().any(|c| s.is_match(&c.source)));
        if !hit {
            return Err(PlanError::NoMatch(p.clone(), avail.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod memory_tests;
