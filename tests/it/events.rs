//! MQTT events and Prometheus metrics against a real Mosquitto and promtool.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Mosquitto, Pg, Ran, Workspace, closed_port, require};

fn mqtt_section(broker_port: u16, extra: &str) -> String {
    format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\ntopic_prefix = \"kompose\"\n{extra}\n"
    )
}

fn metrics_section(ws: &Workspace) -> String {
    format!(
        "[metrics]\ntextfile = \"{}\"\n",
        ws.dir.path().join("kompose_dr.prom").display()
    )
}

fn textfile(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.dir.path().join("kompose_dr.prom")).unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn backup_events_carry_the_manifest_figures_and_failures() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE umami");
    let broker = Mosquitto::start(None);
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    let files = format!(
        "[[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        acme.display()
    );
    ws.configure(&format!(
        "{}{}{}{}",
        Workspace::pg_section(&pg, &["umami"]),
        files,
        mqtt_section(broker.port, ""),
        metrics_section(&ws)
    ));
    ws.init();
    let sub = broker.subscribe("kompose/#", None);

    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let msgs = sub.wait_for(1);
    let (topic, ev) = &msgs[0];
    assert_eq!(topic, "kompose/system/backup/completed");
    assert_eq!(ev["service"], "kompose-dr");
    assert_eq!(ev["event_type"], "backup.completed");
    assert_eq!(ev["event_id"].as_str().unwrap().len(), 36);
    assert!(chrono::DateTime::parse_from_rfc3339(ev["timestamp"].as_str().unwrap()).is_ok());
    let m = &ws.manifests()[0];
    assert_eq!(ev["data"]["snapshot"], m["id"]);
    assert_eq!(ev["data"]["status"], "ok");
    assert!(ev["data"]["duration_seconds"].as_f64().unwrap() > 0.0);
    let arts = ev["data"]["artifacts"].as_array().unwrap();
    // Three sources and the configuration.
    assert_eq!(arts.len(), 4);
    for a in arts {
        let ma = Workspace::artifact(m, a["source"].as_str().unwrap());
        assert_eq!(a["sha256"], ma["sha256"]);
        assert_eq!(a["bytes"], ma["stored_bytes"]);
        assert_eq!(a["repository"], "local");
        assert!(a["duration_seconds"].is_number());
    }

    // The metrics textfile is valid for promtool and has every source.
    let prom = textfile(&ws);
    assert_eq!(
        value(
            &prom,
            "kompose_dr_backup_last_status{source=\"postgres/umami\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &prom,
            "kompose_dr_repository_snapshots{repository=\"local\"}"
        ),
        Some(1.0)
    );
    assert!(
        value(
            &prom,
            "kompose_dr_repository_oldest_snapshot_timestamp_seconds{repository=\"local\"}"
        )
        .is_some()
    );
    require("promtool");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), prom.as_bytes()).unwrap();
    Ran::new("promtool check metrics", check.wait_with_output().unwrap()).assert_exit(0);

    // A failing source: `failed`, exit 3, the good sources still reported.
    ws.configure(&format!(
        "{}{}{}{}",
        Workspace::pg_section(&pg, &["umami", "missing"]),
        files,
        mqtt_section(broker.port, ""),
        metrics_section(&ws)
    ));
    let out = ws.run(&["backup"]);
    out.assert_exit(3);
    let msgs = sub.wait_for(2);
    let (topic, ev) = &msgs[1];
    assert_eq!(topic, "kompose/system/backup/failed");
    assert_eq!(ev["event_type"], "backup.failed");
    let failed = ev["data"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["source"], "postgres/missing");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    assert!(!ev.to_string().contains(&pg.password));
    let good = ev["data"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["source"] == "postgres/umami")
        .unwrap();
    assert_eq!(good["status"], "ok");
    assert!(good["sha256"].is_string());
    let prom = textfile(&ws);
    assert_eq!(
        value(
            &prom,
            "kompose_dr_backup_last_status{source=\"postgres/missing\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &prom,
            "kompose_dr_repository_snapshots{repository=\"local\"}"
        ),
        Some(2.0)
    );
}

#[test]
fn an_unreachable_broker_never_fails_or_stalls_a_backup() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let dead = closed_port();
    ws.configure(&format!(
        "[[files]]\nname = \"f\"\npath = \"{}\"\n{}{}",
        file.display(),
        mqtt_section(dead.port, "timeout = \"3s\""),
        metrics_section(&ws)
    ));
    ws.init();
    let start = Instant::now();
    let out = ws.run(&["backup"]);
    let took = start.elapsed();
    out.assert_exit(0);
    let stderr = out.stderr();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(
        stderr.matches("could not publish events").count(),
        1,
        "{stderr}"
    );
    let prom = textfile(&ws);
    assert_eq!(
        value(&prom, "kompose_dr_events_publish_failures_total"),
        Some(1.0),
        "{prom}"
    );
    // The counter accumulates across runs.
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    assert_eq!(
        value(&textfile(&ws), "kompose_dr_events_publish_failures_total"),
        Some(2.0)
    );
}

#[test]
fn a_broker_with_a_password() {
    let broker = Mosquitto::start(Some(("kdr", "mqtt-secret-77")));
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let files = format!("[[files]]\nname = \"f\"\npath = \"{}\"\n", file.display());
    let sub = broker.subscribe("kompose/#", Some(("kdr", "mqtt-secret-77")));

    // Without credentials: refused, said clearly, the backup still succeeds.
    ws.configure(&format!(
        "{files}{}{}",
        mqtt_section(broker.port, ""),
        metrics_section(&ws)
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let stderr = out.stderr();
    assert!(
        stderr.contains("refused") && stderr.contains("mqtt.username"),
        "{stderr}"
    );

    // With them: published.
    let env_file = ws.dir.path().join("secrets.env");
    std::fs::write(&env_file, "MQTT_PASSWORD=mqtt-secret-77\n").unwrap();
    let cfg = format!(
        "{files}{}{}",
        mqtt_section(
            broker.port,
            "username = \"kdr\"\npassword = \"${MQTT_PASSWORD}\""
        ),
        metrics_section(&ws)
    );
    ws.configure(&cfg);
    let text_cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!("env_file = \"{}\"\n{text_cfg}", env_file.display()),
    )
    .unwrap();
    let out = Ran::of(ws.kdr().args(["-v", "backup"]));
    out.assert_exit(0);
    let stderr = out.stderr();
    assert!(!stderr.contains("mqtt-secret-77"));
    let msgs = sub.wait_for(1);
    assert_eq!(msgs[0].0, "kompose/system/backup/completed");
}

#[test]
fn partial_runs_keep_the_other_sources_series() {
    let ws = Workspace::new();
    let a = ws.dir.path().join("a");
    let b = ws.dir.path().join("b");
    std::fs::write(&a, "a").unwrap();
    std::fs::write(&b, "b").unwrap();
    let files = |b_path: &std::path::Path| {
        format!(
            "[[files]]\nname = \"a\"\npath = \"{}\"\n[[files]]\nname = \"b\"\npath = \"{}\"\n{}",
            a.display(),
            b_path.display(),
            metrics_section(&ws)
        )
    };
    ws.configure(&files(&b));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let first = textfile(&ws);
    let b_success = value(
        &first,
        "kompose_dr_backup_last_success_timestamp_seconds{source=\"files/b\"}",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));

    // Only files/a: files/b's series stay as they were.
    ws.run(&["backup", "--source", "files/a"]).assert_exit(0);
    let second = textfile(&ws);
    assert_eq!(
        value(
            &second,
            "kompose_dr_backup_last_success_timestamp_seconds{source=\"files/b\"}"
        ),
        Some(b_success)
    );
    assert!(
        value(
            &second,
            "kompose_dr_backup_last_success_timestamp_seconds{source=\"files/a\"}"
        )
        .unwrap()
            > b_success
    );

    // files/b fails: status 0, last success kept.
    ws.configure(&files(std::path::Path::new("/nonexistent/b")));
    ws.run(&["backup"]).assert_exit(3);
    let third = textfile(&ws);
    assert_eq!(
        value(&third, "kompose_dr_backup_last_status{source=\"files/b\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &third,
            "kompose_dr_backup_last_success_timestamp_seconds{source=\"files/b\"}"
        ),
        Some(b_success)
    );
    assert_eq!(
        value(&third, "kompose_dr_backup_last_status{source=\"files/a\"}"),
        Some(1.0)
    );
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    require("promtool");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let check = Ran::of(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(dir),
    );
    check.assert_exit(0);
    let test = Ran::of(
        Command::new("promtool")
            .args([
                "test",
                "rules",
                "alerts.test.yml",
                "alerts-drill.test.yml",
                "alerts-absent.test.yml",
                "alerts-wal.test.yml",
                "alerts-deletion.test.yml",
            ])
            .current_dir(dir),
    );
    test.assert_exit(0);
}

/// Metric names in a textfile: its `# TYPE` families and its samples.
fn metric_names(prom: &str) -> std::collections::BTreeSet<String> {
    prom.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_kompose_dr_emits_and_shows_each() {
    require("promtool");
    // Every series kompose-dr writes: a backup, and a drill.
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    let ws = Workspace::new();
    let broker = closed_port(); // nothing listens: publish failures are counted
    ws.configure(&format!(
        "{}{}{}",
        Workspace::pg_section(&pg, &["app"]),
        metrics_section(&ws),
        mqtt_section(broker.port, "timeout = \"1s\"\n")
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let drill = ws.dir.path().join("d.toml");
    std::fs::write(&drill, "name = \"q\"\n").unwrap();
    ws.run(&["drill", "--drill", drill.to_str().unwrap()])
        .assert_exit(0);
    let mut emitted = metric_names(&textfile(&ws));
    assert!(emitted.len() >= 10, "{emitted:?}");
    // The WAL archiver's series (pitr:: checks it writes both).
    emitted.extend(
        [
            "kompose_dr_wal_last_archived_timestamp_seconds",
            "kompose_dr_wal_archive_lag_seconds",
            // A stack drill's (stack_drill:: checks it writes them).
            "kompose_dr_drill_rto_seconds",
            "kompose_dr_drill_snapshot_age_seconds",
            "kompose_dr_drill_app_healthy_seconds",
        ]
        .map(String::from),
    );

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/kompose-dr.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned()),
        );
    }
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        let names: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kompose_dr_"))
            .collect();
        assert!(!names.is_empty(), "`{e}` names no kompose-dr metric");
        for n in names {
            assert!(
                emitted.contains(n),
                "`{e}`: kompose-dr emits no {n} (it emits {emitted:?})"
            );
            used.insert(n.trim_end_matches("_total").to_owned());
        }
    }
    // Every family kompose-dr emits is on the dashboard.
    for n in emitted.iter().filter(|n| !n.ends_with("_total")) {
        assert!(used.contains(n), "{n} is on no panel");
    }
    // Every query is PromQL promtool accepts.
    let rules = ws.dir.path().join("dashboard-rules.yml");
    let body: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:q{i}\n        expr: '{}'\n",
                e.replace('\'', "''")
            )
        })
        .collect();
    std::fs::write(
        &rules,
        format!("groups:\n  - name: dashboard\n    rules:\n{body}"),
    )
    .unwrap();
    Ran::new(
        "promtool check rules",
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&rules)
            .output()
            .unwrap(),
    )
    .assert_exit(0);
}
