//! Telling the rest of the stack what happened: MQTT events on the stack's
//! event bus and Prometheus metrics for node_exporter (docs/DESIGN.md §6).
//!
//! Both happen after the manifest is committed and neither can fail a
//! backup: an unreachable broker is logged once and counted in
//! `kompose_dr_events_publish_failures_total`, within a bounded time
//! (`mqtt.timeout`, 10 s by default). The drill commands publish and record
//! through the same functions ([`event`], [`publish`], [`metrics::Metrics`]);
//! what goes into an event or a series is decided by the operations
//! ([`crate::ops::backup::notify`]). Gotify, ntfy, webhooks and the
//! healthchecks dead-man's switch are in [`notify`], over the small HTTP
//! client in [`http`], under the same rule: logged and counted, never
//! failing a job.

pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod tls;

pub use mqtt::PublishError;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::config::Config;

/// One message for the bus.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Full topic: `<prefix>/system/<category>/<action>`.
    #[serde(skip)]
    pub topic: String,
    /// A random UUID (v4), unique to this event.
    pub event_id: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// The service that sent the event: always `kompose-dr`.
    pub service: &'static str,
    /// `<category>.<action>`: `backup.completed`, `drill.failed`, …
    pub event_type: String,
    /// The event's payload, chosen by the operation that sends it; see
    /// [`crate::ops::backup::notify`] for a backup's.
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

/// Publishes events to the configured broker, if any. Returns whether they
/// were all acknowledged; failures are logged once, never raised.
pub async fn publish(config: &Config, events: &[Event]) -> bool {
    let Some(mqtt) = &config.mqtt else {
        return true;
    };
    match mqtt::publish(mqtt, events).await {
        Ok(()) => {
            tracing::info!(broker = %mqtt::broker(mqtt), events = events.len(), "events published");
            true
        }
        Err(e) => {
            let e = config.redactor().scrub(&e.to_string());
            tracing::warn!(broker = %mqtt::broker(mqtt), error = %e, "could not publish events (the backup itself is not affected)");
            false
        }
    }
}
