//! What the operations tell the rest of the stack: the backup event on the
//! bus, the backup series in the metrics textfile, the notice for
//! `[[notify]]` (Gotify, ntfy, webhooks) and the `[healthchecks]` pings.
//! The transports (MQTT, HTTP, the textfile format) live in
//! [`crate::events`]; the content is decided here, next to the reports it
//! is made from.

use crate::events::metrics::{
    self, BACKUP_LAST_BYTES, BACKUP_LAST_DURATION, BACKUP_LAST_STATUS, BACKUP_LAST_SUCCESS, Metrics,
};
use crate::events::notify::{Job, Notice, Ping, notify, ping};
use crate::events::{Event, event, publish};
use crate::model::config::Config;
use crate::model::manifest::ArtifactStatus;
use crate::ops::backup::{BackupReport, RunStatus};
use crate::repository::Repository;

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

/// Records a backup run: per source of this run, status and duration;
/// for good ones also the end time and stored bytes.
pub fn record_backup(m: &mut Metrics, report: &BackupReport) {
    let end = report.finished_at.timestamp() as f64;
    for a in &report.artifacts {
        let l = [("source", a.source.as_str())];
        let ok = a.status == ArtifactStatus::Ok && report.status != RunStatus::Failed;
        m.set(BACKUP_LAST_STATUS, &l, if ok { 1.0 } else { 0.0 });
        m.set(BACKUP_LAST_DURATION, &l, a.duration_seconds);
        if ok {
            m.set(BACKUP_LAST_SUCCESS, &l, end);
            m.set(BACKUP_LAST_BYTES, &l, a.stored_bytes as f64);
        }
    }
}

/// The host's name, for notice titles.
pub fn host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// The notice of a backup run for `[[notify]]`: on failure, every failed
/// source and repository with its error; on success, a summary.
pub fn backup_notice(report: &BackupReport, event: Event) -> Notice {
    let success = report.status == RunStatus::Ok;
    let mut lines = Vec::new();
    if success {
        lines.push(format!(
            "snapshot {}: {} sources in {:.0}s",
            report.snapshot,
            report.artifacts.len(),
            report.duration_seconds
        ));
    } else {
        lines.push(format!(
            "snapshot {} is {}",
            report.snapshot,
            serde_json::to_value(report.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ));
        for a in report
            .artifacts
            .iter()
            .filter(|a| a.status == ArtifactStatus::Failed)
        {
            lines.push(format!(
                "{} failed: {}",
                a.source,
                a.error.as_deref().unwrap_or("(no message)")
            ));
        }
        for r in &report.repositories {
            for e in &r.errors {
                lines.push(format!("repository {}: {e}", r.name));
            }
        }
    }
    Notice {
        success,
        title: format!(
            "kompose-dr backup {} on {}",
            if success { "completed" } else { "failed" },
            host()
        ),
        message: lines.join("\n"),
        tags: if success {
            vec!["white_check_mark".into(), "backup".into()]
        } else {
            vec!["rotating_light".into(), "backup".into()]
        },
        event,
    }
}

/// Runs `job` between the dead-man's switch's start ping and its
/// success or failure ping; a run that could not start at all (no lock, a
/// bad `--source`) is told to `[[notify]]` too. What the CLI and the agent
/// both run, through [`crate::ops::backup::run_and_notify`].
pub async fn around_backup<F>(
    config: &Config,
    job: F,
) -> Result<BackupReport, crate::error::Failure>
where
    F: std::future::Future<Output = Result<BackupReport, crate::error::Failure>>,
{
    let mut failed = Vec::new();
    if !ping(config, Job::Backup, Ping::Start, "backup started").await {
        failed.push("healthchecks");
    }
    match job.await {
        Ok(report) => {
            after_backup(config, &report, failed).await;
            Ok(report)
        }
        Err(f) => {
            let scrub = config.redactor();
            let message = scrub.scrub(&f.message);
            let prefix = config
                .mqtt
                .as_ref()
                .map_or("kompose", |m| m.topic_prefix.as_str());
            let notice = Notice {
                success: false,
                title: format!("kompose-dr backup failed on {}", host()),
                message: message.clone(),
                tags: vec!["rotating_light".into(), "backup".into()],
                event: event(
                    prefix,
                    "backup",
                    "failed",
                    serde_json::json!({ "status": "failed", "error": message }),
                ),
            };
            failed.extend(notify(config, &notice).await);
            if !ping(config, Job::Backup, Ping::Failure, &message).await {
                failed.push("healthchecks");
            }
            count_notify_failures(config, &failed);
            Err(f)
        }
    }
}

/// Adds `failed` (target kinds) to the notification failure counter.
fn count_notify_failures(config: &Config, failed: &[&str]) {
    let Some(mc) = &config.metrics else { return };
    if failed.is_empty() {
        return;
    }
    let mut m = Metrics::load(&mc.textfile);
    for f in failed {
        m.add(metrics::NOTIFY_FAILURES, &[("target", f)], 1.0);
    }
    if let Err(e) = m.write(&mc.textfile) {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
}

/// After a backup run: publish its event, tell `[[notify]]` and ping
/// `[healthchecks]`, then update the metrics textfile (this run's sources,
/// the repositories' snapshot counts, the publish and notification
/// failure counters; `failed` holds earlier notification failures, the
/// start ping's).
pub async fn after_backup(config: &Config, report: &BackupReport, mut failed: Vec<&'static str>) {
    let prefix = config
        .mqtt
        .as_ref()
        .map_or("kompose", |m| m.topic_prefix.as_str());
    let ev = backup_event(prefix, report);
    let published = publish(config, std::slice::from_ref(&ev)).await;
    let notice = backup_notice(report, ev);
    failed.extend(notify(config, &notice).await);
    let which = if notice.success {
        Ping::Success
    } else {
        Ping::Failure
    };
    if !ping(config, Job::Backup, which, &notice.message).await {
        failed.push("healthchecks");
    }
    let Some(mc) = &config.metrics else { return };
    let mut m = Metrics::load(&mc.textfile);
    record_backup(&mut m, report);
    if !published {
        m.add(metrics::PUBLISH_FAILURES, &[], 1.0);
    }
    for f in &failed {
        m.add(metrics::NOTIFY_FAILURES, &[("target", f)], 1.0);
    }
    for rc in &config.repositories {
        let repo = Repository::open(rc);
        match repo.listing().await {
            Ok(listing) => {
                m.record_repository(rc.name.as_str(), &listing.ours);
                m.record_deletions(
                    rc.name.as_str(),
                    listing.vanished.len(),
                    listing.behind.is_some(),
                );
            }
            Err(e) => {
                tracing::warn!(repository = %rc.name, error = %e, "cannot count snapshots for the metrics")
            }
        }
    }
    if let Err(e) = m.write(&mc.textfile) {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
}
