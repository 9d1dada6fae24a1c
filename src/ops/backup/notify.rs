//! What the operations tell the rest of the stack: the backup event on the
//! bus and the backup series in the metrics textfile. The transport (MQTT,
//! the textfile format) lives in [`crate::events`]; the content is decided
//! here, next to the reports it is made from.

use crate::events::metrics::{
    self, BACKUP_LAST_BYTES, BACKUP_LAST_DURATION, BACKUP_LAST_STATUS, BACKUP_LAST_SUCCESS, Metrics,
};
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
    record_backup(&mut m, report);
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
