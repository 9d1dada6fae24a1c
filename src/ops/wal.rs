//! `kompose-dr wal` and the agent's WAL archiving (docs/DESIGN.md §11):
//! the archiver of [`crate::sources::postgres::wal`] run with what the
//! configuration says, plus its metrics in the textfile.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Failure;
use crate::events::metrics::{Metrics, WAL_LAG, WAL_LAST_ARCHIVED};
use crate::model::config::Config;
use crate::pipeline::EncodeSettings;
use crate::repository::Repository;
use crate::sources::SourceContext;
use crate::sources::postgres::wal::{Archiver, SharedStatus};

/// How often the archiver's metrics are written.
const METRICS_EVERY: Duration = Duration::from_secs(5);

/// The archiver the configuration describes: `[postgres.wal]` must be on,
/// and at least one repository must answer.
pub async fn archiver(config: &Config) -> Result<Archiver, Failure> {
    let pg = config
        .postgres
        .as_ref()
        .filter(|p| p.wal.is_some())
        .ok_or_else(|| {
            Failure::usage(format!(
                "configuration {}: WAL archiving is off: add [postgres.wal] with enabled = true",
                config.path.display()
            ))
        })?;
    let wal = pg.wal.clone().expect("checked");
    let encryption = config.encryption.as_ref().ok_or_else(|| {
        Failure::usage(format!(
            "configuration {}: [encryption] recipients are needed to archive WAL",
            config.path.display()
        ))
    })?;
    let mut repositories = Vec::new();
    for rc in &config.repositories {
        let repo = Repository::open(rc);
        if !repo.may_commit() {
            return Err(Failure::usage(format!(
                "configuration {}: no [signing] key_file to sign WAL records for repository `{}`; \
                 readers refuse unsigned records (or pass --allow-unsigned)",
                config.path.display(),
                repo.name()
            )));
        }
        match repo.marker().await {
            Ok(_) => repositories.push(repo),
            Err(e) => {
                tracing::warn!(repository = %rc.name, error = %e, "repository does not answer: WAL is not archived there until the archiver restarts")
            }
        }
    }
    if repositories.is_empty() {
        return Err(Failure::failed(
            "no repository answers: WAL cannot be archived anywhere",
        ));
    }
    // A container that is not there is the configuration's fault (exit 2).
    let resolved = crate::clients::postgres::resolve(pg).await?;
    let ctx = SourceContext {
        snapshot: String::new(),
        repositories,
        encode: EncodeSettings {
            level: config.compression.level,
            recipients: encryption.recipients.clone(),
        },
        redactor: config.redactor(),
        progress: None,
        timeouts: config.timeouts.clone(),
    };
    Ok(Archiver::new(resolved, wal, ctx).with_image(config.scratch.image.clone()))
}

/// Writes the archiver's metrics to the textfile, if one is configured.
pub fn write_metrics(config: &Config, status: &SharedStatus) {
    let Some(mc) = &config.metrics else { return };
    let covered = status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .covered_until;
    let Some(covered) = covered else { return };
    let lag = (chrono::Utc::now() - covered).num_milliseconds().max(0) as f64 / 1000.0;
    if let Err(e) = Metrics::update(&mc.textfile, |m| {
        m.set(WAL_LAST_ARCHIVED, &[], covered.timestamp() as f64);
        m.set(WAL_LAG, &[], lag);
    }) {
        tracing::warn!(textfile = %mc.textfile.display(), error = %e, "cannot write the WAL metrics");
    }
}

/// Archives until `stop`, writing metrics as it goes.
pub async fn run(config: Arc<Config>, stop: CancellationToken) -> Result<(), Failure> {
    let archiver = archiver(&config).await?;
    let status = archiver.status();
    let metrics = {
        let (config, status, stop) = (config.clone(), status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                write_metrics(&config, &status);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(METRICS_EVERY) => {}
                }
            }
            write_metrics(&config, &status);
        })
    };
    let result = archiver.run(stop.clone()).await;
    stop.cancel();
    let _ = metrics.await;
    result.map_err(|e| Failure::from(e).context("WAL archiving"))
}
