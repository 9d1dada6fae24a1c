//! The file as a whole: its top-level table, the few top-level keys that
//! belong to no section (directories, the time zone), and the order in which
//! the sections are validated.
//!
//! Validation stops at the first error, so that order is part of the
//! behaviour: a file with two mistakes reports the one in the section
//! validated first. [`Cx::validate`] therefore lists the sections in one
//! place, one validator call each.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::agent::RawAgent;
use super::archive::{RawCompression, RawEncryption};
use super::directories::RawDirectory;
use super::docker::RawDocker;
use super::files::RawFile;
use super::metrics::RawMetrics;
use super::mqtt::RawMqtt;
use super::notify::{RawHealthchecks, RawNotify};
use super::postgres::RawPostgres;
use super::redis::RawRedis;
use super::repository::RawRepository;
use super::scratch::RawScratch;
use super::signing::RawSigning;
use super::timeouts::RawTimeouts;
use super::{Config, ConfigError, Cx};
use crate::model::retention::Retention;

/// The top-level table, as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    repository: Vec<RawRepository>,
    encryption: Option<RawEncryption>,
    #[serde(default)]
    compression: RawCompression,
    postgres: Option<RawPostgres>,
    redis: Option<RawRedis>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    directories: Vec<RawDirectory>,
    mqtt: Option<RawMqtt>,
    metrics: Option<RawMetrics>,
    scratch: Option<RawScratch>,
    docker: Option<RawDocker>,
    signing: Option<RawSigning>,
    env_file: Option<Spanned<String>>,
    drills_dir: Option<Spanned<String>>,
    reports_dir: Option<Spanned<String>>,
    policies_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    retention: Retention,
    prune_schedule: Option<Spanned<String>>,
    drill_schedule: Option<Spanned<String>>,
    agent: Option<RawAgent>,
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    notify: Vec<RawNotify>,
    healthchecks: Option<RawHealthchecks>,
}

impl RawConfig {
    /// The `env_file` key, read before anything else is expanded.
    pub(super) fn env_file(&self) -> &Option<Spanned<String>> {
        &self.env_file
    }
}

/// The sources' `stall_timeout` keys: the source name each applies to,
/// the dotted key, the value.
fn stall_timeouts(raw: &RawConfig) -> Vec<(String, String, &Spanned<String>)> {
    let mut out = Vec::new();
    if let Some(v) = raw.postgres.as_ref().and_then(|p| p.stall_timeout()) {
        out.push(("postgres".into(), "postgres.stall_timeout".into(), v));
    }
    if let Some(v) = raw.redis.as_ref().and_then(|r| r.stall_timeout()) {
        out.push(("redis".into(), "redis.stall_timeout".into(), v));
    }
    for (i, f) in raw.files.iter().enumerate() {
        if let Some((name, v)) = f.stall_timeout() {
            out.push((
                format!("files/{name}"),
                format!("files[{i}].stall_timeout"),
                v,
            ));
        }
    }
    for (i, d) in raw.directories.iter().enumerate() {
        if let Some((name, v)) = d.stall_timeout() {
            out.push((
                format!("directories/{name}"),
                format!("directories[{i}].stall_timeout"),
                v,
            ));
        }
    }
    out
}

/// Where this host keeps its state when `state_dir` is not set:
/// `KOMPOSE_DR_STATE_DIR`, else the units' `StateDirectory=`.
fn default_state_dir() -> String {
    std::env::var("KOMPOSE_DR_STATE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned())
}

/// The default state directory (the units' `StateDirectory=kompose-dr`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kompose-dr";

/// The folder of the state directory that holds, per repository, what
/// this host committed there.
pub const SEEN_DIR: &str = "repositories";

impl Cx<'_> {
    /// Validates every section in file order and assembles the [`Config`].
    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // The engine comes first: the sections that name containers
        // refer to it.
        let docker = self.docker(raw.docker.as_ref())?;
        let trust = self.signing(raw.signing.as_ref())?;
        let state_dir = self.dir(&raw.state_dir, "state_dir", &default_state_dir())?;
        let mut repositories = self.repositories(&raw.repository)?;
        for r in &mut repositories {
            r.trust = trust.clone();
            r.trust.seen_dir = Some(state_dir.join(SEEN_DIR));
        }
        // Fields are evaluated in the order written: keep it the order in
        // which errors have always been reported.
        Ok(Config {
            path: self.file().to_owned(),
            signing_key_file: self.signing_key_file(raw.signing.as_ref())?,
            repositories,
            encryption: raw
                .encryption
                .as_ref()
                .map(|e| self.encryption(e))
                .transpose()?,
            compression: self.compression(&raw.compression)?,
            postgres: raw
                .postgres
                .as_ref()
                .map(|p| self.postgres(p, &docker))
                .transpose()?,
            redis: raw
                .redis
                .as_ref()
                .map(|r| self.redis(r, &docker))
                .transpose()?,
            files: self.files(&raw.files)?,
            directories: self.directories(&raw.directories, &docker, raw.docker.is_some())?,
            mqtt: raw
                .mqtt
                .as_ref()
                .map(|m| self.mqtt(m, &docker))
                .transpose()?,
            metrics: raw.metrics.as_ref().map(|m| self.metrics(m)).transpose()?,
            scratch: self.scratch(raw.scratch.as_ref(), &docker)?,
            docker,
            drills_dir: self.dir(
                &raw.drills_dir,
                "drills_dir",
                "/etc/kompose-dr/restore-drills",
            )?,
            reports_dir: self.dir(
                &raw.reports_dir,
                "reports_dir",
                "/var/local/data/backups/reports",
            )?,
            policies_dir: self.dir(
                &raw.policies_dir,
                "policies_dir",
                "/etc/kompose-dr/policies",
            )?,
            state_dir,
            timezone: self.timezone(&raw.timezone)?,
            retention: raw.retention.clone(),
            agent: self.agent(raw.agent.as_ref(), &raw.prune_schedule, &raw.drill_schedule)?,
            timeouts: self.timeouts(raw.timeouts.as_ref(), &stall_timeouts(&raw))?,
            notify: self.notify(&raw.notify)?,
            healthchecks: raw
                .healthchecks
                .as_ref()
                .map(|h| self.healthchecks(h))
                .transpose()?,
            // Last: every validator above has noted the files it read.
            named_files: self.named_files(),
        })
    }

    /// A directory key, or its default when it is not set.
    fn dir(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        match value {
            Some(d) => self.path(d, key),
            None => Ok(PathBuf::from(default)),
        }
    }

    /// The `timezone` key: an IANA zone name, or local time when unset.
    fn timezone(
        &self,
        value: &Option<Spanned<String>>,
    ) -> Result<Option<chrono_tz::Tz>, ConfigError> {
        value
            .as_ref()
            .map(|t| {
                let v = self.string(t, "timezone")?;
                crate::model::time::parse_timezone(&v)
                    .map_err(|e| self.err(t.span(), "timezone", e.0))
            })
            .transpose()
    }
}
