//! The configuration file (design §3), parsed once and validated into types
//! that cannot be invalid.
//!
//! Parsing happens in two steps. First the TOML is read into `Raw*` structs
//! with `deny_unknown_fields`, keeping the byte span of every value that is
//! validated later. Then [`Config::from_toml`] expands `${VAR}` references,
//! reads secret files, parses URLs and age recipients, and produces a
//! [`Config`]. Every error names the file, the line and the key, and says
//! how to fix it. Nothing downstream re-parses a string from here.

pub mod env;
pub mod repository;

use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::model::secret::Secret;
use env::Vars;
use repository::RawRepository;
pub use repository::{
    Location, ObjectLock, ObjectLockMode, RepositoryConfig, S3Config, S3Credentials,
};

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

// ---------------------------------------------------------------------------
// Raw, as written in the file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    repository: Vec<RawRepository>,
    encryption: Option<RawEncryption>,
    #[serde(default)]
    compression: RawCompression,
    postgres: Option<RawPostgres>,
    redis: Option<RawRedis>,
    #[serde(default)]
    files: Vec<RawFile>,
    mqtt: Option<RawMqtt>,
    metrics: Option<RawMetrics>,
    scratch: Option<RawScratch>,
    env_file: Option<Spanned<String>>,
    drills_dir: Option<Spanned<String>>,
    reports_dir: Option<Spanned<String>>,
    policies_dir: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    retention: crate::model::retention::Retention,
    prune_schedule: Option<Spanned<String>>,
    drill_schedule: Option<Spanned<String>>,
    agent: Option<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    listen: Option<Spanned<String>>,
    catch_up: Option<bool>,
}

/// Settings of the long-running agent.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// Where `/metrics` and `/healthz` are served (`127.0.0.1:9187`).
    pub listen: Option<String>,
    /// Run a policy once at start if its last scheduled run was missed.
    pub catch_up: bool,
    /// When `prune` runs (cron with seconds).
    pub prune_schedule: Option<String>,
    /// When `drill` runs (cron with seconds).
    pub drill_schedule: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScratch {
    runtime: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    postgres_bin: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: Spanned<String>,
    topic_prefix: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    recipients: Spanned<Vec<Spanned<String>>>,
    identity_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    level: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    databases: Option<Spanned<Vec<Spanned<String>>>>,
    globals: Option<bool>,
    docker_container: Option<Spanned<String>>,
    bin_dir: Option<Spanned<String>>,
    jobs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Spanned<String>,
    path: Spanned<String>,
}

// ---------------------------------------------------------------------------
// Validated.

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Repositories, in configuration order; backup writes to every one.
    pub repositories: Vec<RepositoryConfig>,
    /// Encryption settings; absent only in configurations that never write.
    pub encryption: Option<Encryption>,
    /// zstd settings.
    pub compression: Compression,
    /// The PostgreSQL source, if configured.
    pub postgres: Option<PostgresConfig>,
    /// The Redis source, if configured.
    pub redis: Option<RedisConfig>,
    /// Plain files to back up.
    pub files: Vec<FileConfig>,
    /// Where events are published, if anywhere.
    pub mqtt: Option<MqttConfig>,
    /// Where metrics are written, if anywhere.
    pub metrics: Option<MetricsConfig>,
    /// How scratch instances for verify and drills run.
    pub scratch: ScratchConfig,
    /// Where drill files are found.
    pub drills_dir: PathBuf,
    /// Where drill reports are written.
    pub reports_dir: PathBuf,
    /// Where policies are found.
    pub policies_dir: PathBuf,
    /// Time zone for retention's calendar buckets (default: local time).
    pub timezone: Option<chrono_tz::Tz>,
    /// Retention of snapshots made without a policy.
    pub retention: crate::model::retention::Retention,
    /// The agent's settings.
    pub agent: AgentConfig,
}

/// The MQTT broker events go to.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port (1883, or 8883 for mqtts).
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
    /// Topics are `<prefix>/system/<category>/<action>`.
    pub topic_prefix: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<Secret>,
    /// MQTT client id.
    pub client_id: String,
    /// CA certificates (PEM) for TLS instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The most publishing may take, in all.
    pub timeout: std::time::Duration,
}

/// The Prometheus textfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// For node_exporter's textfile collector.
    pub textfile: PathBuf,
}

/// age settings. Backup needs only the recipients (public keys).
#[derive(Clone)]
pub struct Encryption {
    /// Every archive is encrypted to all of these.
    pub recipients: Vec<age::x25519::Recipient>,
    /// The private key, needed only to read archives back.
    pub identity_file: Option<PathBuf>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field(
                "recipients",
                &self
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("identity_file", &self.identity_file)
            .finish()
    }
}

/// zstd settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level, 1..=19.
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { level: 3 }
    }
}

/// Which databases to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSelection {
    /// Every non-template database the user may connect to (`["*"]`).
    All,
    /// Exactly these.
    List(Vec<String>),
}

/// How to reach the PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgEndpoint {
    /// Host name, address, or a unix socket directory (starts with `/`).
    pub host: String,
    /// TCP port (also names the unix socket).
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Database used for discovery and `pg_dumpall`.
    pub maintenance_db: String,
}

/// The PostgreSQL source.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Connection target.
    pub endpoint: PgEndpoint,
    /// Password, if the server asks for one.
    pub password: Option<Secret>,
    /// Which databases.
    pub databases: DatabaseSelection,
    /// Back up roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: bool,
    /// Run pg_dump inside this container with `docker exec`.
    pub docker_container: Option<String>,
    /// Use the client tools from this directory only.
    pub bin_dir: Option<PathBuf>,
    /// Databases dumped at once.
    pub jobs: NonZeroUsize,
}

/// The Redis source.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if the server requires one.
    pub password: Option<Secret>,
    /// The data directory as this host sees it; by default the server's
    /// own `dir` setting (right when both run on one filesystem).
    pub data_dir: Option<PathBuf>,
}

/// How scratch instances for verify and drills run (`[scratch]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchConfig {
    /// The user scratch servers run as when kompose-dr runs as root.
    pub user: String,
    /// Where PostgreSQL server binaries live: `{major}` is replaced
    /// (default `/usr/lib/postgresql/{major}/bin`).
    pub postgres_bin: String,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            user: "postgres".into(),
            postgres_bin: "/usr/lib/postgresql/{major}/bin".into(),
        }
    }
}

/// A plain file to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// Source name is `files/<name>`.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
}

impl Config {
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
        let cx = Cx {
            text,
            file: path,
            vars: Vars::from_env(),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: e.span().map(|s| cx.line_of(&s)),
            key: None,
            message: e.message().trim().to_owned(),
        })?;
        let mut cx = cx;
        if let Some(env_file) = &raw.env_file {
            let p = cx.path(env_file, "env_file")?;
            let text = std::fs::read_to_string(&p).map_err(|e| {
                cx.err(
                    env_file.span(),
                    "env_file",
                    format!("cannot read env file {}: {e}", p.display()),
                )
            })?;
            cx.vars = Vars::from_env()
                .with_env_file_text(&text)
                .map_err(|(line, msg)| {
                    cx.err(
                        env_file.span(),
                        "env_file",
                        format!("{} line {line}: {msg}", p.display()),
                    )
                })?;
        }
        cx.validate(raw)
    }

    /// The configured repository of that name.
    pub fn repository(&self, name: &str) -> Option<&RepositoryConfig> {
        self.repositories.iter().find(|r| r.name == name)
    }

    /// The configured repository of that name, or a message naming the
    /// ones that are configured.
    pub fn repository_named(&self, name: &str) -> Result<&RepositoryConfig, String> {
        self.repository(name).ok_or_else(|| {
            format!(
                "no repository named `{name}` in {}; configured: {}",
                self.path.display(),
                self.repositories
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
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
        for r in &self.repositories {
            if let Location::S3(s3) = &r.location
                && let Some(c) = &s3.credentials
            {
                v.push(c.secret_access_key.clone());
            }
        }
        v
    }
}

/// Validation context: the source text (for line numbers) and variables.
struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
    vars: Vars,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
}

impl Cx<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line_of(&span)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// The value with `${VAR}` references expanded.
    fn string(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        self.vars
            .expand(v.get_ref())
            .map_err(|e| self.err(v.span(), key, e.to_string()))
    }

    /// A path, expanded, relative paths taken from the config file's folder.
    fn path(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            return Err(self.err(v.span(), key, "empty path"));
        }
        let p = PathBuf::from(s);
        Ok(if p.is_relative() {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        } else {
            p
        })
    }

    /// A secret from exactly one of `password`, `password_file`,
    /// `password_credential`.
    fn secret(
        &self,
        section: &str,
        inline: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        credential: &Option<Spanned<String>>,
    ) -> Result<Option<Secret>, ConfigError> {
        let given = [inline.is_some(), file.is_some(), credential.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            let span = [inline, file, credential]
                .into_iter()
                .flatten()
                .nth(1)
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(self.err(
                span,
                &format!("{section}.password"),
                "set only one of password, password_file, password_credential",
            ));
        }
        if let Some(v) = inline {
            // An empty value (`${REDIS_PASSWORD:-}`) means no password.
            let value = self.string(v, &format!("{section}.password"))?;
            return Ok((!value.is_empty()).then(|| Secret::new(value)));
        }
        if let Some(v) = file {
            let key = format!("{section}.password_file");
            let p = self.path(v, &key)?;
            let s = env::read_secret_file(&p).map_err(|e| {
                self.err(v.span(), &key, format!("cannot read {}: {e}", p.display()))
            })?;
            return Ok(Some(Secret::new(s)));
        }
        if let Some(v) = credential {
            let key = format!("{section}.password_credential");
            let name = self.string(v, &key)?;
            let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                return Err(self.err(
                    v.span(),
                    &key,
                    "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential= or use password_file",
                ));
            };
            let p = Path::new(&dir).join(&name);
            let s = env::read_secret_file(&p).map_err(|e| {
                self.err(
                    v.span(),
                    &key,
                    format!("cannot read credential {name} ({}): {e}", p.display()),
                )
            })?;
            return Ok(Some(Secret::new(s)));
        }
        Ok(None)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut repositories = Vec::new();
        for (i, r) in raw.repository.iter().enumerate() {
            let rc = self.repository(i, r)?;
            if repositories
                .iter()
                .any(|x: &RepositoryConfig| x.name == rc.name)
            {
                return Err(self.err(
                    r.name_span(),
                    &format!("repository[{i}].name"),
                    format!("repository `{}` is defined twice", rc.name),
                ));
            }
            repositories.push(rc);
        }

        let encryption = match &raw.encryption {
            None => None,
            Some(e) => {
                if e.recipients.get_ref().is_empty() {
                    return Err(self.err(
                        e.recipients.span(),
                        "encryption.recipients",
                        "at least one age recipient (age1…) is needed; create a key with `kompose-dr init --generate-key FILE`",
                    ));
                }
                let mut recipients = Vec::new();
                for (i, r) in e.recipients.get_ref().iter().enumerate() {
                    let key = format!("encryption.recipients[{i}]");
                    let s = self.string(r, &key)?;
                    let parsed: age::x25519::Recipient = s.trim().parse().map_err(|_| {
                        self.err(
                            r.span(),
                            &key,
                            "not an age X25519 recipient (a public key starting with age1…); \
                             print one with `age-keygen -y IDENTITY` or create a key with `kompose-dr init --generate-key FILE`",
                        )
                    })?;
                    recipients.push(parsed);
                }
                let identity_file = e
                    .identity_file
                    .as_ref()
                    .map(|p| self.path(p, "encryption.identity_file"))
                    .transpose()?;
                Some(Encryption {
                    recipients,
                    identity_file,
                })
            }
        };

        let compression = match &raw.compression.level {
            None => Compression::default(),
            Some(l) => {
                let level = *l.get_ref();
                if !(1..=19).contains(&level) {
                    return Err(self.err(
                        l.span(),
                        "compression.level",
                        format!(
                            "zstd level {level} is out of range: use 1..=19 (3 is a good default)"
                        ),
                    ));
                }
                Compression {
                    level: level as i32,
                }
            }
        };

        let postgres = raw
            .postgres
            .as_ref()
            .map(|p| self.postgres(p))
            .transpose()?;
        let redis = raw.redis.as_ref().map(|r| self.redis(r)).transpose()?;

        let mut files: Vec<FileConfig> = Vec::new();
        for (i, f) in raw.files.iter().enumerate() {
            let key = format!("files[{i}]");
            let name = self.string(&f.name, &format!("{key}.name"))?;
            if !is_name(&name) {
                return Err(self.err(
                    f.name.span(),
                    &format!("{key}.name"),
                    "use letters, digits, '-', '_' or '.'",
                ));
            }
            if files.iter().any(|x| x.name == name) {
                return Err(self.err(
                    f.name.span(),
                    &format!("{key}.name"),
                    format!("files `{name}` is defined twice"),
                ));
            }
            let path = PathBuf::from(self.string(&f.path, &format!("{key}.path"))?);
            if !path.is_absolute() {
                return Err(self.err(
                    f.path.span(),
                    &format!("{key}.path"),
                    "use an absolute path",
                ));
            }
            files.push(FileConfig { name, path });
        }

        let mqtt = raw.mqtt.as_ref().map(|m| self.mqtt(m)).transpose()?;
        let metrics = raw
            .metrics
            .as_ref()
            .map(|m| {
                Ok::<_, ConfigError>(MetricsConfig {
                    textfile: self.path(&m.textfile, "metrics.textfile")?,
                })
            })
            .transpose()?;

        let mut scratch = ScratchConfig::default();
        if let Some(sc) = &raw.scratch {
            if let Some(r) = &sc.runtime {
                let v = self.string(r, "scratch.runtime")?;
                if v != "process" {
                    return Err(self.err(
                        r.span(),
                        "scratch.runtime",
                        format!("runtime `{v}` is not available in this version: use \"process\""),
                    ));
                }
            }
            if let Some(u) = &sc.user {
                scratch.user = self.string(u, "scratch.user")?;
            }
            if let Some(b) = &sc.postgres_bin {
                scratch.postgres_bin = self.string(b, "scratch.postgres_bin")?;
            }
        }
        let drills_dir = match &raw.drills_dir {
            Some(d) => self.path(d, "drills_dir")?,
            None => PathBuf::from("/etc/kompose-dr/restore-drills"),
        };
        let reports_dir = match &raw.reports_dir {
            Some(d) => self.path(d, "reports_dir")?,
            None => PathBuf::from("/var/local/data/backups/reports"),
        };

        let policies_dir = match &raw.policies_dir {
            Some(d) => self.path(d, "policies_dir")?,
            None => PathBuf::from("/etc/kompose-dr/policies"),
        };
        let timezone = raw
            .timezone
            .as_ref()
            .map(|t| {
                let v = self.string(t, "timezone")?;
                crate::model::time::parse_timezone(&v)
                    .map_err(|e| self.err(t.span(), "timezone", e))
            })
            .transpose()?;

        let mut agent = AgentConfig {
            listen: None,
            catch_up: raw.agent.as_ref().and_then(|a| a.catch_up).unwrap_or(false),
            prune_schedule: None,
            drill_schedule: None,
        };
        for (key, value, slot) in [
            (
                "prune_schedule",
                &raw.prune_schedule,
                &mut agent.prune_schedule,
            ),
            (
                "drill_schedule",
                &raw.drill_schedule,
                &mut agent.drill_schedule,
            ),
        ] {
            if let Some(v) = value {
                let text = self.string(v, key)?;
                <cron::Schedule as std::str::FromStr>::from_str(&text).map_err(|e| {
                    self.err(v.span(), key, format!("`{text}` is not a cron expression ({e}); it has a seconds field first: \"0 30 4 * * *\""))
                })?;
                *slot = Some(text);
            }
        }
        if let Some(l) = raw.agent.as_ref().and_then(|a| a.listen.as_ref()) {
            let text = self.string(l, "agent.listen")?;
            text.parse::<std::net::SocketAddr>().map_err(|_| {
                self.err(
                    l.span(),
                    "agent.listen",
                    format!("`{text}` is not an address: write 127.0.0.1:9187"),
                )
            })?;
            agent.listen = Some(text);
        }

        Ok(Config {
            path: self.file.to_owned(),
            repositories,
            encryption,
            compression,
            postgres,
            redis,
            files,
            mqtt,
            metrics,
            scratch,
            drills_dir,
            reports_dir,
            policies_dir,
            timezone,
            retention: raw.retention.clone(),
            agent,
        })
    }

    fn postgres(&self, p: &RawPostgres) -> Result<PostgresConfig, ConfigError> {
        let url_s = self.string(&p.url, "postgres.url")?;
        let bad = |msg: String| self.err(p.url.span(), "postgres.url", msg);
        let (endpoint, url_password) = parse_postgres_url(&url_s).map_err(bad)?;
        let mut password = self.secret(
            "postgres",
            &p.password,
            &p.password_file,
            &p.password_credential,
        )?;
        if let Some(pw) = url_password {
            if password.is_some() {
                return Err(self.err(
                    p.url.span(),
                    "postgres.url",
                    "the URL carries a password and postgres.password is set too: keep only postgres.password",
                ));
            }
            password = Some(pw);
        }
        let databases = match &p.databases {
            None => DatabaseSelection::All,
            Some(list) => {
                let names = list.get_ref();
                if names.is_empty() {
                    return Err(self.err(
                        list.span(),
                        "postgres.databases",
                        "empty list: name the databases or write [\"*\"] for all",
                    ));
                }
                if names.iter().any(|n| n.get_ref() == "*") {
                    if names.len() != 1 {
                        return Err(self.err(
                            list.span(),
                            "postgres.databases",
                            "\"*\" means every database and must stand alone",
                        ));
                    }
                    DatabaseSelection::All
                } else {
                    let mut v: Vec<String> = Vec::new();
                    for (i, n) in names.iter().enumerate() {
                        let key = format!("postgres.databases[{i}]");
                        let s = self.string(n, &key)?;
                        if s.is_empty() || s.contains('\0') || s.contains('/') {
                            return Err(self.err(n.span(), &key, "not a database name"));
                        }
                        if v.contains(&s) {
                            return Err(self.err(n.span(), &key, format!("`{s}` is listed twice")));
                        }
                        v.push(s);
                    }
                    DatabaseSelection::List(v)
                }
            }
        };
        let jobs = match &p.jobs {
            None => NonZeroUsize::new(2).expect("2 > 0"),
            Some(j) => usize::try_from(*j.get_ref())
                .ok()
                .filter(|n| (1..=64).contains(n))
                .and_then(NonZeroUsize::new)
                .ok_or_else(|| self.err(j.span(), "postgres.jobs", "use a number from 1 to 64"))?,
        };
        let docker_container = p
            .docker_container
            .as_ref()
            .map(|c| {
                let s = self.string(c, "postgres.docker_container")?;
                if s.is_empty() || s.starts_with('-') {
                    return Err(self.err(
                        c.span(),
                        "postgres.docker_container",
                        "not a container name",
                    ));
                }
                Ok(s)
            })
            .transpose()?;
        let bin_dir = p
            .bin_dir
            .as_ref()
            .map(|b| self.path(b, "postgres.bin_dir"))
            .transpose()?;
        Ok(PostgresConfig {
            endpoint,
            password,
            databases,
            globals: p.globals.unwrap_or(true),
            docker_container,
            bin_dir,
            jobs,
        })
    }

    fn mqtt(&self, m: &RawMqtt) -> Result<MqttConfig, ConfigError> {
        let url_s = self.string(&m.url, "mqtt.url")?;
        let bad = |msg: String| self.err(m.url.span(), "mqtt.url", msg);
        let url = url::Url::parse(&url_s).map_err(|e| {
            bad(format!(
                "not a URL ({e}): write mqtt://HOST:1883 or mqtts://HOST:8883"
            ))
        })?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(bad(format!(
                    "scheme `{other}` is not supported: write mqtt://HOST:1883 or mqtts://HOST:8883"
                )));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host: write mqtt://HOST:1883".into()))?
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "put the user in mqtt.username and the password in mqtt.password, not in the URL"
                    .into(),
            ));
        }
        let topic_prefix = match &m.topic_prefix {
            None => "kompose".to_owned(),
            Some(p) => {
                let v = self.string(p, "mqtt.topic_prefix")?;
                if v.is_empty() || v.contains(['#', '+']) || v.starts_with('/') || v.ends_with('/')
                {
                    return Err(self.err(
                        p.span(),
                        "mqtt.topic_prefix",
                        "use a topic level such as \"kompose\" (no #, + or leading/trailing /)",
                    ));
                }
                v
            }
        };
        let username = m
            .username
            .as_ref()
            .map(|u| self.string(u, "mqtt.username"))
            .transpose()?;
        let password = self.secret(
            "mqtt",
            &m.password,
            &m.password_file,
            &m.password_credential,
        )?;
        if password.is_some() && username.is_none() {
            return Err(self.missing_username(m));
        }
        let client_id = match &m.client_id {
            Some(c) => self.string(c, "mqtt.client_id")?,
            None => format!(
                "kompose-dr-{}-{}",
                hostname::get()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ),
        };
        let ca_file = m
            .ca_file
            .as_ref()
            .map(|c| self.path(c, "mqtt.ca_file"))
            .transpose()?;
        let timeout = match &m.timeout {
            None => std::time::Duration::from_secs(10),
            Some(t) => {
                let s = self.string(t, "mqtt.timeout")?;
                humantime::parse_duration(&s).map_err(|e| {
                    self.err(
                        t.span(),
                        "mqtt.timeout",
                        format!("`{s}` is not a duration ({e}): write 10s or 1m"),
                    )
                })?
            }
        };
        Ok(MqttConfig {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            topic_prefix,
            username,
            password,
            client_id,
            ca_file,
            timeout,
        })
    }

    fn missing_username(&self, m: &RawMqtt) -> ConfigError {
        let span = [&m.password, &m.password_file, &m.password_credential]
            .into_iter()
            .flatten()
            .next()
            .map(|s| s.span())
            .unwrap_or(0..0);
        self.err(
            span,
            "mqtt.username",
            "a password needs a user name: set mqtt.username",
        )
    }

    fn redis(&self, r: &RawRedis) -> Result<RedisConfig, ConfigError> {
        let url_s = self.string(&r.url, "redis.url")?;
        let bad = |msg: String| self.err(r.url.span(), "redis.url", msg);
        let url = url::Url::parse(&url_s)
            .map_err(|e| bad(format!("not a URL ({e}): write redis://HOST:PORT")))?;
        if url.scheme() != "redis" {
            return Err(bad(format!(
                "scheme `{}` is not supported: write redis://HOST:PORT",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host: write redis://HOST:PORT".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut password = self.secret(
            "redis",
            &r.password,
            &r.password_file,
            &r.password_credential,
        )?;
        if let Some(pw) = url.password() {
            if password.is_some() {
                return Err(bad(
                    "the URL carries a password and redis.password is set too: keep only redis.password".into(),
                ));
            }
            password = Some(Secret::new(percent_decode(pw)));
        }
        let username = Some(percent_decode(url.username())).filter(|u| !u.is_empty());
        let data_dir = r
            .data_dir
            .as_ref()
            .map(|d| self.path(d, "redis.data_dir"))
            .transpose()?;
        Ok(RedisConfig {
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            data_dir,
        })
    }
}

/// Parses `postgres://USER@HOST:PORT/DATABASE` (also `?host=/socket/dir`)
/// into an endpoint and the password the URL carries, if any.
pub fn parse_postgres_url(url_s: &str) -> Result<(PgEndpoint, Option<Secret>), String> {
    let url = url::Url::parse(url_s)
        .map_err(|e| format!("not a URL ({e}): write postgres://USER@HOST:PORT/DATABASE"))?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err(format!(
            "scheme `{}` is not postgres://: write postgres://USER@HOST:PORT/DATABASE",
            url.scheme()
        ));
    }
    let mut host = url.host_str().unwrap_or("").to_owned();
    let mut port = url.port().unwrap_or(5432);
    for (k, v) in url.query_pairs() {
        match &*k {
            "host" => host = v.into_owned(),
            "port" => {
                port = v
                    .parse()
                    .map_err(|_| format!("port `{v}` is not a number"))?
            }
            other => {
                return Err(format!(
                    "unsupported URL parameter `{other}` (only host and port are understood)"
                ));
            }
        }
    }
    if host.is_empty() {
        host = "localhost".to_owned();
    }
    let user = percent_decode(url.username());
    if user.is_empty() {
        return Err(
            "no user: write postgres://USER@HOST:PORT/DATABASE (Kompose uses DB_USER, default kompose)".into(),
        );
    }
    let maintenance_db = match url.path().trim_start_matches('/') {
        "" => "postgres".to_owned(),
        d => percent_decode(d),
    };
    Ok((
        PgEndpoint {
            host,
            port,
            user,
            maintenance_db,
        },
        url.password().map(|p| Secret::new(percent_decode(p))),
    ))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
