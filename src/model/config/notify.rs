//! `[[notify]]` and `[healthchecks]`: who is told besides the MQTT bus, and
//! the dead-man's switch that makes silence alert.
//!
//! ```toml
//! [[notify]]
//! kind = "gotify"                  # or "ntfy", "webhook"
//! url = "https://gotify.example/"  # gotify: the server; ntfy: the topic URL; webhook: where to POST
//! token = "${GOTIFY_TOKEN}"        # or token_file; gotify: the app token (X-Gotify-Key)
//! on = ["failure"]                 # the default; or ["failure", "success"]
//! priority = 8                     # gotify 0-10, ntfy 1-5
//!
//! [healthchecks]
//! url = "https://hc-ping.com/<uuid>"   # backup: pinged at start, on success, on failure (/start, "", /fail)
//! drill_url = "https://hc-ping.com/<uuid2>"   # optional: the drills' own check
//! prune_url = "https://hc-ping.com/<uuid3>"   # optional: prune's own check
//! ```
//!
//! Tokens and the healthchecks URL (its uuid is the secret) are
//! [`Secret`]s: never logged, scrubbed from messages. URLs carry no
//! credentials; tokens go in headers.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};
use crate::model::secret::Secret;

/// `[[notify]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    kind: Spanned<String>,
    url: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    on: Option<Spanned<Vec<String>>>,
    priority: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
}

/// `[healthchecks]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthchecks {
    url: Spanned<String>,
    drill_url: Option<Spanned<String>>,
    prune_url: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// How a notification is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// `POST {url}/message`, `X-Gotify-Key: token`, JSON `{title, message, priority}`.
    Gotify,
    /// `POST {url}` (the topic URL), headers `Title`, `Priority`, `Tags`,
    /// the message as the body; `Authorization: Bearer token` if set.
    Ntfy,
    /// `POST {url}` with the event's JSON (the MQTT payload);
    /// `Authorization: Bearer token` if set.
    Webhook,
}

/// One notification target (`[[notify]]`).
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The protocol.
    pub kind: NotifyKind,
    /// The server (gotify), topic URL (ntfy) or endpoint (webhook); no
    /// credentials in it.
    pub url: url::Url,
    /// The token, sent in a header only.
    pub token: Option<Secret>,
    /// Told about failures (the default).
    pub on_failure: bool,
    /// Told about successes.
    pub on_success: bool,
    /// The message's priority, if set (gotify 0-10, ntfy 1-5).
    pub priority: Option<u8>,
    /// The most one delivery may take.
    pub timeout: Duration,
}

/// The dead-man's switch (`[healthchecks]`, healthchecks.io's protocol).
#[derive(Debug, Clone)]
pub struct HealthchecksConfig {
    /// The backup's check: its ping URL, whole (its uuid is the secret, so
    /// it is never printed).
    pub url: Secret,
    /// The drills' own check (`drill_url`): a quarterly job must not reset
    /// the nightly backup's timer.
    pub drill_url: Option<Secret>,
    /// Prune's own check (`prune_url`).
    pub prune_url: Option<Secret>,
    /// The most one ping may take.
    pub timeout: Duration,
}

/// The default delivery timeout.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

impl Cx<'_> {
    /// Validates every `[[notify]]`.
    pub(super) fn notify(&self, raw: &[RawNotify]) -> Result<Vec<NotifyConfig>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, n)| self.notify_one(i, n))
            .collect()
    }

    /// Validates `[[notify]]` entry `i`, key by key in file order.
    fn notify_one(&self, i: usize, n: &RawNotify) -> Result<NotifyConfig, ConfigError> {
        let key = |k: &str| format!("notify[{i}].{k}");
        let kind = match self.string(&n.kind, &key("kind"))?.as_str() {
            "gotify" => NotifyKind::Gotify,
            "ntfy" => NotifyKind::Ntfy,
            "webhook" => NotifyKind::Webhook,
            other => {
                return Err(self.err(
                    n.kind.span(),
                    &key("kind"),
                    format!("`{other}` is not a notification kind: use \"gotify\", \"ntfy\" or \"webhook\""),
                ));
            }
        };
        let url = self.http_url(&n.url, &key("url"))?;
        let token = self.notify_token(n, &key)?;
        if kind == NotifyKind::Gotify && token.is_none() {
            return Err(self.err(
                n.kind.span(),
                &key("token"),
                "gotify needs an application token: set token = \"${GOTIFY_TOKEN}\" or token_file",
            ));
        }
        let (on_failure, on_success) = self.notify_on(n, &key)?;
        let priority = self.notify_priority(n, kind, &key)?;
        let timeout = match &n.timeout {
            Some(t) => self.timeout(t, &key("timeout"))?,
            None => DEFAULT_NOTIFY_TIMEOUT,
        };
        Ok(NotifyConfig {
            kind,
            url,
            token,
            on_failure,
            on_success,
            priority,
            timeout,
        })
    }

    /// `token` or `token_file` (never both), or none.
    fn notify_token(
        &self,
        n: &RawNotify,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<Secret>, ConfigError> {
        Ok(match (&n.token, &n.token_file) {
            (Some(_), Some(f)) => {
                return Err(self.err(f.span(), &key("token"), "set only one of token, token_file"));
            }
            (Some(t), None) => {
                let v = self.string(t, &key("token"))?;
                (!v.is_empty()).then(|| Secret::new(v))
            }
            (None, Some(f)) => {
                let p = self.path(f, &key("token_file"))?;
                let v = super::env::read_secret_file(&p).map_err(|e| {
                    self.err(
                        f.span(),
                        &key("token_file"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                self.note_file(&key("token_file"), &p, true);
                Some(Secret::new(v))
            }
            (None, None) => None,
        })
    }

    /// `on`: whether to notify on failure and on success (failure only
    /// by default).
    fn notify_on(
        &self,
        n: &RawNotify,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(bool, bool), ConfigError> {
        let (mut on_failure, mut on_success) = (true, false);
        if let Some(on) = &n.on {
            on_failure = false;
            for v in on.get_ref() {
                match v.as_str() {
                    "failure" => on_failure = true,
                    "success" => on_success = true,
                    other => {
                        return Err(self.err(
                            on.span(),
                            &key("on"),
                            format!("`{other}` is not an outcome: write [\"failure\"] or [\"failure\", \"success\"]"),
                        ));
                    }
                }
            }
            if !on_failure && !on_success {
                return Err(self.err(
                    on.span(),
                    &key("on"),
                    "empty: write [\"failure\"] or [\"failure\", \"success\"], or remove the [[notify]] entry",
                ));
            }
        }
        Ok((on_failure, on_success))
    }

    /// `priority`, within the range of `kind` (a webhook has none).
    fn notify_priority(
        &self,
        n: &RawNotify,
        kind: NotifyKind,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<u8>, ConfigError> {
        Ok(match &n.priority {
            None => None,
            Some(p) => {
                let max = match kind {
                    NotifyKind::Gotify => 10,
                    NotifyKind::Ntfy => 5,
                    NotifyKind::Webhook => {
                        return Err(self.err(
                            p.span(),
                            &key("priority"),
                            "a webhook has no priority: remove the key",
                        ));
                    }
                };
                let min = if kind == NotifyKind::Ntfy { 1 } else { 0 };
                let v = *p.get_ref();
                if !(min..=max).contains(&v) {
                    return Err(self.err(
                        p.span(),
                        &key("priority"),
                        format!("{v} is out of range: write {min} to {max}"),
                    ));
                }
                Some(v as u8)
            }
        })
    }

    /// Validates `[healthchecks]`.
    pub(super) fn healthchecks(
        &self,
        raw: &RawHealthchecks,
    ) -> Result<HealthchecksConfig, ConfigError> {
        let ping = |v: &Spanned<String>, key: &str| {
            self.http_url(v, key)
                .map(|u| Secret::new(u.as_str().trim_end_matches('/').to_owned()))
        };
        let url = ping(&raw.url, "healthchecks.url")?;
        let drill_url = raw
            .drill_url
            .as_ref()
            .map(|v| ping(v, "healthchecks.drill_url"))
            .transpose()?;
        let prune_url = raw
            .prune_url
            .as_ref()
            .map(|v| ping(v, "healthchecks.prune_url"))
            .transpose()?;
        let timeout = match &raw.timeout {
            Some(t) => self.timeout(t, "healthchecks.timeout")?,
            None => DEFAULT_NOTIFY_TIMEOUT,
        };
        Ok(HealthchecksConfig {
            url,
            drill_url,
            prune_url,
            timeout,
        })
    }

    /// An `http://` or `https://` URL with a host and no credentials; the
    /// value is not quoted in errors (it may hold a secret path).
    fn http_url(&self, v: &Spanned<String>, key: &str) -> Result<url::Url, ConfigError> {
        let s = self.string(v, key)?;
        let url = url::Url::parse(&s).map_err(|e| {
            self.err(
                v.span(),
                key,
                format!("not a URL ({e}): write https://HOST/…"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(self.err(
                v.span(),
                key,
                "write an http:// or https:// URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(self.err(
                v.span(),
                key,
                "no credentials or query in the URL: put the token in token or token_file",
            ));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const R: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn parse(body: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            &format!(
                "[[repository]]\nname = \"l\"\nurl = \"/b\"\n[encryption]\nrecipients = [\"{R}\"]\n{body}"
            ),
            Path::new("/etc/kompose-dr/t.toml"),
        )
    }

    #[test]
    fn targets_default_to_failures_and_tokens_are_secrets() {
        let c = parse(
            "[[notify]]\nkind = \"gotify\"\nurl = \"https://g.example/\"\ntoken = \"tok-123\"\n\
             [healthchecks]\nurl = \"https://hc-ping.com/5f1e8a2c-9d3b-4c7e-8f60-1a2b3c4d5e6f\"\n",
        )
        .unwrap();
        let n = &c.notify[0];
        assert_eq!(n.kind, NotifyKind::Gotify);
        assert!(n.on_failure && !n.on_success);
        assert!(!format!("{c:?}").contains("tok-123"));
        assert!(!format!("{c:?}").contains("5f1e8a2c"));
        let secrets: Vec<String> = c.secrets().iter().map(|s| s.expose().to_owned()).collect();
        assert!(secrets.contains(&"tok-123".to_owned()));
        assert!(secrets.contains(&"5f1e8a2c-9d3b-4c7e-8f60-1a2b3c4d5e6f".to_owned()));
    }

    #[test]
    fn mistakes_name_their_key() {
        for (body, key) in [
            (
                "[[notify]]\nkind = \"slack\"\nurl = \"https://x/\"\n",
                "notify[0].kind",
            ),
            (
                "[[notify]]\nkind = \"gotify\"\nurl = \"https://x/\"\n",
                "notify[0].token",
            ),
            (
                "[[notify]]\nkind = \"ntfy\"\nurl = \"ftp://x/t\"\n",
                "notify[0].url",
            ),
            (
                "[[notify]]\nkind = \"ntfy\"\nurl = \"https://u:p@x/t\"\n",
                "notify[0].url",
            ),
            (
                "[[notify]]\nkind = \"ntfy\"\nurl = \"https://x/t\"\npriority = 9\n",
                "notify[0].priority",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl = \"https://x/\"\non = [\"sometimes\"]\n",
                "notify[0].on",
            ),
            (
                "[[notify]]\nkind = \"ntfy\"\nurl = \"https://x/t\"\ntoken = \"a\"\ntoken_file = \"/t\"\n",
                "notify[0].token",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl = \"https://x/\"\npriority = 1\n",
                "notify[0].priority",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl = \"https://x/\"\non = []\n",
                "notify[0].on",
            ),
            (
                "[healthchecks]\nurl = \"hc-ping.com/x\"\n",
                "healthchecks.url",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{body}: {e}");
        }
        let e =
            parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://x/\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
