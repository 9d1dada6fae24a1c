//! WAL archiving in container mode (issue 24, items 1, 2, 9): `core-postgres`
//! publishes no port and the host has no PostgreSQL programs, so
//! pg_receivewal runs in a sidecar container made from the server's image,
//! sharing its network namespace, with the host's spool bind-mounted.
//!
//! kompose-dr runs inside the engine's network namespace, as in
//! `docker_native`; the control session goes through the engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::{Engine, Stack, engine, kdr, run};
use crate::support::{Workspace, wait_until};

const SIDECAR_LABEL: &str = "io.kompose-dr.wal-sidecar";

/// The spool directory: two levels below a directory that does not exist
/// (the archiver makes them, 0700).
fn spool_dir(ws: &Workspace) -> PathBuf {
    ws.dir.path().join("var-lib").join("kompose-dr").join("wal")
}

/// `[postgres] container = …` with no url, and `[postgres.wal]`.
fn configure(ws: &Workspace, engine: &Engine, stack: &Stack) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\ncontainer = \"{pg}\"\ndatabases = [\"*\"]\n\n\
         [postgres.wal]\nmax_lag = \"2s\"\nslot = \"kdr_test\"\nspool_dir = \"{spool}\"\n\n",
        host = engine.host,
        pg = stack.postgres,
        spool = spool_dir(ws).display(),
    ));
}

/// `kompose-dr wal` in the background, its log in `wal.log`; killed when
/// dropped.
struct Archiver(Child);

impl Archiver {
    fn start(ws: &Workspace, engine: &Engine) -> Archiver {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ws.dir.path().join("wal.log"))
            .unwrap();
        Archiver(
            kdr(ws, engine)
                .arg("wal")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        // nsenter without --fork execs the binary: the child is kompose-dr.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), sig).unwrap();
    }

    /// Waits (60 s at most) for it to end.
    fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "wal did not end");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wal_log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.dir.path().join("wal.log")).unwrap_or_default()
}

/// Every WAL record in the local repository.
fn records(repo: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(clusters) = std::fs::read_dir(repo.join("wal")) else {
        return out;
    };
    for c in clusters.flatten() {
        for tl in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(tl.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "json")
                    && let Ok(text) = std::fs::read_to_string(&p)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// The newest `covered_until` of the archive's records.
fn covered_until(repo: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    records(repo)
        .iter()
        .filter_map(|r| r["covered_until"].as_str())
        .filter_map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .max()
}

/// The server's clock now, in UTC.
fn server_now(stack: &Stack) -> chrono::DateTime<chrono::Utc> {
    stack
        .psql(
            "kompose",
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .parse()
        .unwrap()
}

/// Waits until the archive covers every commit before `t`, with no gap
/// (`kompose-dr check`).
fn wait_covered(ws: &Workspace, engine: &Engine, t: chrono::DateTime<chrono::Utc>) {
    let start = Instant::now();
    loop {
        let covered = covered_until(&ws.repo);
        if covered.is_some_and(|c| c >= t) {
            let c = run(ws, engine, &["check", "--json"]);
            if c.code() == Some(0)
                && c.json()["wal"].as_array().is_some_and(|w| {
                    w.iter()
                        .all(|x| x["gaps"].as_array().is_some_and(|g| g.is_empty()))
                })
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the archive never covered {t} (newest: {covered:?}); archiver log:\n{}",
            wal_log(ws)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The cluster's spool (`spool_dir/<system id>`), once the archiver made it.
fn spool(ws: &Workspace) -> PathBuf {
    let dir = spool_dir(ws);
    let mut found = None;
    wait_until("the archiver to make its spool", 60, || {
        found = std::fs::read_dir(&dir).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.is_dir() && p.extension().is_none())
        });
        found.is_some()
    });
    found.unwrap()
}

/// The sidecars of `spool`.
fn sidecars(engine: &Engine, spool: &Path) -> Vec<String> {
    engine.containers_with_label(&format!("{SIDECAR_LABEL}={}", spool.display()))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_archiver_runs_in_a_sidecar_that_lives_as_long_as_it_and_resumes_without_a_gap() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql(
        "kompose",
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    let ws = Workspace::new();
    configure(&ws, engine, &stack);
    assert!(!ws.dir.path().join("var-lib").exists());
    run(&ws, engine, &["init"]).assert_exit(0);

    let mut wal = Archiver::start(&ws, engine);
    let spool = spool(&ws);
    // The state directories are made as systemd's StateDirectory= would.
    for d in [
        ws.dir.path().join("var-lib"),
        ws.dir.path().join("var-lib/kompose-dr"),
        spool_dir(&ws),
        spool.clone(),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    wait_until("the sidecar", 60, || sidecars(engine, &spool).len() == 1);
    let first = sidecars(engine, &spool);
    // The password is in no container's configuration.
    let inspected = engine.inspect(&first[0], "{{json .}}");
    assert!(
        !inspected.contains(&stack.pg_password),
        "the password shows in docker inspect"
    );
    assert!(
        inspected.contains("container:"),
        "not in the server's network namespace: {inspected}"
    );

    stack.psql(
        "kompose",
        "INSERT INTO t (id) SELECT generate_series(1, 100)",
    );
    let t1 = server_now(&stack);
    wait_covered(&ws, engine, t1);
    assert!(!records(&ws.repo).is_empty());

    // kill -9: the sidecar stays.
    wal.signal(nix::sys::signal::Signal::SIGKILL);
    wal.wait();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sidecars(engine, &spool), first, "the sidecar went with -9");

    // The next archiver removes it, and resumes with no gap.
    stack.psql(
        "kompose",
        "INSERT INTO t (id) SELECT generate_series(101, 200)",
    );
    let mut wal = Archiver::start(&ws, engine);
    wait_until("the old sidecar to go and a new one to come", 60, || {
        let now = sidecars(engine, &spool);
        now.len() == 1 && now != first
    });
    stack.psql(
        "kompose",
        "INSERT INTO t (id) SELECT generate_series(201, 300)",
    );
    let t2 = server_now(&stack);
    wait_covered(&ws, engine, t2);
    assert!(covered_until(&ws.repo).unwrap() >= t2);

    // SIGTERM: the archiver stops and its sidecar goes with it.
    wal.signal(nix::sys::signal::Signal::SIGTERM);
    let status = wal.wait();
    assert!(status.success(), "wal ended {status}:\n{}", wal_log(&ws));
    assert!(
        sidecars(engine, &spool).is_empty(),
        "sidecar left: {:?}",
        sidecars(engine, &spool)
    );
    assert!(
        !spool.with_extension("auth").join("pgpass").exists(),
        "the pgpass file outlived the sidecar"
    );
}

/// `X/Y` → the position.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn a_base_backup_taken_before_the_archiver_ever_ran_has_its_wal() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("kompose", "CREATE TABLE t (id int PRIMARY KEY)");
    let ws = Workspace::new();
    configure(&ws, engine, &stack);
    run(&ws, engine, &["init"]).assert_exit(0);
    run(&ws, engine, &["backup", "--source", "postgres/cluster"]).assert_exit(0);
    let (start_segment, snapshot) = base_start(&ws);
    // The server moves on to later segments before the archiver starts.
    for i in 0..2 {
        stack.psql(
            "kompose",
            &format!(
                "INSERT INTO t SELECT g FROM generate_series({0}*100+1, {0}*100+100) g",
                i
            ),
        );
        stack.psql("kompose", "SELECT pg_switch_wal()");
    }

    let mut wal = Archiver::start(&ws, engine);
    let t = server_now(&stack);
    wait_covered(&ws, engine, t);
    let first = records(&ws.repo)
        .iter()
        .filter(|r| r["kind"] != "history")
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .min()
        .unwrap();
    assert_eq!(
        first,
        start_segment,
        "the archive does not start at the base backup's start; log:\n{}",
        wal_log(&ws)
    );
    assert!(
        wal_log(&ws).contains(&snapshot),
        "the log does not name the base backup it started from:\n{}",
        wal_log(&ws)
    );
    wal.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(wal.wait().success(), "{}", wal_log(&ws));
}

/// The segment where the newest snapshot's base backup starts, and the
/// snapshot's id.
fn base_start(ws: &Workspace) -> (String, String) {
    let manifest = &ws.manifests()[0];
    let base = &Workspace::artifact(manifest, "postgres/cluster")["wal"];
    let size = base["segment_size"].as_u64().unwrap();
    let number = lsn(base["start_lsn"].as_str().unwrap()) / size;
    let per = 0x1_0000_0000 / size;
    let segment = format!(
        "{:08X}{:08X}{:08X}",
        base["timeline"].as_u64().unwrap(),
        number / per,
        number % per
    );
    (segment, manifest["id"].as_str().unwrap().to_owned())
}

#[test]
fn a_base_backup_whose_start_the_server_recycled_is_named_in_the_gap_and_archiving_goes_on() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("kompose", "CREATE TABLE t (id int PRIMARY KEY)");
    let ws = Workspace::new();
    configure(&ws, engine, &stack);
    run(&ws, engine, &["init"]).assert_exit(0);
    run(&ws, engine, &["backup", "--source", "postgres/cluster"]).assert_exit(0);
    let (segment, snapshot) = base_start(&ws);
    // The server recycles the segment before any archiver ran.
    wait_until("the server to recycle the base backup's start", 60, || {
        stack.psql("kompose", "SELECT pg_switch_wal()");
        stack.psql("kompose", "CHECKPOINT");
        stack.psql(
            "kompose",
            &format!("SELECT count(*) FROM pg_ls_waldir() WHERE name = '{segment}'"),
        ) == "0"
    });

    let mut wal = Archiver::start(&ws, engine);
    wait_until("the gap to be reported", 60, || {
        wal_log(&ws).contains(&format!("recycled WAL from segment {segment} on"))
    });
    let log = wal_log(&ws);
    let line = log
        .lines()
        .find(|l| l.contains(&format!("recycled WAL from segment {segment} on")))
        .unwrap();
    assert!(
        line.contains(&format!("base backup of snapshot {snapshot}")),
        "the gap does not name the base backup: {line}"
    );
    // Archiving goes on from the server's position.
    stack.psql("kompose", "INSERT INTO t SELECT generate_series(1, 100)");
    let t = server_now(&stack);
    let start = Instant::now();
    while covered_until(&ws.repo).is_none_or(|c| c < t) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "archiving did not go on after the gap:\n{}",
            wal_log(&ws)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    wal.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(wal.wait().success(), "{}", wal_log(&ws));
}
