//! Notifications beyond the bus: Gotify, ntfy and webhooks
//! (`[[notify]]`), and the dead-man's switch (`[healthchecks]`) pinged at
//! a job's start, success and failure, so that a dead host or timer —
//! silence — is what alerts.
//!
//! Like MQTT, delivery is best effort: bounded by each target's timeout,
//! logged and counted on failure (`kompose_dr_notify_failures_total`),
//! never failing the job. Targets are named in logs by kind and host
//! only; tokens travel in headers, and the healthchecks URL (its uuid is
//! the secret) is never printed at all. What a notice says is decided by
//! the operations ([`crate::ops::backup::notify`], the drill's report).

use bytes::Bytes;

use super::Event;
use super::http::{self, HttpError};
use crate::model::config::{Config, NotifyConfig, NotifyKind};

/// What a job tells people.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Whether the job succeeded (chooses the targets by their `on`).
    pub success: bool,
    /// One line: `kompose-dr backup failed on HOST`.
    pub title: String,
    /// The body: which sources failed and why, or a summary.
    pub message: String,
    /// ntfy tags (emoji short codes and words).
    pub tags: Vec<String>,
    /// The event (the MQTT payload), what a webhook receives.
    pub event: Event,
}

/// Which job's check a ping is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `[healthchecks] url`.
    Backup,
    /// `[healthchecks] drill_url`.
    Drill,
    /// `[healthchecks] prune_url`.
    Prune,
}

/// A dead-man's-switch ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// The job started: `{url}/start`.
    Start,
    /// The job succeeded: `{url}`.
    Success,
    /// The job failed: `{url}/fail`.
    Failure,
}

/// The name a target goes by in logs and metrics: its kind.
pub fn kind_name(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Gotify => "gotify",
        NotifyKind::Ntfy => "ntfy",
        NotifyKind::Webhook => "webhook",
    }
}

/// Sends `notice` to every `[[notify]]` target that wants it (all at
/// once); returns the kinds of the targets it could not reach.
pub async fn notify(config: &Config, notice: &Notice) -> Vec<&'static str> {
    let scrub = config.redactor();
    let targets = config.notify.iter().filter(|n| {
        if notice.success {
            n.on_success
        } else {
            n.on_failure
        }
    });
    let sends = targets.map(|n| async move {
        let r = send(n, notice).await;
        (n, r)
    });
    let mut failed = Vec::new();
    for (n, r) in futures::future::join_all(sends).await {
        let host = n.url.host_str().unwrap_or_default();
        match r {
            Ok(status) => {
                tracing::info!(
                    target_kind = kind_name(n.kind),
                    host,
                    status,
                    "notification sent"
                )
            }
            Err(e) => {
                let e = scrub.scrub(&e.to_string());
                tracing::warn!(target_kind = kind_name(n.kind), host, error = %e, "could not send the notification (the job itself is not affected)");
                failed.push(kind_name(n.kind));
            }
        }
    }
    failed
}

/// One delivery in the target's protocol.
async fn send(n: &NotifyConfig, notice: &Notice) -> Result<u16, HttpError> {
    let bearer = n
        .token
        .as_ref()
        .map(|t| ("Authorization", format!("Bearer {}", t.expose())));
    match n.kind {
        NotifyKind::Gotify => {
            let mut url = n.url.clone();
            let path = format!("{}/message", url.path().trim_end_matches('/'));
            url.set_path(&path);
            let priority = n.priority.unwrap_or(if notice.success { 4 } else { 8 });
            let body = serde_json::json!({
                "title": notice.title,
                "message": notice.message,
                "priority": priority,
            });
            let token = n
                .token
                .as_ref()
                .map(|t| t.expose().to_owned())
                .unwrap_or_default();
            http::post(
                &url,
                &[
                    ("Content-Type", "application/json".into()),
                    ("X-Gotify-Key", token),
                ],
                Bytes::from(serde_json::to_vec(&body).expect("JSON")),
                n.timeout,
            )
            .await
        }
        NotifyKind::Ntfy => {
            let priority = n.priority.unwrap_or(if notice.success { 3 } else { 4 });
            let mut headers = vec![
                ("Title", header_safe(&notice.title)),
                ("Priority", priority.to_string()),
                ("Tags", notice.tags.join(",")),
                ("Content-Type", "text/plain; charset=utf-8".into()),
            ];
            headers.extend(bearer);
            http::post(
                &n.url,
                &headers,
                Bytes::from(notice.message.clone()),
                n.timeout,
            )
            .await
        }
        NotifyKind::Webhook => {
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            headers.extend(bearer);
            http::post(
                &n.url,
                &headers,
                Bytes::from(serde_json::to_vec(&notice.event).expect("JSON")),
                n.timeout,
            )
            .await
        }
    }
}

/// A header value: printable ASCII only (ntfy takes UTF-8 titles
/// RFC 2047-encoded; ours are ASCII but for host names).
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Pings `job`'s dead-man's switch, if configured, with `body` (a summary
/// healthchecks shows with the ping). Returns false if it could not be
/// delivered (logged, never raised).
pub async fn ping(config: &Config, job: Job, which: Ping, body: &str) -> bool {
    let Some(hc) = &config.healthchecks else {
        return true;
    };
    let base = match job {
        Job::Backup => Some(&hc.url),
        Job::Drill => hc.drill_url.as_ref(),
        Job::Prune => hc.prune_url.as_ref(),
    };
    let Some(base) = base else { return true };
    let suffix = match which {
        Ping::Start => "/start",
        Ping::Success => "",
        Ping::Failure => "/fail",
    };
    let Ok(url) = url::Url::parse(&format!("{}{suffix}", base.expose())) else {
        return false;
    };
    let scrub = config.redactor();
    let host = url.host_str().unwrap_or_default().to_owned();
    match http::post(
        &url,
        &[("Content-Type", "text/plain; charset=utf-8".into())],
        Bytes::from(body.to_owned()),
        hc.timeout,
    )
    .await
    {
        Ok(_) => {
            tracing::debug!(host, ping = ?which, "healthchecks pinged");
            true
        }
        Err(e) => {
            let e = scrub.scrub(&e.to_string());
            tracing::warn!(host, ping = ?which, error = %e, "could not ping healthchecks (the job itself is not affected)");
            false
        }
    }
}
