//! Telling the rest of the stack what happened: MQTT events on the stack's
//! event bus and Prometheus metrics for node_exporter (design §6).
//!
//! Both happen after the manifest is committed and neither can fail a
//! backup: an unreachable broker is logged once and counted in
//! `kompose_dr_events_publish_failures_total`, within a bounded time
//! (`mqtt.timeout`, 10 s by default). The drill commands publish and record
//! through the same functions ([`event`], [`publish`], [`metrics::Metrics`]).

pub mod metrics;
pub mod mqtt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::{BackupReport, RunStatus};
use crate::config::Config;
use crate::manifest::ArtifactStatus;
use crate::repository::Repository;
use metrics::Metrics;

/// One message for the bus.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Full topic: `<prefix>/system/<category>/<action>`.
    #[serde(skip)]
    pub topic: String,
    /// Unique id.
    pub event_id: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Always `kompose-dr`.
    pub service: &'static str,
    /// `<category>.<action>`: `backup.completed`, `drill.failed`, …
    pub event_type: String,
    /// What happened.
    pub data: serde_json::Value,
}

/// An event in the stack's documented shape, on
/// `<prefix>/system/<category>/<action>`.
pub fn event(prefix: &str, category: &str, action: &str, data: serde_json::Value) -> Event {
    Event {
        topic: format!("{prefix}/system/{category}/{action}"),
        event_id: uuid::Uuid::new_v4().to_string(),
        timestamp: Utc::now(),
        service: "kompose-dr",
        event_type: format!("{category}.{action}"),
        data,
    }
}

/// The `backup.completed` or `backup.failed` event of a run: `completed`
/// only when every source succeeded in every repository.
pub fn backup_event(prefix: &str, report: &BackupReport) -> Event {
    let action = if report.status == RunStatus::Ok {
        "completed"
    } else {
        "failed"
    };
    let artifacts: Vec<serde_json::Value> = report
        .artifacts
        .iter()
        .flat_map(|a| {
            let per_repo: Vec<serde_json::Value> = if a.repositories.is_empty() {
                vec![serde_json::json!({
                    "source": a.source, "repository": null, "status": a.status,
                    "bytes": a.stored_bytes, "sha256": a.sha256, "duration_seconds": a.duration_seconds,
                    "error": a.error,
                })]
            } else {
                a.repositories
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "source": a.source, "repository": r, "status": a.status,
                            "bytes": a.stored_bytes, "sha256": a.sha256, "duration_seconds": a.duration_seconds,
                            "error": a.error,
                        })
                    })
                    .collect()
            };
            per_repo
        })
        .collect();
    let failed: Vec<serde_json::Value> = report
        .artifacts
        .iter()
        .filter(|a| a.status == ArtifactStatus::Failed)
        .map(|a| serde_json::json!({ "source": a.source, "error": a.error }))
        .chain(report.repositories.iter().flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| serde_json::json!({ "repository": r.name, "error": e }))
        }))
        .collect();
    event(
        prefix,
        "backup",
        action,
        serde_json::json!({
            "snapshot": report.snapshot,
            "status": report.status,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "duration_seconds": report.duration_seconds,
            "artifacts": artifacts,
            "failed": failed,
        }),
    )
}

/// Publishes events to the configured broker, if any. Returns whether they
/// were all acknowledged; failures are logged once, never raised.
pub async fn publish(config: &Config, events: &[Event]) -> bool {
    let Some(mqtt) = &config.mqtt else {
        return true;
    };
    match mqtt::publish(mqtt, events).await {
        Ok(()) => {
            tracing::info!(broker = %format!("{}:{}", mqtt.host, mqtt.port), events = events.len(), "events published");
            true
        }
        Err(e) => {
            let e = crate::secret::Redactor::new(config.secrets()).scrub(&e);
            tracing::warn!(broker = %format!("{}:{}", mqtt.host, mqtt.port), error = %e, "could not publish events (the backup itself is not affected)");
            false
        }
    }
}

/// After a backup run: publish its event, then update the metrics textfile
/// (this run's sources, the repositories' snapshot counts, and the publish
/// failure counter).
pub async fn after_backup(config: &Config, report: &BackupReport) {
    let prefix = config
        .mqtt
        .as_ref()
        .map_or("kompose", |m| m.topic_prefix.as_str());
    let published = publish(config, &[backup_event(prefix, report)]).await;
    let Some(mc) = &config.metrics else { return };
    let mut m = Metrics::load(&mc.textfile);
    m.record_backup(report);
    if !published {
        m.add(metrics::PUBLISH_FAILURES, &[], 1.0);
    }
    for rc in &config.repositories {
        let repo = Repository::open(rc);
        match repo.snapshots().await {
            Ok((snaps, _)) => m.record_repository(rc.name.as_str(), &snaps),
            Err(e) => {
                tracing::warn!(repository = %rc.name, error = %e, "cannot count snapshots for the metrics")
            }
        }
    }
    if let Err(e) = m.write(&mc.textfile) {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
}
