//! `[[repository]]` entries: a local directory or an S3 bucket and prefix.
//!
//! An S3 repository is `url = "s3://bucket/prefix"` plus its connection
//! settings; every S3-only key is refused on a local repository, so a typo
//! in the URL's scheme cannot silently turn an offsite copy into a local
//! one.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::cx::is_name;
use super::{ConfigError, Cx, env};
use crate::model::s3_limits::{DEFAULT_PART_SIZE, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE};
use crate::model::secret::Secret;
use crate::model::units::{bytes as format_size, parse_size};

/// Parts of one repository in flight at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How long a writer lock's lease lives without renewal, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    name: Spanned<String>,
    url: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    path_style: Option<Spanned<bool>>,
    access_key_id_file: Option<Spanned<String>>,
    secret_access_key_file: Option<Spanned<String>>,
    part_size: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    object_lock: Option<Spanned<RawObjectLock>>,
    lease_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectLock {
    mode: Spanned<String>,
    days: Spanned<i64>,
}

/// One `[[repository]]` entry: a name unique in the file and where the
/// repository lives. Backup writes each snapshot to every configured repository
/// unless a policy names fewer.
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    /// Its name (`--repository NAME`).
    pub name: String,
    /// Where it lives.
    pub location: Location,
    /// Which signatures its readers accept and the key its writers sign
    /// with (`[signing]`, the same for every repository).
    pub trust: super::Trust,
}

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this host.
    Local(PathBuf),
    /// A bucket and prefix on an S3-compatible store.
    S3(Box<S3Config>),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(s) => write!(f, "{s}"),
        }
    }
}

/// An S3 repository's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket, from the `s3://BUCKET/prefix` URL; its name is checked
    /// against S3's rules (3 to 63 characters, …) at load.
    pub bucket: String,
    /// The key prefix, empty or ending in `/`.
    pub prefix: String,
    /// A custom endpoint (Garage, MinIO, B2, Wasabi); AWS when absent.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when absent; Garage's default is `garage`).
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most self-hosted
    /// stores need.
    pub path_style: bool,
    /// Static credentials from files; the standard AWS chain when absent.
    pub credentials: Option<S3Credentials>,
    /// Multipart part size in bytes.
    pub part_size: u64,
    /// Parts of this repository in flight at once.
    pub concurrency: usize,
    /// How long one request attempt may take before it is retried.
    pub timeout: Duration,
    /// Attempts per request (the first one included).
    pub attempts: u32,
    /// Object Lock retention applied to every object written.
    pub object_lock: Option<ObjectLock>,
    /// How long the writer lock's lease lives without renewal (`lease_ttl`,
    /// 5 minutes by default, whole seconds): a writer that stops renewing
    /// (killed, cut off, paused) is taken over this long after its last
    /// renewal, by the store's clock, and stops itself before that.
    pub lease_ttl: Duration,
}

impl fmt::Display for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "s3://{}/{}",
            self.bucket,
            self.prefix.trim_end_matches('/')
        )?;
        if let Some(e) = &self.endpoint {
            write!(f, " at {e}")?;
        }
        Ok(())
    }
}

/// Static S3 credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id (not secret on its own, but never logged).
    pub access_key_id: Secret,
    /// The secret access key.
    pub secret_access_key: Secret,
}

/// S3 Object Lock retention for every object written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Governance (privileged users may shorten) or compliance (nobody may).
    pub mode: ObjectLockMode,
    /// Days each object stays locked after it is written.
    pub days: u32,
}

/// The Object Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectLockMode {
    /// `GOVERNANCE`: users with the bypass permission may still shorten or
    /// remove an object's lock.
    Governance,
    /// `COMPLIANCE`: nobody, not even the account's root user, may shorten or
    /// remove the lock before it expires.
    Compliance,
}

impl RepositoryConfig {
    /// A repository from command-line flags rather than a configuration
    /// file (`kompose-dr bootstrap --repository URL --endpoint …`): the URL
    /// (a local path, `file:///path` or `s3://bucket/prefix`) and the S3
    /// settings are validated exactly as the keys of a `[[repository]]`
    /// entry; S3 credentials come from the standard AWS chain (the
    /// environment). It trusts nothing until a [`super::Trust`] is set. An
    /// error's `file` is `--repository` and its key the flag (`--endpoint`).
    pub fn from_flags(
        name: &str,
        url: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        path_style: bool,
    ) -> Result<RepositoryConfig, ConfigError> {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("url".into(), url.into());
        if let Some(e) = endpoint {
            t.insert("endpoint".into(), e.into());
        }
        if let Some(r) = region {
            t.insert("region".into(), r.into());
        }
        if path_style {
            t.insert("path_style".into(), true.into());
        }
        let flag_error = |e: ConfigError| ConfigError {
            file: PathBuf::from("--repository"),
            line: None,
            key: e
                .key
                .as_deref()
                .and_then(|k| k.rsplit('.').next())
                .map(|k| match k {
                    "url" => "--repository".to_owned(),
                    other => format!("--{}", other.replace('_', "-")),
                }),
            message: e.message,
        };
        let text = toml::to_string(&t).map_err(|e| ConfigError {
            file: PathBuf::from("--repository"),
            line: None,
            key: None,
            message: e.to_string(),
        })?;
        let raw: RawRepository = toml::from_str(&text).map_err(|e| ConfigError {
            file: PathBuf::from("--repository"),
            line: None,
            key: None,
            message: e.message().to_owned(),
        })?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let here = cwd.join("--repository");
        Cx::new(&text, &here)
            .repository(0, &raw)
            .map_err(flag_error)
    }
}

impl Cx<'_> {
    /// Validates every `[[repository]]` entry; names must be distinct.
    pub(super) fn repositories(
        &self,
        raw: &[RawRepository],
    ) -> Result<Vec<RepositoryConfig>, ConfigError> {
        let mut repositories: Vec<RepositoryConfig> = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let rc = self.repository(i, r)?;
            if repositories.iter().any(|x| x.name == rc.name) {
                return Err(self.err(
                    r.name.span(),
                    &format!("repository[{i}].name"),
                    format!("repository `{}` is defined twice", rc.name),
                ));
            }
            repositories.push(rc);
        }
        Ok(repositories)
    }

    /// Validates the `i`th repository: its name, and an s3:// URL with its
    /// settings or a local directory without any S3-only key.
    fn repository(&self, i: usize, r: &RawRepository) -> Result<RepositoryConfig, ConfigError> {
        let key = format!("repository[{i}]");
        let name = self.string(&r.name, &format!("{key}.name"))?;
        if !is_name(&name) {
            return Err(self.err(
                r.name.span(),
                &format!("{key}.name"),
                "use letters, digits, '-', '_' or '.'",
            ));
        }
        let url_key = format!("{key}.url");
        let url = self.string(&r.url, &url_key)?;
        let location = if let Some(rest) = url.strip_prefix("s3://") {
            Location::S3(Box::new(self.s3(&key, rest, r)?))
        } else {
            self.refuse_s3_only_keys(&key, &url, r)?;
            self.local_location(&url, &r.url, &url_key)?
        };
        Ok(RepositoryConfig {
            name,
            location,
            trust: super::Trust::default(),
        })
    }

    /// Every S3-only key is an error on a local repository: a typo in the
    /// scheme must not silently turn an offsite copy into a local one.
    fn refuse_s3_only_keys(
        &self,
        key: &str,
        url: &str,
        r: &RawRepository,
    ) -> Result<(), ConfigError> {
        let s3_only: [(&str, Option<Range<usize>>); 11] = [
            ("endpoint", r.endpoint.as_ref().map(|v| v.span())),
            ("region", r.region.as_ref().map(|v| v.span())),
            ("path_style", r.path_style.as_ref().map(|v| v.span())),
            (
                "access_key_id_file",
                r.access_key_id_file.as_ref().map(|v| v.span()),
            ),
            (
                "secret_access_key_file",
                r.secret_access_key_file.as_ref().map(|v| v.span()),
            ),
            ("part_size", r.part_size.as_ref().map(|v| v.span())),
            ("concurrency", r.concurrency.as_ref().map(|v| v.span())),
            ("timeout", r.timeout.as_ref().map(|v| v.span())),
            ("retries", r.retries.as_ref().map(|v| v.span())),
            ("object_lock", r.object_lock.as_ref().map(|v| v.span())),
            ("lease_ttl", r.lease_ttl.as_ref().map(|v| v.span())),
        ];
        match s3_only.into_iter().find_map(|(k, s)| Some((k, s?))) {
            Some((k, span)) => Err(self.err(
                span,
                &format!("{key}.{k}"),
                format!("`{k}` applies only to s3:// repositories, and `{url}` is a local one"),
            )),
            None => Ok(()),
        }
    }

    /// A local repository: `file:///path`, an absolute path, or a path
    /// relative to the configuration file's folder.
    fn local_location(
        &self,
        url: &str,
        span: &Spanned<String>,
        key: &str,
    ) -> Result<Location, ConfigError> {
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(self.err(
                    span.span(),
                    key,
                    "file:// URLs need an absolute path (file:///var/backups)",
                ));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if url.contains("://") {
            let scheme = url.split("://").next().unwrap_or_default();
            return Err(self.err(
                span.span(),
                key,
                format!(
                    "`{scheme}://` repositories are not supported: use s3://bucket/prefix or a local directory (/path or file:///path)"
                ),
            ));
        }
        if url.is_empty() {
            return Err(self.err(span.span(), key, "empty repository URL"));
        }
        Ok(Location::Local(self.relative_to_file(PathBuf::from(url))))
    }

    /// An S3 repository: `rest` is the URL after `s3://`; `key` is
    /// `repository[i]`. Settings are validated in the order they are
    /// listed in the struct, so the first mistake in that order is reported.
    fn s3(&self, key: &str, rest: &str, r: &RawRepository) -> Result<S3Config, ConfigError> {
        let (bucket, prefix) = self.bucket_and_prefix(key, rest, r)?;
        let endpoint = r
            .endpoint
            .as_ref()
            .map(|v| self.s3_endpoint(v, &format!("{key}.endpoint")))
            .transpose()?;
        let region = match &r.region {
            None => "us-east-1".to_owned(),
            Some(v) => self.string(v, &format!("{key}.region"))?,
        };
        let path_style = r.path_style.as_ref().is_some_and(|v| *v.get_ref());
        let credentials = self.s3_credentials(key, r)?;
        let part_size = match &r.part_size {
            None => DEFAULT_PART_SIZE,
            Some(v) => self.part_size(v, &format!("{key}.part_size"))?,
        };
        let count = |v: &Option<Spanned<i64>>, k: &str, default: i64, max: i64| match v {
            None => Ok(default),
            Some(v) if (1..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.err(
                v.span(),
                &format!("{key}.{k}"),
                format!("must be between 1 and {max}"),
            )),
        };
        let concurrency = count(
            &r.concurrency,
            "concurrency",
            DEFAULT_CONCURRENCY as i64,
            64,
        )?;
        let retries = count(&r.retries, "retries", 5, 100)?;
        let timeout = match &r.timeout {
            None => Duration::from_secs(120),
            Some(v) => self.request_timeout(v, &format!("{key}.timeout"))?,
        };
        let object_lock = r
            .object_lock
            .as_ref()
            .map(|l| self.object_lock(key, l.get_ref()))
            .transpose()?;
        let lease_ttl = match &r.lease_ttl {
            None => DEFAULT_LEASE_TTL,
            Some(v) => self.lease_ttl(v, &format!("{key}.lease_ttl"))?,
        };
        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials,
            part_size,
            concurrency: concurrency as usize,
            timeout,
            attempts: retries as u32 + 1,
            object_lock,
            lease_ttl,
        })
    }

    /// The bucket and the key prefix (empty or ending in `/`) of
    /// `s3://bucket/prefix`.
    fn bucket_and_prefix(
        &self,
        key: &str,
        rest: &str,
        r: &RawRepository,
    ) -> Result<(String, String), ConfigError> {
        let url_key = format!("{key}.url");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(self.err(
                r.url.span(),
                &url_key,
                format!(
                    "`{bucket}` is not a bucket name: write s3://bucket/prefix with a bucket of 3 to 63 lowercase letters, digits, '-' or '.'"
                ),
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..")
            || prefix.contains("//")
            || prefix.contains('?')
        {
            return Err(self.err(
                r.url.span(),
                &url_key,
                format!("`{prefix}` is not a usable key prefix: use plain names separated by '/'"),
            ));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok((bucket.to_owned(), prefix))
    }

    /// `endpoint`: an http(s) URL with a host and no credentials, without
    /// a trailing `/`.
    fn s3_endpoint(&self, v: &Spanned<String>, k: &str) -> Result<String, ConfigError> {
        let s = self.string(v, k)?;
        let u = url::Url::parse(&s).map_err(|e| {
            self.err(
                v.span(),
                k,
                format!("`{s}` is not a URL ({e}): write http://host:3900"),
            )
        })?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(self.err(
                v.span(),
                k,
                format!("`{s}` must be an http:// or https:// URL with a host"),
            ));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(self.err(
                v.span(),
                k,
                "credentials do not belong in the endpoint URL: use access_key_id_file and secret_access_key_file",
            ));
        }
        Ok(s.trim_end_matches('/').to_owned())
    }

    /// Static credentials from both key files, or none (the standard AWS
    /// chain) when neither is set.
    fn s3_credentials(
        &self,
        key: &str,
        r: &RawRepository,
    ) -> Result<Option<S3Credentials>, ConfigError> {
        match (&r.access_key_id_file, &r.secret_access_key_file) {
            (None, None) => Ok(None),
            (Some(id), Some(secret)) => Ok(Some(S3Credentials {
                access_key_id: self.key_file(id, &format!("{key}.access_key_id_file"))?,
                secret_access_key: self
                    .key_file(secret, &format!("{key}.secret_access_key_file"))?,
            })),
            (Some(v), None) | (None, Some(v)) => Err(self.err(
                v.span(),
                &format!("{key}.access_key_id_file"),
                "set both access_key_id_file and secret_access_key_file, or neither (the standard AWS chain: AWS_ACCESS_KEY_ID, ~/.aws, instance roles)",
            )),
        }
    }

    /// One credential file's content, trimmed; an empty file is refused.
    fn key_file(&self, v: &Spanned<String>, k: &str) -> Result<Secret, ConfigError> {
        let p = self.path(v, k)?;
        let s = env::read_secret_file(&p)
            .map_err(|e| self.err(v.span(), k, format!("cannot read {}: {e}", p.display())))?;
        let s = s.trim().to_owned();
        if s.is_empty() {
            return Err(self.err(v.span(), k, format!("{} is empty", p.display())));
        }
        self.note_file(k, &p, true);
        Ok(Secret::new(s))
    }

    /// `part_size`: a size within S3's multipart limits.
    fn part_size(&self, v: &Spanned<String>, k: &str) -> Result<u64, ConfigError> {
        let s = self.string(v, k)?;
        let n = parse_size(&s).map_err(|e| self.err(v.span(), k, e.0))?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) {
            return Err(self.err(
                v.span(),
                k,
                format!(
                    "{} is outside S3's part sizes: use 5MiB to 5GiB (16MiB allows artifacts up to {})",
                    format_size(n),
                    format_size(DEFAULT_PART_SIZE * MAX_PARTS)
                ),
            ));
        }
        Ok(n)
    }

    /// `timeout`: how long one request attempt may take (`2m`, `30s`).
    fn request_timeout(&self, v: &Spanned<String>, k: &str) -> Result<Duration, ConfigError> {
        let s = self.string(v, k)?;
        humantime::parse_duration(&s).map_err(|e| {
            self.err(
                v.span(),
                k,
                format!("`{s}` is not a duration ({e}): write 2m or 30s"),
            )
        })
    }

    /// `lease_ttl`: whole seconds, from 2 seconds to a day.
    fn lease_ttl(&self, v: &Spanned<String>, k: &str) -> Result<Duration, ConfigError> {
        let s = self.string(v, k)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            self.err(
                v.span(),
                k,
                format!("`{s}` is not a duration ({e}): write 5m or 90s"),
            )
        })?;
        if d.subsec_nanos() != 0 || !(2..=86_400).contains(&d.as_secs()) {
            return Err(self.err(
                v.span(),
                k,
                format!("`{s}` must be whole seconds from 2s to 1d (5m by default)"),
            ));
        }
        Ok(d)
    }

    /// `object_lock`: a mode and a number of days.
    fn object_lock(&self, key: &str, l: &RawObjectLock) -> Result<ObjectLock, ConfigError> {
        let mode = match l.mode.get_ref().as_str() {
            "governance" => ObjectLockMode::Governance,
            "compliance" => ObjectLockMode::Compliance,
            other => {
                return Err(self.err(
                    l.mode.span(),
                    &format!("{key}.object_lock.mode"),
                    format!("`{other}` is not a mode: use \"governance\" or \"compliance\""),
                ));
            }
        };
        let days = *l.days.get_ref();
        if !(1..=36500).contains(&days) {
            return Err(self.err(
                l.days.span(),
                &format!("{key}.object_lock.days"),
                "must be between 1 and 36500, and longer than the retention policy keeps snapshots",
            ));
        }
        Ok(ObjectLock {
            mode,
            days: days as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("8 MB").unwrap(), 8 << 20);
        assert_eq!(parse_size("5242880").unwrap(), 5 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("16 furlongs").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_size(DEFAULT_PART_SIZE * MAX_PARTS), "156.2 GiB");
        assert_eq!(format_size(16 << 20), "16 MiB");
    }

    #[test]
    fn a_repository_from_flags_is_validated_like_a_section_and_names_the_flag() {
        let r = RepositoryConfig::from_flags(
            "b",
            "s3://kdr-boot/stack/",
            Some("http://127.0.0.1:3900/"),
            Some("garage"),
            true,
        )
        .unwrap();
        let Location::S3(s3) = &r.location else {
            panic!("{r:?}")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("kdr-boot", "stack/")
        );
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(s3.path_style && s3.credentials.is_none());
        let e = RepositoryConfig::from_flags("b", "s3://X", None, None, false).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("--repository"), "{e}");
        let e = RepositoryConfig::from_flags("b", "s3://kdr", Some("ftp://x"), None, false)
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("--endpoint"), "{e}");
        let e =
            RepositoryConfig::from_flags("b", "/srv/r", Some("http://x"), None, false).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("--endpoint"), "{e}");
        assert!(matches!(
            RepositoryConfig::from_flags("b", "/srv/r", None, None, false)
                .unwrap()
                .location,
            Location::Local(_)
        ));
    }
}
