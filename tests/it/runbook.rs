//! Runs every command of docs/RUNBOOK.md, in order, against throw-away
//! servers: the fenced `sh` blocks are extracted and run in one bash
//! session. The first block (the operator's settings) is followed by this
//! test's values; `docker` is a stand-in that runs `docker exec` commands
//! locally and stops/starts the test's Redis.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, Pg, Ran, Workspace, free_port, require, run_ok, script};

fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

struct RedisDaemon {
    port: u16,
}

impl Drop for RedisDaemon {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
    }
}

fn redis_ping(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

#[test]
fn every_runbook_command_works() {
    require("jq");
    require("redis-server");
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    let blocks = sh_blocks(&runbook);
    assert!(blocks.len() >= 10, "the runbook's sh blocks were not found");

    // The stack: PostgreSQL with linkwarden, Redis with AOF, an acme.json.
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE linkwarden");
    pg.psql("linkwarden", r#"CREATE TABLE "Link" AS SELECT g AS id, 'https://example.org/' || g AS url FROM generate_series(1, 300) g"#);
    let ws = Workspace::new();
    let redis_data = ws.dir.path().join("redis-data");
    std::fs::create_dir(&redis_data).unwrap();
    let port = free_port();
    let conf = ws.dir.path().join("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nappendonly yes\nsave \"\"\ndaemonize yes\nlogfile {}\npidfile {}\n",
            redis_data.display(),
            ws.dir.path().join("redis.log").display(),
            ws.dir.path().join("redis.pid").display()
        ),
    )
    .unwrap();
    run_ok(Command::new("redis-server").arg(&conf));
    let _redis = RedisDaemon { port };
    let start = Instant::now();
    while !redis_ping(port) {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..77 {
        run_ok(Command::new("redis-cli").args([
            "-p",
            &port.to_string(),
            "SET",
            &format!("k{i}"),
            "v",
        ]));
    }
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, r#"{"resolver":{"Account":null,"Certificates":[]}}"#).unwrap();
    std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o600)).unwrap();
    let original_acme = std::fs::read(&acme).unwrap();

    ws.configure(&format!(
        "{}[redis]\nurl = \"redis://127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        Workspace::pg_section(&pg, &["linkwarden"]),
        redis_data.display(),
        acme.display()
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);

    // The incident.
    pg.psql("linkwarden", r#"DELETE FROM "Link" WHERE id > 5"#);
    run_ok(Command::new("redis-cli").args(["-p", &port.to_string(), "FLUSHALL"]));
    std::fs::write(&acme, "{}").unwrap();

    // A docker stand-in.
    let shim = ws.dir.path().join("shim");
    std::fs::create_dir(&shim).unwrap();
    script(
        &shim.join("docker"),
        &format!(
            r#"#!/bin/bash
set -e
case "$1" in
  exec)
    shift; [ "$1" = -i ] && shift; container=$1; shift
    if [ "$container" = core_redis ] && [ "$1" = redis-cli ]; then shift; exec redis-cli -p {port} "$@"; fi
    exec "$@" ;;
  stop)
    [ "$2" = core_redis ] || exit 0
    redis-cli -p {port} shutdown >/dev/null 2>&1 || true
    for i in $(seq 100); do redis-cli -p {port} ping >/dev/null 2>&1 || exit 0; sleep 0.05; done
    echo "redis did not stop" >&2; exit 1 ;;
  start)
    [ "$2" = core_redis ] || exit 0
    redis-server {conf}
    for i in $(seq 100); do [ "$(redis-cli -p {port} ping 2>/dev/null)" = PONG ] && exit 0; sleep 0.05; done
    echo "redis did not start" >&2; exit 1 ;;
  restart) echo "restarted $2" ;;
  *) echo "docker stand-in: unsupported $*" >&2; exit 1 ;;
esac
"#,
            conf = conf.display()
        ),
    );

    let overrides = format!(
        "export KOMPOSE_DR_CONFIG={}\nREPO={}\nID_FILE={}\nREDIS_DATA={}\nACME={}\nINCIDENT={}\nexport PGHOST=127.0.0.1 PGPORT={} PGUSER=kompose PGPASSWORD={}\n",
        ws.config.display(),
        ws.repo.display(),
        ws.identity.display(),
        redis_data.display(),
        acme.display(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        pg.port,
        pg.password
    );
    let mut body = String::from("set -euo pipefail\nset -x\n");
    body.push_str(&blocks[0]);
    body.push_str(&overrides);
    for b in &blocks[1..] {
        body.push_str(b);
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kompose-dr"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}:{}:{}",
        shim.display(),
        bin_dir.display(),
        support::PG_BIN,
        std::env::var("PATH").unwrap()
    );
    // On failure, `set -x` in stderr shows which runbook command it was.
    let out = Ran::of(Command::new("bash").arg("-c").arg(&body).env("PATH", path));
    out.assert_exit(0);
    let stdout = out.stdout();

    // Part A restored everything in place, part B beside it.
    for db in [
        "linkwarden",
        "linkwarden_restored",
        "linkwarden_manual",
        "linkwarden_manual2",
    ] {
        assert_eq!(pg.psql(db, r#"SELECT count(*) FROM "Link""#), "300", "{db}");
    }
    assert_eq!(std::fs::read(&acme).unwrap(), original_acme);
    assert_eq!(
        std::fs::metadata(&acme).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dbsize = run_ok(Command::new("redis-cli").args(["-p", &port.to_string(), "DBSIZE"]));
    assert_eq!(dbsize.trim(), "77");
    assert!(stdout.contains("600 "), "stat shows mode 600: {stdout}");
}
