//! verify, check and drill against real servers and scratch instances.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Mosquitto, Pg, Ran, Redis, Workspace};

/// Scratch directories and processes of this workspace's kompose-dr runs.
fn scratch_leftovers(ws: &Workspace) -> (Vec<String>, Vec<String>) {
    let tmp = ws.tmp();
    let dirs = std::fs::read_dir(&tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kompose-dr-scratch-"))
                .collect()
        })
        .unwrap_or_default();
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(&*tmp.to_string_lossy()) {
                procs.push(c);
            }
        }
    }
    (dirs, procs)
}

struct Stack {
    pg: Pg,
    redis: Redis,
    ws: Workspace,
}

fn stack() -> Stack {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE app LOGIN; CREATE DATABASE linkwarden OWNER app",
    );
    pg.psql("linkwarden", "SET ROLE app; CREATE TABLE \"Link\" AS SELECT g AS id FROM generate_series(1, 250) g; CREATE TABLE tags (t text)");
    let redis = Redis::start(true, None);
    redis.fill(120);
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, r#"{"resolver":{"Account":null,"Certificates":[]}}"#).unwrap();
    ws.configure(&format!(
        "{}{}[[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        Workspace::pg_section(&pg, &["linkwarden"]),
        Workspace::redis_section(&redis),
        acme.display()
    ));
    ws.prepend_top_level(&format!(
        "reports_dir = \"{}\"",
        ws.dir.path().join("reports").display()
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    Stack { pg, redis, ws }
}

#[test]
fn verify_passes_a_good_snapshot_and_catches_damage() {
    let s = stack();
    let ws = &s.ws;
    let out = ws.run(&["--json", "verify"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["ok"], true);
    let sources: Vec<&str> = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "files/traefik-acme",
            "postgres/globals",
            "postgres/linkwarden",
            "redis",
            "config"
        ]
    );
    let lw = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["source"] == "postgres/linkwarden")
        .unwrap();
    assert!(
        lw["checks"].to_string().contains("2 tables, 250 rows"),
        "{lw}"
    );
    assert!(r["sources"].to_string().contains("120 keys"), "{r}");
    assert_eq!(
        scratch_leftovers(ws),
        (vec![], vec![]),
        "scratch instances remain"
    );

    // `check` without a key, and with --read-data.
    let out = ws.run(&["check"]);
    out.assert_exit(0);
    let out = ws.run(&["check", "--read-data"]);
    out.assert_exit(0);

    // A flipped byte: check catches it without any key; verify names the source.
    let m = &ws.manifests()[0];
    let archive = ws.archive(Workspace::artifact(m, "redis"));
    let good = std::fs::read(&archive).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    std::fs::write(&archive, &bad).unwrap();
    let keyless = ws.dir.path().join("keyless.toml");
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&keyless, cfg).unwrap();
    let out = Ran::of(
        Command::new(env!("CARGO_BIN_EXE_kompose-dr"))
            .args(["--config"])
            .arg(&keyless)
            .args(["--json", "check"]),
    );
    out.assert_exit(1);
    let c: serde_json::Value = out.json();
    assert_eq!(c["damaged"][0]["source"], "redis", "{c}");
    let out = ws.run(&["verify"]);
    out.assert_exit(1);
    out.assert_stdout_contains("FAILED  redis");

    // A truncated archive.
    std::fs::write(&archive, &good[..n - 10]).unwrap();
    let out = ws.run(&["--json", "verify", "--source", "redis"]);
    out.assert_exit(1);
    out.assert_stdout_contains("truncated");

    // A missing archive.
    std::fs::remove_file(&archive).unwrap();
    let out = ws.run(&["verify", "--source", "redis"]);
    out.assert_exit(1);
    out.assert_stdout_contains("redis");
    let out = ws.run(&["--json", "check"]);
    out.assert_exit(1);
    std::fs::write(&archive, &good).unwrap();

    // Facts that do not match the data: one table's recorded count is off.
    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let mut facts: serde_json::Value =
        serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    facts["sources"]["postgres/linkwarden"]["tables"]["public.Link"] = 251.into();
    let plain = ws.dir.path().join("facts.json");
    std::fs::write(&plain, facts.to_string()).unwrap();
    let sh = format!(
        "zstd -q -c {} | age -r {} > {}",
        plain.display(),
        ws.recipient,
        facts_path.display()
    );
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(&sh)
            .status()
            .unwrap()
            .success()
    );
    let bytes = std::fs::read(&facts_path).unwrap();
    use sha2::Digest;
    let manifest_path = ws
        .repo
        .join(format!("snapshots/{}.json", m["id"].as_str().unwrap()));
    let mut mj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    mj["facts"]["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    mj["facts"]["stored_bytes"] = bytes.len().into();
    std::fs::write(&manifest_path, serde_json::to_vec(&mj).unwrap()).unwrap();
    // Signed as the backup host would: the facts themselves are what is wrong.
    ws.sign(&manifest_path);
    let out = ws.run(&["verify", "--source", "postgres/linkwarden"]);
    out.assert_exit(1);
    out.assert_stdout_contains("table public.Link has 250 rows, 251 recorded");

    // The wrong identity.
    let other = ws.dir.path().join("other.txt");
    support::run_ok(Command::new("age-keygen").arg("-o").arg(&other));
    let cfg = std::fs::read_to_string(&ws.config).unwrap().replace(
        &ws.identity.display().to_string(),
        &other.display().to_string(),
    );
    std::fs::write(&ws.config, cfg).unwrap();
    let out = ws.run(&["verify"]);
    out.assert_exit(1);
    out.assert_stderr_contains("facts")
        .assert_stderr_contains("decrypt");
    assert_eq!(
        scratch_leftovers(ws),
        (vec![], vec![]),
        "scratch instances remain"
    );
    drop(s.pg);
    drop(s.redis);
}

#[test]
fn drills_report_restore_times_and_fail_on_a_failing_check() {
    let s = stack();
    let ws = &s.ws;
    let broker = Mosquitto::start(None);
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!(
            "{cfg}\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n\n[metrics]\ntextfile = \"{}\"\n",
            broker.port,
            ws.dir.path().join("m.prom").display()
        ),
    )
    .unwrap();
    let sub = broker.subscribe("kompose/#", None);
    let drill = ws.dir.path().join("drill.toml");
    std::fs::write(
        &drill,
        "name = \"quarterly\"\nsnapshot = \"oldest\"\n\n[[check]]\nsource = \"postgres/linkwarden\"\nsql = 'select count(*) from \"Link\"'\nmin = 200\n\n[[check]]\nsource = \"redis\"\nmin_keys = 100\n",
    )
    .unwrap();
    let out = ws.run(&["--json", "drill", "--drill", drill.to_str().unwrap()]);
    out.assert_exit(0);
    let stdout = out.stdout();
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let r = &reports[0];
    assert_eq!(r["ok"], true);
    for v in r["sources"].as_array().unwrap() {
        assert!(v["restore_seconds"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(r["sources"].to_string().contains("returned 250"), "{r}");
    let files = r["report_files"].as_array().unwrap();
    let md = std::fs::read_to_string(files[1].as_str().unwrap()).unwrap();
    assert!(
        md.contains("PASSED") && md.contains("| postgres/linkwarden |"),
        "{md}"
    );
    assert_eq!(sub.wait_for(1)[0].0, "kompose/system/drill/completed");
    let prom = std::fs::read_to_string(ws.dir.path().join("m.prom")).unwrap();
    assert!(
        prom.contains("kompose_dr_drill_last_status{drill=\"quarterly\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("kompose_dr_drill_last_success_timestamp_seconds{drill=\"quarterly\"}"),
        "{prom}"
    );
    assert!(prom.contains("kompose_dr_drill_last_restore_seconds{drill=\"quarterly\",source=\"postgres/linkwarden\"}"), "{prom}");

    // A failing SQL check fails the drill and publishes drill/failed.
    std::fs::write(&drill, "name = \"quarterly\"\n\n[[check]]\nsource = \"postgres/linkwarden\"\nsql = 'select count(*) from \"Link\"'\nequals = \"9999\"\n").unwrap();
    let out = ws.run(&["drill", "--drill", drill.to_str().unwrap()]);
    out.assert_exit(1);
    let msgs = sub.wait_for(2);
    assert_eq!(msgs[1].0, "kompose/system/drill/failed");
    let prom = std::fs::read_to_string(ws.dir.path().join("m.prom")).unwrap();
    assert!(
        prom.contains("kompose_dr_drill_last_status{drill=\"quarterly\"} 0"),
        "{prom}"
    );
    assert_eq!(
        msgs[1].1["data"]["failed"][0]["source"],
        "postgres/linkwarden"
    );
    // What the check found is data: it stays in the report, off the bus.
    assert!(
        msgs[1].1["data"]["failed"][0].get("detail").is_none(),
        "{}",
        msgs[1].1
    );
    assert!(!msgs[1].1.to_string().contains("returned"), "{}", msgs[1].1);
    assert_eq!(
        std::fs::read_dir(ws.dir.path().join("reports"))
            .unwrap()
            .count(),
        4,
        "reports keep history"
    );

    // SIGTERM in the middle: nothing remains.
    let mut child = ws
        .kdr()
        .args(["drill", "--drill", drill.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while scratch_leftovers(ws).0.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no scratch instance appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let start = Instant::now();
    while scratch_leftovers(ws) != (vec![], vec![]) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "left behind: {:?}",
            scratch_leftovers(ws)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_drill_without_a_key_fails_loudly() {
    let ws = Workspace::new();
    ws.configure("");
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&ws.config, cfg).unwrap();
    let drill = ws.dir.path().join("d.toml");
    std::fs::write(&drill, "name = \"d\"\n").unwrap();
    let out = ws.run(&["drill", "--drill", drill.to_str().unwrap()]);
    out.assert_exit(2);
    out.assert_stderr_contains("identity_file");
}

#[test]
fn missing_scratch_binaries_are_named_with_what_to_install() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let ws = Workspace::new();
    ws.configure(&format!(
        "{}[scratch]\npostgres_bin = \"/nonexistent/postgresql/{{major}}/bin\"\n",
        Workspace::pg_section(&pg, &["app"])
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let out = ws.run(&["verify"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("install postgresql-15") && err.contains("/nonexistent/postgresql/15/bin"),
        "{err}"
    );
    assert_eq!(scratch_leftovers(&ws), (vec![], vec![]));
}

#[test]
fn verify_without_globals_restores_the_data_without_owners() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE owner_only_here; CREATE DATABASE app OWNER owner_only_here",
    );
    pg.psql(
        "app",
        "SET ROLE owner_only_here; CREATE TABLE t AS SELECT generate_series(1, 7) n",
    );
    let ws = Workspace::new();
    // `postgres` itself too: replacing the maintenance database needs care.
    pg.psql("postgres", "CREATE TABLE in_postgres AS SELECT 1 AS x");
    let section = Workspace::pg_section(&pg, &["app", "postgres"])
        .replace("globals = true", "globals = false");
    ws.configure(&section);
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let out = ws.run(&["verify"]);
    out.assert_exit(0);
    out.assert_stdout_contains("1 tables, 7 rows");
}

#[test]
fn verify_warns_of_a_certificate_expiring_within_14_days_without_failing() {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    let soon = support::certificate(ws.dir.path(), &["soon.example.org"], 7);
    let later = support::certificate(ws.dir.path(), &["later.example.org"], 90);
    let body = serde_json::json!({
        "resolver": {
            "Account": { "Email": "ops@example.org" },
            "Certificates": [
                { "domain": { "main": "soon.example.org" }, "certificate": soon, "key": "a2V5", "Store": "default" },
                { "domain": { "main": "later.example.org" }, "certificate": later, "key": "a2V5", "Store": "default" }
            ]
        }
    });
    std::fs::write(&acme, serde_json::to_vec(&body).unwrap()).unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        acme.display()
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let out = ws.run(&["--json", "verify"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checks = r["sources"][0]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {r:#}"));
    let warn = checks
        .iter()
        .find(|c| c["name"] == "certificate soon.example.org expiry")
        .unwrap_or_else(|| panic!("no expiry warning in {checks:#?}"));
    assert_eq!(warn["warning"], true, "{warn}");
    assert!(
        warn["detail"].as_str().unwrap().contains("within 14 days"),
        "{warn}"
    );
    assert!(
        !checks
            .iter()
            .any(|c| c["name"] == "certificate later.example.org expiry"),
        "{checks:#?}"
    );
}

#[test]
fn drill_repository_drills_the_offsite_copy_and_an_unknown_name_is_a_usage_error() {
    let pg = crate::support::Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)",
    );
    let ws = Workspace::new();
    let offsite = ws.dir.path().join("offsite");
    ws.configure_repositories(
        &format!(
            "[[repository]]\nname = \"onsite\"\nurl = \"{}\"\n\n[[repository]]\nname = \"offsite\"\nurl = \"{}\"\n",
            ws.repo.display(),
            offsite.display()
        ),
        &Workspace::pg_section(&pg, &["app"]),
    );
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let drill = ws.dir.path().join("d.toml");
    std::fs::write(
        &drill,
        "name = \"q\"\n\n[[check]]\nsource = \"postgres/app\"\nsql = 'select count(*) from t'\nequals = \"2\"\n",
    )
    .unwrap();
    let d = drill.to_str().unwrap();
    let out = ws.run(&["--json", "drill", "--drill", d, "--repository", "offsite"]);
    out.assert_exit(0);
    assert_eq!(out.json()[0]["repository"], "offsite", "{}", out.stdout());
    let out = ws.run(&["drill", "--drill", d, "--repository", "nowhere"]);
    out.assert_exit(2);
    out.assert_stderr_contains("nowhere");
}
