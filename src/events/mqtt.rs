//! Publishing to an MQTT broker with rumqttc, QoS 1, within a time bound.
//!
//! rumqttc's event loop must be polled for anything to happen: it runs in
//! its own task, with exponential backoff after connection errors, and
//! reports acknowledgements back. `publish` returns once every message is
//! acknowledged, the broker refused the connection (bad credentials do not
//! improve by retrying), or the timeout passed.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, MqttOptions, Packet, QoS, Transport,
};
use tokio::sync::mpsc;

use super::Event;
use crate::model::config::{ContainerRef, MqttConfig};

enum Progress {
    Acked,
    Refused(String),
    Error(String),
}

/// rustls trusting `mqtt.ca_file` or the system's roots.
fn tls_config(cfg: &MqttConfig) -> Result<rumqttc::TlsConfiguration, super::tls::TlsError> {
    let ca = cfg.ca_file.as_deref().map(|path| super::tls::CaFile {
        key: "mqtt.ca_file",
        path,
    });
    Ok(rumqttc::TlsConfiguration::Rustls(
        super::tls::client_config(ca)?,
    ))
}

/// Why events could not be published. Never fails a backup: the caller
/// logs it and counts it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker's container (`mqtt.container`) could not be found or has
    /// no address.
    #[error("{0}")]
    Container(String),
    /// TLS could not be set up (CA file, system roots).
    #[error("TLS for the broker: {0}")]
    Tls(#[source] super::tls::TlsError),
    /// The broker refused the connection (credentials, ACL).
    #[error("{why} ({target}); check mqtt.username and mqtt.password")]
    Refused {
        /// `host:port`.
        target: String,
        /// The broker's answer.
        why: String,
    },
    /// The client could not queue an event.
    #[error("cannot queue the event for {target}: {message}")]
    Queue {
        /// `host:port`.
        target: String,
        /// The client's error.
        message: String,
    },
    /// The connection ended before every event was acknowledged.
    #[error("the connection to {target} ended: {last}")]
    Ended {
        /// `host:port`.
        target: String,
        /// The last connection error seen.
        last: String,
    },
    /// Not every event was acknowledged within `mqtt.timeout`.
    #[error("no acknowledgement from {target} within {after}{last}")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The timeout, for people.
        after: String,
        /// ` (last error: …)`, or empty.
        last: String,
    },
}

impl crate::error::Classify for PublishError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// Publishes `events` (QoS 1) and waits for every acknowledgement, at most
/// `cfg.timeout` in all.
pub async fn publish(cfg: &MqttConfig, events: &[Event]) -> Result<(), PublishError> {
    if events.is_empty() {
        return Ok(());
    }
    let resolved;
    let cfg = match &cfg.container {
        None => cfg,
        Some(c) => {
            resolved = MqttConfig {
                host: container_address(c).await?,
                ..cfg.clone()
            };
            &resolved
        }
    };
    let (client, eventloop) = AsyncClient::new(options(cfg)?, events.len() + 4);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(eventloop, tx));
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut last_error: Option<String> = None;
    let work = send_and_wait(&client, &mut rx, events, &target, &mut last_error);
    let result = match tokio::time::timeout(cfg.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(PublishError::Timeout {
            target: target.clone(),
            after: humantime::format_duration(cfg.timeout).to_string(),
            last: last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default(),
        }),
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
    driver.abort();
    result
}

/// The broker container's address on its network, as the engine reports
/// it: the host routes to its bridge networks, so no port needs publishing.
pub async fn container_address(c: &ContainerRef) -> Result<String, PublishError> {
    let engine = crate::engine::Engine::connect(c.engine.as_deref())
        .map_err(|e| PublishError::Container(e.to_string()))?;
    let info = engine
        .running(&c.name)
        .await
        .map_err(|e| PublishError::Container(e.to_string()))?;
    info.address().map(|ip| ip.to_string()).ok_or_else(|| {
        PublishError::Container(format!(
            "container `{}` has no network address (network mode none or host?): \
             attach it to a bridge network, or set mqtt.url",
            c.name
        ))
    })
}

/// How the broker is named in logs: `host:port`, or its container.
pub fn broker(cfg: &MqttConfig) -> String {
    match &cfg.container {
        Some(c) => format!("container {}:{}", c.name, cfg.port),
        None => format!("{}:{}", cfg.host, cfg.port),
    }
}

/// The client options: id, keep-alive, credentials and TLS.
fn options(cfg: &MqttConfig) -> Result<MqttOptions, PublishError> {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true);
    if let Some(user) = &cfg.username {
        opts.set_credentials(
            user,
            cfg.password
                .as_ref()
                .map(|p| p.expose())
                .unwrap_or_default(),
        );
    }
    if cfg.tls {
        opts.set_transport(Transport::Tls(tls_config(cfg).map_err(PublishError::Tls)?));
    }
    Ok(opts)
}

/// Drives the connection, reporting acknowledgements and errors on `tx`;
/// reconnects with exponential backoff until a refusal or the caller stops
/// listening.
async fn drive(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Progress>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                backoff = Duration::from_millis(100);
                if tx.send(Progress::Acked).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                let _ = tx.send(Progress::Refused(format!(
                    "the broker refused the connection: {code:?}"
                )));
                return;
            }
            Err(e) => {
                if tx.send(Progress::Error(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Queues every event and waits until each is acknowledged; the last
/// connection error seen is kept in `last_error` for the caller's timeout
/// message.
async fn send_and_wait(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<Progress>,
    events: &[Event],
    target: &str,
    last_error: &mut Option<String>,
) -> Result<(), PublishError> {
    for e in events {
        let body = serde_json::to_vec(e).expect("events serialise");
        if let Err(err) = client
            .publish(&e.topic, QoS::AtLeastOnce, false, body)
            .await
        {
            // The event loop may already have ended: say why it did.
            while let Ok(p) = rx.try_recv() {
                if let Progress::Refused(why) = p {
                    return Err(PublishError::Refused {
                        target: target.to_owned(),
                        why,
                    });
                }
            }
            return Err(PublishError::Queue {
                target: target.to_owned(),
                message: err.to_string(),
            });
        }
    }
    let mut acked = 0;
    while acked < events.len() {
        match rx.recv().await {
            Some(Progress::Acked) => acked += 1,
            Some(Progress::Refused(why)) => {
                return Err(PublishError::Refused {
                    target: target.to_owned(),
                    why,
                });
            }
            Some(Progress::Error(e)) => {
                if last_error.is_none() {
                    tracing::debug!(broker = %target, error = %e, "MQTT connection error; retrying");
                }
                *last_error = Some(e);
            }
            None => break,
        }
    }
    if acked < events.len() {
        return Err(PublishError::Ended {
            target: target.to_owned(),
            last: last_error.clone().unwrap_or_default(),
        });
    }
    Ok(())
}

/// Connects to the broker and waits for its CONNACK, at most `limit`:
/// `doctor`'s proof that the broker is reachable and takes the configured
/// credentials. Nothing is published.
pub async fn probe(cfg: &MqttConfig, limit: Duration) -> Result<String, PublishError> {
    let resolved;
    let cfg = match &cfg.container {
        None => cfg,
        Some(c) => {
            resolved = MqttConfig {
                host: container_address(c).await?,
                ..cfg.clone()
            };
            &resolved
        }
    };
    let target = format!("{}:{}", cfg.host, cfg.port);
    let (client, mut eventloop) = AsyncClient::new(options(cfg)?, 4);
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    return Err(PublishError::Refused {
                        target: target.clone(),
                        why: format!("the broker refused the connection: {code:?}"),
                    });
                }
                Err(e) => {
                    return Err(PublishError::Ended {
                        target: target.clone(),
                        last: format!(
                            "{e}; is the broker running and listening there? check mqtt.url (or mqtt.container)"
                        ),
                    });
                }
            }
        }
    };
    let result = match tokio::time::timeout(limit, wait).await {
        Ok(r) => r,
        Err(_) => Err(PublishError::Timeout {
            target: target.clone(),
            after: humantime::format_duration(limit).to_string(),
            last: " (is the broker up? check mqtt.url; [timeouts] connect sets the limit)".into(),
        }),
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), client.disconnect()).await;
    result.map(|()| format!("{target} accepted the connection (CONNACK)"))
}
