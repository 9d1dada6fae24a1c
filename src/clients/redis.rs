//! Redis as a client sees it: a connection (TCP, a unix socket for scratch
//! servers, or a byte bridge exec'd in the server's container), settings
//! (`CONFIG GET`/`SET`) and `INFO` sections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, RedisConnectionInfo};

use super::ClientError;
use crate::engine::{Engine, ExecStream, bridge_command};
use crate::model::config::RedisConfig;

/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to the configured Redis: at `host:port`, through its container,
/// or at a unix socket when `host` is a path (only scratch servers are).
pub async fn connect(cfg: &RedisConfig) -> Result<MultiplexedConnection, ClientError> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(u) = &cfg.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &cfg.password {
        settings = settings.set_password(p.expose());
    }
    match &cfg.container {
        Some(c) => connect_in_container(cfg, &c.name, c.engine.as_deref(), settings).await,
        None => connect_direct(cfg, settings).await,
    }
}

/// No network path: the connection runs over a byte bridge exec'd in the
/// container (see [`crate::clients::postgres`]).
async fn connect_in_container(
    cfg: &RedisConfig,
    name: &str,
    engine: Option<&str>,
    settings: RedisConnectionInfo,
) -> Result<MultiplexedConnection, ClientError> {
    let engine = Engine::connect(engine)?;
    let run = engine.exec(name, bridge_command(cfg.port)).await?;
    let (stream, bridge) = ExecStream::new(run).expect("stdin and stdout are attached");
    // The driver borrows the settings: one task owns both.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        match MultiplexedConnection::new(&settings, stream).await {
            Ok((con, driver)) => {
                if tx.send(Ok(con)).is_ok() {
                    driver.await;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let connect = async {
        rx.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::other(
                "the connection task ended",
            )))
        })
    };
    let place = format!("in container `{name}`");
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(source)) => Err(ClientError::RedisConnect {
            place,
            bridge: crate::engine::bridge_said(bridge).await,
            source,
        }),
        Err(_) => Err(ClientError::RedisTimeout { place }),
    }
}

/// Over TCP, or a unix socket when `host` is a path (the scratch Redis).
async fn connect_direct(
    cfg: &RedisConfig,
    settings: RedisConnectionInfo,
) -> Result<MultiplexedConnection, ClientError> {
    let (target, base) = if cfg.host.starts_with('/') {
        (
            cfg.host.clone(),
            redis::ConnectionAddr::Unix(PathBuf::from(&cfg.host)).into_connection_info(),
        )
    } else {
        let target = format!("{}:{}", cfg.host, cfg.port);
        let info = format!("redis://{target}").into_connection_info();
        (target, info)
    };
    let base = match base {
        Ok(b) => b,
        Err(source) => return Err(ClientError::RedisAddress { target, source }),
    };
    let info = base.set_redis_settings(settings);
    let client = match redis::Client::open(info) {
        Ok(c) => c,
        Err(source) => return Err(ClientError::RedisClient { target, source }),
    };
    let connect = client.get_multiplexed_async_connection();
    let place = format!("at {target}");
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(ClientError::RedisTimeout { place }),
        Ok(Err(source)) => Err(ClientError::RedisConnect {
            place,
            bridge: String::new(),
            source,
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

/// A setting of the server (`CONFIG GET name`).
pub async fn config_get(
    con: &mut MultiplexedConnection,
    name: &str,
) -> Result<String, ClientError> {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(con)
        .await
        .map_err(|source| ClientError::Redis {
            command: format!("CONFIG GET {name}"),
            source,
        })?;
    v.get(1)
        .cloned()
        .ok_or_else(|| ClientError::RedisNoSetting(name.to_owned()))
}

/// Changes a setting of the server (`CONFIG SET name value`).
pub async fn config_set(
    con: &mut MultiplexedConnection,
    name: &str,
    value: &str,
) -> Result<(), ClientError> {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(con)
        .await
        .map_err(|source| ClientError::Redis {
            command: format!("CONFIG SET {name}"),
            source,
        })
}

/// A section of `INFO`, as key → value.
pub async fn info(
    con: &mut MultiplexedConnection,
    section: &str,
) -> Result<BTreeMap<String, String>, ClientError> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .map_err(|source| ClientError::Redis {
            command: format!("INFO {section}"),
            source,
        })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// Key counts per database from `INFO keyspace` (`db0:keys=3,expires=0,…`).
pub fn parse_keyspace(info: &BTreeMap<String, String>) -> BTreeMap<String, u64> {
    info.iter()
        .filter(|(k, _)| k.starts_with("db"))
        .filter_map(|(k, v)| {
            let keys = v.split(',').find_map(|kv| kv.strip_prefix("keys="))?;
            Some((k.clone(), keys.parse().ok()?))
        })
        .collect()
}
