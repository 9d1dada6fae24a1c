//! The configuration file (docs/DESIGN.md §3), parsed once and validated into types
//! that cannot be invalid.
//!
//! Parsing happens in two steps. First the TOML is read into `Raw*` structs
//! with `deny_unknown_fields`, keeping the byte span of every value that is
//! validated later. Then [`Config::from_toml`] expands `${VAR}` references,
//! reads secret files, parses URLs, age recipients, addresses and cron
//! schedules, and produces a [`Config`]. Every error names the file, the line
//! and the key, and says how to fix it. Nothing downstream re-parses a string
//! from here.
//!
//! The files of this folder follow the file's sections: each section's file
//! holds its `Raw*` struct (as written), its validated type and the
//! validator that turns one into the other. `document.rs` is the top-level
//! table and the order sections are validated in; `cx.rs` is the context
//! every validator reads values through; `env.rs` expands `${VAR}`.

mod agent;
mod archive;
mod cx;
mod directories;
mod docker;
mod document;
pub mod env;
mod files;
pub mod keyfile;
mod metrics;
mod mqtt;
mod named;
mod notify;
mod postgres;
mod redis;
pub mod repository;
mod scratch;
mod signing;
mod timeouts;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::secret::Secret;
use cx::Cx;
use document::RawConfig;

pub use agent::AgentConfig;
pub use archive::{Compression, Encryption};
pub use directories::{DirectoryConfig, DirectoryLocation, Quiesce};
pub use docker::{ContainerRef, DockerConfig};
pub use files::FileConfig;
pub use metrics::MetricsConfig;
pub use mqtt::MqttConfig;
pub use named::NamedFile;
pub use notify::{DEFAULT_NOTIFY_TIMEOUT, HealthchecksConfig, NotifyConfig, NotifyKind};
pub use postgres::{
    DEFAULT_WAL_SPOOL, DatabaseSelection, PgEndpoint, PostgresConfig, PostgresUrlError, WalConfig,
    parse_postgres_url,
};
pub use redis::RedisConfig;
pub use repository::{
    Location, ObjectLock, ObjectLockMode, RepositoryConfig, S3Config, S3Credentials,
};
pub use scratch::{ScratchConfig, ScratchRuntimeKind};
pub use signing::{BadSecretKey, Trust, parse_secret_key};
pub use timeouts::{DEFAULT_CHILD_EXIT, DEFAULT_CONNECT, DEFAULT_STALL, Timeouts};

/// Where the configuration is read from when neither `--config` nor
/// `KOMPOSE_DR_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kompose-dr/kompose-dr.toml";

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// The dotted key (`postgres.url`), when known.
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Repositories, in configuration order; backup writes to every one.
    pub repositories: Vec<RepositoryConfig>,
    /// Encryption settings; absent only in configurations that never write.
    pub encryption: Option<Encryption>,
    /// `[signing] key_file`, when the signing key is read from one (its
    /// contents are in every repository's [`Trust`]); doctor checks its mode.
    pub signing_key_file: Option<PathBuf>,
    /// The zstd level of every archive (`[compression]`; 3 when absent).
    pub compression: Compression,
    /// The PostgreSQL source, if configured.
    pub postgres: Option<PostgresConfig>,
    /// The Redis source, if configured.
    pub redis: Option<RedisConfig>,
    /// Plain files to back up.
    pub files: Vec<FileConfig>,
    /// Directories and named volumes to back up as tars.
    pub directories: Vec<DirectoryConfig>,
    /// Where events are published, if anywhere.
    pub mqtt: Option<MqttConfig>,
    /// Where metrics are written, if anywhere.
    pub metrics: Option<MetricsConfig>,
    /// How scratch instances for verify and drills run.
    pub scratch: ScratchConfig,
    /// The container engine (`[docker]`).
    pub docker: DockerConfig,
    /// Where drill files are found.
    pub drills_dir: PathBuf,
    /// Where drill reports are written.
    pub reports_dir: PathBuf,
    /// Where policies are found.
    pub policies_dir: PathBuf,
    /// Where this host keeps its own state (`state_dir`; default
    /// `/var/lib/kompose-dr`, or `KOMPOSE_DR_STATE_DIR`): what it committed
    /// to each repository, so that a snapshot deleted from the store shows.
    pub state_dir: PathBuf,
    /// Time zone for retention's calendar buckets (default: local time).
    pub timezone: Option<chrono_tz::Tz>,
    /// Retention of snapshots made without a policy.
    pub retention: crate::model::retention::Retention,
    /// The agent's settings.
    pub agent: AgentConfig,
    /// How long a backup waits for what can hang (`[timeouts]` and the
    /// sources' `stall_timeout`).
    pub timeouts: Timeouts,
    /// Who else is told (`[[notify]]`: Gotify, ntfy, webhooks).
    pub notify: Vec<NotifyConfig>,
    /// The dead-man's switch (`[healthchecks]`), if any.
    pub healthchecks: Option<HealthchecksConfig>,
    /// Every file the configuration read besides itself (secret files, the
    /// signing key, `env_file`, `mqtt.ca_file`), in the order read; never
    /// the age identity. The `config` source carries them.
    pub named_files: Vec<NamedFile>,
}

impl Config {
    /// Accept unsigned snapshots and markers in every repository
    /// (`--allow-unsigned`).
    pub fn allow_unsigned(&mut self) {
        for r in &mut self.repositories {
            r.trust.allow_unsigned = true;
        }
    }

    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "file not found: pass --config FILE or set KOMPOSE_DR_CONFIG (default {DEFAULT_CONFIG_PATH})"
                ),
                _ => format!("cannot read it: {e}"),
            },
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates configuration text; `path` is used for error
    /// messages and to resolve relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cx = Cx::new(text, path);
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: e.span().map(|s| cx.line_of(&s)),
            key: None,
            message: e.message().trim().to_owned(),
        })?;
        cx.load_env_file(raw.env_file())?;
        cx.validate(raw)
    }

    /// The configured repository of that name.
    pub fn repository(&self, name: &str) -> Option<&RepositoryConfig> {
        self.repositories.iter().find(|r| r.name == name)
    }

    /// The configured repository of that name, or a message naming the
    /// ones that are configured.
    pub fn repository_named(
        &self,
        name: &str,
    ) -> Result<&RepositoryConfig, crate::error::InvalidInput> {
        self.repository(name).ok_or_else(|| {
            crate::error::InvalidInput(format!(
                "no repository named `{name}` in {}; configured: {}",
                self.path.display(),
                self.repositories
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// A redactor that scrubs every secret of this configuration
    /// ([`Config::secrets`]) from logs and messages.
    pub fn redactor(&self) -> crate::model::secret::Redactor {
        crate::model::secret::Redactor::new(self.secrets())
    }

    /// Every secret value in the configuration, for log and error scrubbing.
    pub fn secrets(&self) -> Vec<Secret> {
        let mut v = Vec::new();
        if let Some(p) = self.postgres.as_ref().and_then(|p| p.password.clone()) {
            v.push(p);
        }
        if let Some(p) = self.redis.as_ref().and_then(|r| r.password.clone()) {
            v.push(p);
        }
        if let Some(p) = self.mqtt.as_ref().and_then(|m| m.password.clone()) {
            v.push(p);
        }
        v.extend(self.notify.iter().filter_map(|n| n.token.clone()));
        if let Some(hc) = &self.healthchecks {
            for url in [Some(&hc.url), hc.drill_url.as_ref(), hc.prune_url.as_ref()]
                .into_iter()
                .flatten()
            {
                v.push(url.clone());
                // Its uuid alone, wherever a message quotes just the path.
                if let Some(last) = url.expose().rsplit('/').next()
                    && last.len() >= 16
                {
                    v.push(Secret::new(last.to_owned()));
                }
            }
        }
        for r in &self.repositories {
            if let Location::S3(s3) = &r.location
                && let Some(c) = &s3.credentials
            {
                v.push(c.secret_access_key.clone());
            }
        }
        // The signing key's encoded line (the same for every repository).
        if let Some(key) = self
            .repositories
            .first()
            .and_then(|r| r.trust.signing_key.as_ref())
            && let Some(line) = key.expose().lines().nth(1)
        {
            v.push(Secret::new(line.trim().to_owned()));
        }
        v
    }
}

#[cfg(test)]
mod tests;
