//! `[redis]`: the Redis source — where the server is, how to log in, and
//! where its data directory is as this host sees it.
//!
//! The server is one `redis://[USER[:PASSWORD]@]HOST[:PORT]` URL. As for
//! PostgreSQL, a password in the URL is accepted only if `password`,
//! `password_file` and `password_credential` are all unset.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::cx::percent_decode;
use super::docker::{ContainerRef, DockerConfig};
use super::{ConfigError, Cx};
use crate::model::secret::Secret;

/// `[redis]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    url: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    stall_timeout: Option<Spanned<String>>,
}

impl RawRedis {
    /// `redis.stall_timeout`, validated with `[timeouts]`.
    pub(super) fn stall_timeout(&self) -> Option<&Spanned<String>> {
        self.stall_timeout.as_ref()
    }
}

/// The Redis source: where the server is, how to log in, and where its
/// data files (RDB or AOF) can be read from.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Host name or address; a path (starting with `/`) is a unix socket,
    /// which only scratch servers use (a URL cannot name one).
    pub host: String,
    /// TCP port, from `redis.url`; 6379 when the URL names none.
    pub port: u16,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if the server requires one.
    pub password: Option<Secret>,
    /// The data directory as this host sees it; by default the server's
    /// own `dir` setting (right when both run on one filesystem).
    pub data_dir: Option<PathBuf>,
    /// The server's container (`redis.container`): commands, the data
    /// files and restore's stop and start go through the engine, and
    /// `data_dir` is not needed.
    pub container: Option<ContainerRef>,
}

impl Cx<'_> {
    /// Validates `[redis]`: host, port and ACL user from `redis.url` (scheme
    /// `redis://` only), the password from the URL or the `redis.password*`
    /// keys but never both, and `data_dir` as a path.
    pub(super) fn redis(
        &self,
        r: &RawRedis,
        docker: &DockerConfig,
    ) -> Result<RedisConfig, ConfigError> {
        let container = r
            .container
            .as_ref()
            .map(|c| self.container(c, "redis.container", docker))
            .transpose()?;
        let Some(url_v) = &r.url else {
            if container.is_none() {
                return Err(self.err(
                    0..0,
                    "redis",
                    "neither url nor container is set: write container = \"core-redis\" \
                     (the server's container) or url = \"redis://HOST:6379\"",
                ));
            }
            let password = self.secret(
                "redis",
                &r.password,
                &r.password_file,
                &r.password_credential,
            )?;
            let data_dir = r
                .data_dir
                .as_ref()
                .map(|d| self.path(d, "redis.data_dir"))
                .transpose()?;
            return Ok(RedisConfig {
                host: "127.0.0.1".into(),
                port: 6379,
                username: None,
                password,
                data_dir,
                container,
            });
        };
        let (url, host) = self.redis_url(url_v)?;
        let bad = |msg: String| self.err(url_v.span(), "redis.url", msg);
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
            container,
        })
    }

    /// `redis.url` parsed, with its host: `redis://` only.
    fn redis_url(&self, url_v: &Spanned<String>) -> Result<(url::Url, String), ConfigError> {
        let url_s = self.string(url_v, "redis.url")?;
        let bad = |msg: String| self.err(url_v.span(), "redis.url", msg);
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
        Ok((url, host))
    }
}
