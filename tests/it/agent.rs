//! The agent for real: a seconds-level schedule, /metrics and /healthz,
//! SIGHUP, and SIGTERM in the middle of a backup.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{self, Pg, Ran, Workspace, wait_until};

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The port the agent logging JSON to `log` serves /metrics on, once it
/// says so (it binds port 0: no port is chosen before it runs).
fn served_port(log: &std::path::Path) -> u16 {
    let mut port = None;
    wait_until("the agent to serve /metrics", 20, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "serving /metrics and /healthz")
            .and_then(|v| {
                v["fields"]["address"]
                    .as_str()?
                    .parse::<std::net::SocketAddr>()
                    .ok()
            })
            .map(|a| a.port());
        port.is_some()
    });
    port.unwrap()
}

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn the_agent_runs_policies_on_schedule_and_serves_metrics() {
    let ws = Workspace::new();
    let f = ws.dir.path().join("f.txt");
    std::fs::write(&f, "data").unwrap();
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("fast.toml"),
        "name = \"fast\"\nschedule = \"*/2 * * * * *\"\nsources = [\"files/*\"]\n",
    )
    .unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"f\"\npath = \"{}\"\n\n[metrics]\ntextfile = \"{}\"\n\n[agent]\nlisten = \"127.0.0.1:0\"\n",
        f.display(),
        ws.dir.path().join("m.prom").display()
    ));
    ws.prepend_top_level(&format!("policies_dir = \"{}\"", policies.display()));
    ws.init();

    let log = ws.dir.path().join("agent.log");
    let mut agent = ws
        .kdr()
        .args(["--log-format", "json", "agent"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let port = served_port(&log);
    wait_until("two scheduled backups", 20, || {
        let out = ws.run(&["--json", "snapshots"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap_or_default();
        v["snapshots"].as_array().is_some_and(|a| a.len() >= 2)
    });
    let m = ws.manifests();
    assert!(m.iter().all(|m| m["policy"] == "fast"));
    assert!(get(port, "/healthz").ends_with("ok\n"));
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains("kompose_dr_backup_last_status{source=\"files/f\"} 1"),
        "{metrics}"
    );
    assert!(get(port, "/nope").starts_with("HTTP/1.1 404"));

    // SIGHUP with a broken configuration keeps the old one.
    std::fs::write(
        policies.join("broken.toml"),
        "name = \"broken\"\nschedule = \"every day\"\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until("the agent to refuse the broken reload", 20, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("keeping the old one"))
    });
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent survives a broken reload"
    );

    sigterm(&agent);
    let mut output = agent.wait_with_output().unwrap();
    output.stderr = std::fs::read(&log).unwrap();
    let out = Ran::new("kompose-dr agent", output);
    out.assert_exit(0);
    let log = out.stderr();
    let first = log.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "--log-format json: {first}"
    );
    assert!(log.contains("keeping the old one"), "{log}");
}

#[test]
fn sigterm_mid_backup_exits_0_and_commits_nothing() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let ws = Workspace::new();
    let (bin, dumped) = support::pg_dump_then(&ws, "exec sleep 30");
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.toml"),
        "name = \"p\"\nschedule = \"* * * * * *\"\n",
    )
    .unwrap();
    ws.configure(&Workspace::pg_section_bin(&pg, &["app"], &bin));
    ws.prepend_top_level(&format!("policies_dir = \"{}\"", policies.display()));
    ws.init();

    let mut agent = ws
        .kdr()
        .arg("agent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the dump", 20, || dumped.exists());
    let start = Instant::now();
    sigterm(&agent);
    let status = agent.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(ws.manifests().is_empty(), "no snapshot was committed");
    let mut finished = Vec::new();
    let mut stack = vec![ws.repo.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().to_string_lossy().ends_with(".zst.age") {
                finished.push(e.path());
            }
        }
    }
    assert!(finished.is_empty(), "{finished:?}");
    // The killed pg_dump is gone too.
    wait_until("pg_dump to be killed", 5, || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*bin.to_string_lossy()))
                .unwrap_or(false)
        })
    });
}
