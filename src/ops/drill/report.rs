//! What a drill leaves behind: its report as JSON and Markdown in
//! `reports_dir`, the `drill/completed` or `drill/failed` event, and the
//! drill metrics.

use std::path::{Path, PathBuf};

use super::{DrillError, DrillReport};
use crate::events::metrics::{self, Metrics};
use crate::model::config::Config;

/// Writes the report as `<drill>-<time>.json` and `.md` (0600) into `dir`;
/// returns their paths.
pub(super) fn write_report(dir: &Path, report: &DrillReport) -> Result<Vec<PathBuf>, DrillError> {
    crate::storage::local::create_dir_private(dir).map_err(DrillError::io(format!(
        "cannot create reports_dir {}",
        dir.display()
    )))?;
    let stem = format!(
        "{}-{}",
        report.drill,
        report.started_at.format("%Y%m%dT%H%M%SZ")
    );
    let json = dir.join(format!("{stem}.json"));
    let md = dir.join(format!("{stem}.md"));
    let mut with_paths = report.clone();
    with_paths.report_files = vec![json.clone(), md.clone()];
    for (path, body) in [
        (
            &json,
            serde_json::to_string_pretty(&with_paths).expect("report serialises"),
        ),
        (&md, markdown(&with_paths)),
    ] {
        // reports_dir may lie in a local repository, which is untrusted:
        // never write through a symlink or FIFO planted at the name.
        let name = path.file_name().expect("a report has a file name");
        crate::storage::local::replace_file_in(dir, name, body.as_bytes())
            .map_err(DrillError::io(format!("cannot write {}", path.display())))?;
    }
    Ok(vec![json, md])
}

/// The Markdown report.
pub fn markdown(r: &DrillReport) -> String {
    let mut s = format!(
        "# Restore drill {}: {}\n\n- repository: {}\n- snapshot: {} (taken {})\n- ran: {} to {}\n\n",
        r.drill,
        if r.ok { "PASSED" } else { "FAILED" },
        r.repository,
        r.snapshot,
        r.snapshot_time.to_rfc3339(),
        r.started_at.to_rfc3339(),
        r.finished_at.to_rfc3339()
    );
    s.push_str("| source | time to restore | verdict |\n| --- | ---: | --- |\n");
    for v in &r.sources {
        s.push_str(&format!(
            "| {} | {:.1} s | {} |\n",
            v.source,
            v.restore_seconds,
            if v.ok { "ok" } else { "FAILED" }
        ));
    }
    if let Some(st) = &r.stack {
        stack_markdown(&mut s, st);
    }
    for v in &r.sources {
        s.push_str(&format!("\n## {}\n\n", v.source));
        for c in &v.checks {
            let mark = if c.ok {
                "ok"
            } else if c.warning {
                "warning"
            } else {
                "FAILED"
            };
            s.push_str(&format!(
                "- **{mark}** {}: {}\n",
                c.name,
                c.detail.replace('\n', " ")
            ));
        }
    }
    s
}

/// A stack drill's part of the Markdown report: RTO, RPO, steps, apps,
/// and the failed apps' logs.
fn stack_markdown(s: &mut String, st: &super::stack::StackReport) {
    s.push_str(&format!(
        "\n## The stack\n\n- RTO (drill start to every app healthy): {}\n- snapshot age (the RPO then): {:.0} s\n",
        st.rto_seconds
            .map_or_else(|| "not reached".to_owned(), |x| format!("{x:.1} s")),
        st.snapshot_age_seconds
    ));
    if let Some(f) = &st.failure {
        s.push_str(&format!("- **FAILED**: {}\n", f.replace('\n', " ")));
    }
    s.push_str("\n| step | time | verdict | detail |\n| --- | ---: | --- | --- |\n");
    for p in &st.steps {
        s.push_str(&format!(
            "| {} | {:.1} s | {} | {} |\n",
            p.name,
            p.seconds,
            if p.ok { "ok" } else { "FAILED" },
            p.detail.replace('\n', " ").replace('|', "\\|")
        ));
    }
    if !st.apps.is_empty() {
        s.push_str("\n| app | time to healthy | verdict |\n| --- | ---: | --- |\n");
        for a in &st.apps {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                a.app,
                a.seconds_to_healthy
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.1} s")),
                if a.ok { "healthy" } else { "FAILED" }
            ));
        }
    }
    for a in st.apps.iter().filter(|a| !a.ok) {
        s.push_str(&format!(
            "\n### app {}: FAILED\n\n{}\n",
            a.app,
            a.detail.replace('\n', " ")
        ));
        if !a.log.is_empty() {
            s.push_str("\nIts last log lines:\n\n```text\n");
            for line in a.log.split(" | ") {
                s.push_str(line);
                s.push('\n');
            }
            s.push_str("```\n");
        }
    }
}

/// Publishes the drill's event and records its metrics; neither failing
/// fails the drill.
/// The notice of a drill for `[[notify]]`: the verdict, the snapshot, and
/// which checks failed (by name: what they found is data, and stays in the
/// report).
fn drill_notice(
    r: &DrillReport,
    failed: &[serde_json::Value],
    event: crate::events::Event,
) -> crate::events::notify::Notice {
    let mut lines = vec![format!(
        "drill {} of snapshot {} in {}: {}",
        r.drill,
        r.snapshot,
        r.repository,
        if r.ok { "passed" } else { "FAILED" }
    )];
    for f in failed {
        lines.push(format!(
            "{}: {} failed",
            f["source"].as_str().unwrap_or_default(),
            f["check"].as_str().unwrap_or_default()
        ));
    }
    if let Some(p) = r.report_files.first() {
        lines.push(format!("report: {}", p.display()));
    }
    crate::events::notify::Notice {
        success: r.ok,
        title: format!(
            "kompose-dr drill {} {} on {}",
            r.drill,
            if r.ok { "passed" } else { "failed" },
            crate::ops::backup::notify::host()
        ),
        message: lines.join("\n"),
        tags: if r.ok {
            vec!["white_check_mark".into(), "drill".into()]
        } else {
            vec!["rotating_light".into(), "drill".into()]
        },
        event,
    }
}

pub(super) async fn publish_and_record(config: &Config, r: &DrillReport) {
    let prefix = config
        .mqtt
        .as_ref()
        .map_or("kompose", |m| m.topic_prefix.as_str());
    let failed: Vec<serde_json::Value> = r
        .sources
        .iter()
        .flat_map(|v| {
            v.checks
                .iter()
                .filter(|c| !c.ok && !c.warning)
                // Which check, not what it found: a SQL result or a count is
                // data, and the bus is plaintext. The report holds the detail.
                .map(move |c| serde_json::json!({ "source": v.source, "check": c.name }))
        })
        .collect();
    let ev = crate::events::event(
        prefix,
        "drill",
        if r.ok { "completed" } else { "failed" },
        serde_json::json!({
            "drill": r.drill,
            "repository": r.repository,
            "snapshot": r.snapshot,
            "status": if r.ok { "ok" } else { "failed" },
            "duration_seconds": (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0,
            "sources": r.sources.iter().map(|v| serde_json::json!({
                "source": v.source, "restore_seconds": v.restore_seconds, "ok": v.ok,
            })).collect::<Vec<_>>(),
            "failed": failed,
            "report": r.report_files,
        }),
    );
    let ev = with_stack(ev, r);
    let published = crate::events::publish(config, std::slice::from_ref(&ev)).await;
    let notice = drill_notice(r, &failed, ev);
    let mut notify_failed = crate::events::notify::notify(config, &notice).await;
    let which = if r.ok {
        crate::events::notify::Ping::Success
    } else {
        crate::events::notify::Ping::Failure
    };
    if !crate::events::notify::ping(
        config,
        crate::events::notify::Job::Drill,
        which,
        &notice.message,
    )
    .await
    {
        notify_failed.push("healthchecks");
    }
    record_metrics(config, r, &notify_failed, published);
}

/// The drill's metrics, written to the textfile.
fn record_metrics(config: &Config, r: &DrillReport, notify_failed: &[&str], published: bool) {
    let Some(mc) = &config.metrics else { return };
    let mut m = Metrics::load(&mc.textfile);
    for f in notify_failed {
        m.add(metrics::NOTIFY_FAILURES, &[("target", f)], 1.0);
    }
    let l = [("drill", r.drill.as_str())];
    m.set(metrics::DRILL_LAST_STATUS, &l, if r.ok { 1.0 } else { 0.0 });
    if r.ok {
        m.set(
            metrics::DRILL_LAST_SUCCESS,
            &l,
            r.finished_at.timestamp() as f64,
        );
    }
    for v in &r.sources {
        m.set(
            metrics::DRILL_LAST_RESTORE,
            &[("drill", r.drill.as_str()), ("source", v.source.as_str())],
            v.restore_seconds,
        );
    }
    if let Some(st) = &r.stack {
        record_stack(&mut m, &r.drill, st);
    }
    if !published {
        m.add(metrics::PUBLISH_FAILURES, &[], 1.0);
    }
    if let Err(e) = m.write(&mc.textfile) {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
}

/// A stack drill's RTO, snapshot age and apps in the event's payload (the
/// apps by name and time: their logs stay in the report).
fn with_stack(mut ev: crate::events::Event, r: &DrillReport) -> crate::events::Event {
    if let (Some(st), Some(obj)) = (&r.stack, ev.data.as_object_mut()) {
        obj.insert("scope".into(), "stack".into());
        obj.insert("rto_seconds".into(), serde_json::json!(st.rto_seconds));
        obj.insert(
            "snapshot_age_seconds".into(),
            serde_json::json!(st.snapshot_age_seconds),
        );
        obj.insert(
            "apps".into(),
            st.apps
                .iter()
                .map(|a| serde_json::json!({"app": a.app, "seconds_to_healthy": a.seconds_to_healthy, "ok": a.ok}))
                .collect(),
        );
    }
    ev
}

/// A stack drill's metrics: the RTO (when reached), the snapshot's age,
/// each app's time to healthy.
fn record_stack(m: &mut Metrics, drill: &str, st: &super::stack::StackReport) {
    let l = [("drill", drill)];
    if let Some(rto) = st.rto_seconds {
        m.set(metrics::DRILL_RTO, &l, rto);
    }
    m.set(metrics::DRILL_SNAPSHOT_AGE, &l, st.snapshot_age_seconds);
    for a in &st.apps {
        if let Some(t) = a.seconds_to_healthy {
            m.set(
                metrics::DRILL_APP_HEALTHY,
                &[("drill", drill), ("app", a.app.as_str())],
                t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stack::{AppVerdict, StackReport, Step};
    use super::*;

    fn stack_report(rto: Option<f64>) -> DrillReport {
        let t = chrono::Utc::now();
        DrillReport {
            drill: "quarterly-stack".into(),
            repository: "offsite".into(),
            snapshot: "20261205T030000Z-000001".into(),
            snapshot_time: t,
            started_at: t,
            finished_at: t,
            ok: rto.is_some(),
            sources: Vec::new(),
            report_files: Vec::new(),
            stack: Some(StackReport {
                rto_seconds: rto,
                snapshot_age_seconds: 3600.0,
                steps: vec![Step {
                    name: "apps".into(),
                    seconds: 12.5,
                    ok: rto.is_some(),
                    detail: "1 app(s)".into(),
                }],
                apps: vec![AppVerdict {
                    app: "link_app".into(),
                    seconds_to_healthy: rto.map(|_| 9.0),
                    ok: rto.is_some(),
                    detail: "Docker reports it unhealthy".into(),
                    log: if rto.is_some() {
                        String::new()
                    } else {
                        "ERROR: relation \"app_table\" does not exist | app check failed".into()
                    },
                }],
                failure: rto
                    .is_none()
                    .then(|| "apps: app link_app: not healthy".into()),
            }),
        }
    }

    #[test]
    fn the_event_carries_the_rto_and_the_apps_times_not_their_logs() {
        let r = stack_report(Some(42.0));
        let ev = with_stack(
            crate::events::event("kompose", "drill", "completed", serde_json::json!({})),
            &r,
        );
        assert_eq!(ev.data["rto_seconds"], 42.0);
        assert_eq!(ev.data["snapshot_age_seconds"], 3600.0);
        assert_eq!(ev.data["apps"][0]["seconds_to_healthy"], 9.0);
        let failed = with_stack(
            crate::events::event("kompose", "drill", "failed", serde_json::json!({})),
            &stack_report(None),
        );
        assert!(failed.data["rto_seconds"].is_null());
        assert!(!failed.data.to_string().contains("app_table"));
    }

    #[test]
    fn the_markdown_shows_the_rto_and_a_failed_apps_log() {
        let md = markdown(&stack_report(Some(42.0)));
        assert!(
            md.contains("RTO (drill start to every app healthy): 42.0 s"),
            "{md}"
        );
        assert!(md.contains("| link_app | 9.0 s | healthy |"), "{md}");
        let md = markdown(&stack_report(None));
        assert!(
            md.contains("RTO (drill start to every app healthy): not reached"),
            "{md}"
        );
        assert!(md.contains("### app link_app: FAILED"), "{md}");
        assert!(
            md.contains("ERROR: relation \"app_table\" does not exist\napp check failed\n"),
            "{md}"
        );
    }

    #[test]
    fn the_metrics_carry_the_rto() {
        let mut m = Metrics::default();
        record_stack(
            &mut m,
            "quarterly-stack",
            r_stack(&stack_report(Some(42.0))),
        );
        let text = m.render();
        assert!(
            text.contains("kompose_dr_drill_rto_seconds{drill=\"quarterly-stack\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("kompose_dr_drill_app_healthy_seconds{"),
            "{text}"
        );
    }

    fn r_stack(r: &DrillReport) -> &StackReport {
        r.stack.as_ref().unwrap()
    }
}
