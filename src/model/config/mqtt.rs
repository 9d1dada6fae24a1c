//! `[mqtt]`: the broker that events (backups, verifies, drills, ...) are
//! published to, and how.
//!
//! The broker is one `mqtt://` or `mqtts://` URL without credentials (they
//! go in `username` and the password keys, so they are never logged with
//! the URL). Publishing is best effort: `timeout` bounds how long it may
//! delay the job that publishes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::docker::{ContainerRef, DockerConfig};
use super::{ConfigError, Cx};
use crate::model::secret::Secret;

/// `[mqtt]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    url: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    topic_prefix: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_credential: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// The MQTT broker events go to.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The broker's host name or address, from `mqtt.url`.
    pub host: String,
    /// Broker port (1883, or 8883 for mqtts).
    pub port: u16,
    /// Whether to connect with TLS: `mqtts://` (or `ssl://`) in `mqtt.url`;
    /// `mqtt://` and `tcp://` are in clear.
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
    pub timeout: Duration,
    /// The broker's container (`mqtt.container`): its address on its
    /// network, as the engine reports it, replaces `host` at publish time.
    pub container: Option<ContainerRef>,
}

/// What `mqtt.url` says: the broker's host and port, and whether to use TLS.
struct Broker {
    host: String,
    port: u16,
    tls: bool,
}

impl Cx<'_> {
    /// Validates `[mqtt]`: the broker from `mqtt.url` (no credentials in
    /// it), the topic prefix (`kompose` by default), a password only
    /// together with a user name, the client id, the CA file and the publish
    /// timeout (10 s by default).
    pub(super) fn mqtt(
        &self,
        m: &RawMqtt,
        docker: &DockerConfig,
    ) -> Result<MqttConfig, ConfigError> {
        let container = m
            .container
            .as_ref()
            .map(|c| self.container(c, "mqtt.container", docker))
            .transpose()?;
        let Broker { host, port, tls } = match (&m.url, &container) {
            (Some(url), _) => self.broker(url)?,
            (None, Some(_)) => Broker {
                host: String::new(),
                port: 1883,
                tls: false,
            },
            (None, None) => {
                return Err(self.err(
                    0..0,
                    "mqtt",
                    "neither url nor container is set: write container = \"core-mqtt\" \
                     (the broker's container) or url = \"mqtt://HOST:1883\"",
                ));
            }
        };
        let topic_prefix = match &m.topic_prefix {
            None => "kompose".to_owned(),
            Some(p) => self.topic_prefix(p)?,
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
            None => default_client_id(),
        };
        let ca_file = m
            .ca_file
            .as_ref()
            .map(|c| self.path(c, "mqtt.ca_file"))
            .transpose()?;
        if let Some(p) = &ca_file {
            self.note_file("mqtt.ca_file", p, false);
        }
        let timeout = match &m.timeout {
            None => Duration::from_secs(10),
            Some(t) => self.publish_timeout(t)?,
        };
        Ok(MqttConfig {
            host,
            port,
            tls,
            topic_prefix,
            username,
            password,
            client_id,
            ca_file,
            timeout,
            container,
        })
    }

    /// `mqtt.url`: `mqtt://` (or `tcp://`) in clear, `mqtts://` (or
    /// `ssl://`) with TLS, a host, and no credentials.
    fn broker(&self, v: &Spanned<String>) -> Result<Broker, ConfigError> {
        let url_s = self.string(v, "mqtt.url")?;
        let bad = |msg: String| self.err(v.span(), "mqtt.url", msg);
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
        Ok(Broker {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
        })
    }

    /// `mqtt.topic_prefix`: one or more topic levels, without wildcards.
    fn topic_prefix(&self, p: &Spanned<String>) -> Result<String, ConfigError> {
        let v = self.string(p, "mqtt.topic_prefix")?;
        if v.is_empty() || v.contains(['#', '+']) || v.starts_with('/') || v.ends_with('/') {
            return Err(self.err(
                p.span(),
                "mqtt.topic_prefix",
                "use a topic level such as \"kompose\" (no #, + or leading/trailing /)",
            ));
        }
        Ok(v)
    }

    /// `mqtt.timeout`: a human duration (`10s`, `1m`).
    fn publish_timeout(&self, t: &Spanned<String>) -> Result<Duration, ConfigError> {
        let s = self.string(t, "mqtt.timeout")?;
        humantime::parse_duration(&s).map_err(|e| {
            self.err(
                t.span(),
                "mqtt.timeout",
                format!("`{s}` is not a duration ({e}): write 10s or 1m"),
            )
        })
    }

    /// The error for a password without a user name, at the password key
    /// that was set.
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
}

/// `kompose-dr-<hostname>-<pid>`: unique per process, so two runs on one
/// host do not disconnect each other.
fn default_client_id() -> String {
    format!(
        "kompose-dr-{}-{}",
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    )
}
