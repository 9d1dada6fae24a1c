//! Point-in-time recovery (docs/DESIGN.md §11): base backups, the WAL
//! archiver (`kompose-dr wal`), one database back to any second while the
//! others keep theirs, the window refused outside, gaps found by `check`
//! and refused by restore, and an archiver killed with -9 resuming without
//! a gap. Against a real PostgreSQL 15 with pg_receivewal.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Pg, Ran, Workspace, wait_until};

/// The server's clock now, RFC 3339 in UTC with microseconds.
fn server_now(pg: &Pg) -> String {
    pg.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
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

/// The newest `covered_until` of the WAL records in `repo`.
fn covered_until(repo: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    records(repo)
        .iter()
        .filter_map(|r| r["covered_until"].as_str())
        .filter_map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .max()
}

/// Waits until the archive says every commit before `t` is in it.
fn wait_covered(ws: &Workspace, t: &str) {
    let t: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
    let start = Instant::now();
    loop {
        let covered = covered_until(&ws.repo);
        // Covered, and continuous: an earlier segment may still be on its
        // way after a reconnect.
        if covered.is_some_and(|c| c >= t) {
            let c = ws.run(&["check", "--json"]);
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
            std::fs::read_to_string(ws.dir.path().join("wal.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kompose-dr wal`, killed when dropped (a failed test must not leave it
/// running).
struct Archiver(Child);

impl Archiver {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
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

/// `kompose-dr wal` in the background, its log in `wal.log`.
fn start_archiver(ws: &Workspace) -> Archiver {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ws.dir.path().join("wal.log"))
        .unwrap();
    Archiver(
        ws.kdr()
            .arg("wal")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The configuration the tests share: WAL archiving with a 2 s `max_lag`
/// and a replication slot (a base backup's fast checkpoint must not
/// recycle WAL the archiver has not received yet on a busy machine).
fn configure(ws: &Workspace, pg: &Pg, dbs: &[&str]) {
    ws.configure(&format!(
        "{}[postgres.wal]\nmax_lag = \"2s\"\nslot = \"kdr_test\"\nspool_dir = \"{}\"\n\n[metrics]\ntextfile = \"{}\"\n\n",
        Workspace::pg_section(pg, dbs),
        ws.dir.path().join("spool").display(),
        ws.dir.path().join("kompose_dr.prom").display()
    ));
}

fn restore(ws: &Workspace, args: &[&str]) -> Ran {
    let mut a = vec!["restore", "--yes"];
    a.extend_from_slice(args);
    ws.run(&a)
}

/// Writes over the newest base backup an archive made with the stock
/// tools, then asks for the cluster at `t`: refused, nothing left at the
/// target, the planted program never run; the real archive is put back.
fn replaced_base_backup_is_refused(ws: &Workspace, t: &str) {
    let m = &ws.manifests()[0];
    let archive = ws.archive(Workspace::artifact(m, "postgres/cluster"));
    let real = std::fs::read(&archive).unwrap();
    let fake = ws.dir.path().join("fake-pgdata");
    let canary = ws.dir.path().join("canary");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        fake.join("postgresql.auto.conf"),
        format!(
            "archive_mode = on\narchive_command = 'touch {}'\n",
            canary.display()
        ),
    )
    .unwrap();
    crate::support::run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("tar -C \"$1\" -cf - . | zstd -q -c | age -r \"$2\" > \"$3\"")
            .arg("sh")
            .arg(&fake)
            .arg(&ws.recipient)
            .arg(&archive),
    );
    let to = ws.dir.path().join("cluster-from-fake");
    let out = restore(
        ws,
        &[
            "--point-in-time",
            t,
            "--source",
            "postgres/cluster",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    out.assert_failed();
    assert!(out.all().contains("the manifest says"), "{}", out.all());
    assert!(!to.exists(), "a refused base backup left {}", to.display());
    assert!(!canary.exists(), "the replaced base backup's settings ran");
    std::fs::write(&archive, real).unwrap();
}

#[test]
fn one_database_goes_back_to_any_second_while_the_others_keep_theirs() {
    let pg = Pg::start();
    pg.psql("postgres", "create database shop; create database other");
    pg.psql("shop", "create table t(n int)");
    pg.psql(
        "other",
        "create table keep(n int); insert into keep values (1)",
    );
    let ws = Workspace::new();
    configure(&ws, &pg, &["shop", "other"]);
    ws.init();
    let mut archiver = start_archiver(&ws);

    // Before any base backup: nothing to recover from.
    let before_base = server_now(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    ws.run(&["backup"]).assert_exit(0);
    let m = &ws.manifests()[0];
    let base = Workspace::artifact(m, "postgres/cluster");
    assert_eq!(base["status"], "ok", "{m}");
    assert!(base["wal"]["start_lsn"].is_string(), "{base}");

    pg.psql("shop", "insert into t values (1)");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("shop", "insert into t values (2)");
    std::thread::sleep(Duration::from_millis(600));
    let t23 = server_now(&pg);
    std::thread::sleep(Duration::from_millis(600));
    pg.psql("shop", "insert into t values (3)");
    pg.psql("other", "insert into keep values (2)");
    let t4 = server_now(&pg);
    std::thread::sleep(Duration::from_millis(300));
    pg.psql("other", "drop table keep; create table newer(n int)");
    let after = server_now(&pg);
    wait_covered(&ws, &after);

    // The plan says which path it takes.
    let plan = restore(
        &ws,
        &[
            "--point-in-time",
            &t23,
            "--source",
            "postgres/shop",
            "--dry-run",
        ],
    );
    plan.assert_exit(0)
        .assert_stdout_contains("path: base backup")
        .assert_stdout_contains("WAL");

    // shop back to between t2 and t3; other untouched.
    restore(
        &ws,
        &[
            "--point-in-time",
            &t23,
            "--source",
            "postgres/shop",
            "--replace",
        ],
    )
    .assert_exit(0)
    .assert_stdout_contains("kept as database kdr_replaced_");
    assert_eq!(
        pg.psql("shop", "select string_agg(n::text, ',' order by n) from t"),
        "1,2"
    );
    assert_eq!(pg.psql("other", "select count(*) from newer"), "0");
    // What production held is kept, renamed, until someone drops it.
    let kept = pg.psql(
        "postgres",
        "select datname from pg_database where datname like 'kdr_replaced_%shop'",
    );
    assert!(!kept.is_empty(), "the replaced database was not kept");
    assert_eq!(pg.psql(&kept, "select count(*) from t"), "3");

    // A DROP TABLE undone by recovering to just before it.
    restore(
        &ws,
        &[
            "--point-in-time",
            &t4,
            "--source",
            "postgres/other",
            "--as",
            "other_before",
        ],
    )
    .assert_exit(0);
    assert_eq!(
        pg.psql(
            "other_before",
            "select string_agg(n::text, ',' order by n) from keep"
        ),
        "1,2"
    );

    // Outside the window: refused, naming it.
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = restore(
        &ws,
        &[
            "--point-in-time",
            &later,
            "--source",
            "postgres/shop",
            "--as",
            "x",
        ],
    );
    r.assert_failed();
    assert!(
        r.all().contains("after the newest archived WAL") && r.all().contains(" … "),
        "{}",
        r.all()
    );
    let dir = ws.dir.path().join("cluster-early");
    let r = restore(
        &ws,
        &[
            "--point-in-time",
            &before_base,
            "--source",
            "postgres/cluster",
            "--to",
            dir.to_str().unwrap(),
        ],
    );
    r.assert_failed();
    // The plan names where the window starts.
    assert!(
        r.all().contains("no good backup at or before") && r.all().contains("earliest available"),
        "{}",
        r.all()
    );

    // The whole cluster into a new data directory, shut down cleanly.
    let dir = ws.dir.path().join("cluster");
    restore(
        &ws,
        &[
            "--point-in-time",
            &t23,
            "--source",
            "postgres/cluster",
            "--to",
            dir.to_str().unwrap(),
        ],
    )
    .assert_exit(0);
    let control = Command::new("/usr/lib/postgresql/15/bin/pg_controldata")
        .arg(&dir)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(control.contains("shut down"), "{control}");

    // The archiver's metrics.
    let prom = std::fs::read_to_string(ws.dir.path().join("kompose_dr.prom")).unwrap_or_default();
    for m in [
        "kompose_dr_wal_last_archived_timestamp_seconds",
        "kompose_dr_wal_archive_lag_seconds",
    ] {
        assert!(prom.contains(m), "{m} missing from the textfile:\n{prom}");
    }

    // check: continuity from the base backup to the newest segment.
    let c = ws.run(&["check", "--json"]);
    c.assert_exit(0);
    let report = c.json();
    assert!(
        report["wal"][0]["gaps"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // kill -9 of the archiver, writes meanwhile, a restart: no gap.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(archiver.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = archiver.wait();
    pg.psql("shop", "insert into t values (10)");
    pg.psql("shop", "select pg_switch_wal()");
    pg.psql("shop", "insert into t values (11)");
    let mut archiver = start_archiver(&ws);
    let t_after_kill = server_now(&pg);
    wait_covered(&ws, &t_after_kill);
    let c = ws.run(&["check", "--json"]);
    c.assert_exit(0);
    assert!(
        c.json()["wal"][0]["gaps"].as_array().unwrap().is_empty(),
        "{}",
        c.all()
    );
    restore(
        &ws,
        &[
            "--point-in-time",
            &t_after_kill,
            "--source",
            "postgres/shop",
            "--as",
            "shop_latest",
        ],
    )
    .assert_exit(0);
    assert_eq!(
        pg.psql(
            "shop_latest",
            "select string_agg(n::text, ',' order by n) from t"
        ),
        "1,2,10,11"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(archiver.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = archiver.wait().unwrap();
    assert!(status.success(), "the archiver stopped with {status}");

    // A base backup replaced by another well-made archive (a data directory
    // whose settings run a program): unpacked as it streams, refused when
    // its checksum fails, and nothing is left that a server could start.
    replaced_base_backup_is_refused(&ws, &t23);

    // A segment removed from the archive: check names it, restore refuses.
    let recs = records(&ws.repo);
    let mut segs: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["kind"] == "segment").collect();
    segs.sort_by_key(|r| r["name"].as_str().unwrap().to_owned());
    assert!(segs.len() >= 2, "{recs:?}");
    let victim = segs[segs.len() - 2];
    let name = victim["name"].as_str().unwrap();
    std::fs::remove_file(ws.repo.join(victim["path"].as_str().unwrap())).unwrap();
    for entry in walk(&ws.repo.join("wal")) {
        if entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("{name}.json"))
        {
            std::fs::remove_file(entry).unwrap();
        }
    }
    let c = ws.run(&["check"]);
    c.assert_failed();
    assert!(c.all().contains(name), "{}", c.all());
    let r = restore(
        &ws,
        &[
            "--point-in-time",
            &t_after_kill,
            "--source",
            "postgres/shop",
            "--as",
            "shop_gap",
        ],
    );
    r.assert_failed();
    assert!(
        r.all().contains(&format!("WAL segment {name} is missing")),
        "{}",
        r.all()
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A failover's new timeline is followed by the archiver, and a recovery
/// crosses it; a drill recovers to a moment ago and runs its checks on
/// the recovered cluster; RPO: after the server is stopped hard, a row
/// committed more than `max_lag` before is in the archive.
#[test]
fn a_new_timeline_is_followed_a_drill_recovers_a_moment_ago_and_a_hard_stop_loses_at_most_max_lag()
{
    let pg = Pg::start();
    pg.psql("postgres", "create database app");
    pg.psql("app", "create table t(n int); insert into t values (1)");
    let ws = Workspace::new();
    configure(&ws, &pg, &["app"]);
    ws.init();
    let mut archiver = start_archiver(&ws);
    ws.run(&["backup"]).assert_exit(0);
    pg.psql("app", "insert into t values (2)");

    // Failover: timeline 2.
    pg.promote_to_new_timeline();
    assert_eq!(
        pg.psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()"
        ),
        "2"
    );
    pg.psql("app", "insert into t values (3)");
    let on_tl2 = server_now(&pg);
    std::thread::sleep(Duration::from_millis(300));
    pg.psql("app", "insert into t values (4)");
    let fourth = server_now(&pg);
    wait_covered(&ws, &fourth);
    let recs = records(&ws.repo);
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "history" && r["timeline"] == 2),
        "no history file of timeline 2 was archived: {recs:?}"
    );
    let r = restore(
        &ws,
        &[
            "--point-in-time",
            &on_tl2,
            "--source",
            "postgres/app",
            "--as",
            "app_tl2",
        ],
    );
    if r.code() != Some(0) {
        let spool: Vec<_> = walk(&ws.dir.path().join("spool"));
        panic!(
            "{}\nrecords: {:?}\nspool: {spool:?}\narchiver:\n{}",
            r.all(),
            recs.iter()
                .map(|r| format!("{} {}", r["name"], r["kind"]))
                .collect::<Vec<_>>(),
            std::fs::read_to_string(ws.dir.path().join("wal.log")).unwrap_or_default()
        );
    }
    assert_eq!(
        pg.psql(
            "app_tl2",
            "select string_agg(n::text, ',' order by n) from t"
        ),
        "1,2,3"
    );

    // A drill to a moment ago, with its SQL check on the recovered cluster:
    // "now-6s" falls after row 4 once the server's clock is 7 s past it.
    let fourth: chrono::DateTime<chrono::Utc> = fourth.parse().unwrap();
    wait_until("the server's clock 7 s past row 4", 60, || {
        server_now(&pg)
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            >= fourth + chrono::Duration::seconds(7)
    });
    wait_covered(&ws, &server_now(&pg));
    let drills = ws.dir.path().join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    std::fs::write(
        drills.join("pitr.toml"),
        "name = \"pitr\"\npoint_in_time = \"now-6s\"\n\n[[check]]\nsource = \"postgres/app\"\nsql = \"select count(*) from t\"\nequals = \"4\"\n",
    )
    .unwrap();
    ws.prepend_top_level(&format!(
        "drills_dir = \"{}\"\nreports_dir = \"{}\"",
        drills.display(),
        ws.dir.path().join("reports").display()
    ));
    let d = ws.run(&["drill", "--json"]);
    d.assert_exit(0);
    let report = d.json();
    assert_eq!(report[0]["ok"], true, "{report}");

    // RPO: committed, in the archive within max_lag (2 s; 8 s here, for a
    // machine busy with other tests), then a hard stop.
    pg.psql("app", "insert into t values (5)");
    let committed = server_now(&pg);
    let at: chrono::DateTime<chrono::Utc> = committed.parse().unwrap();
    wait_until("the archive to cover row 5 within max_lag", 8, || {
        covered_until(&ws.repo).is_some_and(|c| c >= at)
    });
    pg.stop_immediately();
    wait_covered(&ws, &committed);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(archiver.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = archiver.wait();
    let dir = ws.dir.path().join("after-crash");
    restore(
        &ws,
        &[
            "--point-in-time",
            &committed,
            "--source",
            "postgres/cluster",
            "--to",
            dir.to_str().unwrap(),
        ],
    )
    .assert_exit(0);
    assert!(dir.join("PG_VERSION").is_file());
    // The recovered cluster holds row 5: asked in single-user mode.
    let mut single = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new("env")
    };
    single
        .arg(format!("{}/postgres", crate::support::PG_BIN))
        .args(["--single", "-D"])
        .arg(&dir)
        .arg("app")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = single.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"select max(n) from t;\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("max = \"5\""),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Retention: WAL older than the oldest retained base backup goes with the
/// snapshots prune removes; what a retained base backup needs stays, and
/// it still recovers.
#[test]
fn prune_removes_only_the_wal_no_retained_base_backup_needs() {
    let pg = Pg::start();
    pg.psql("postgres", "create database app");
    pg.psql("app", "create table t(n int)");
    let ws = Workspace::new();
    configure(&ws, &pg, &["app"]);
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(&ws.config, format!("{cfg}[retention]\nkeep_last = 1\n")).unwrap();
    ws.init();
    let mut archiver = start_archiver(&ws);
    ws.run(&["backup"]).assert_exit(0);
    for n in 0..3 {
        pg.psql("app", &format!("insert into t values ({n})"));
        pg.psql("app", "select pg_switch_wal()");
    }
    wait_covered(&ws, &server_now(&pg));
    std::thread::sleep(Duration::from_millis(1100));
    ws.run(&["backup"]).assert_exit(0);
    pg.psql("app", "insert into t values (9)");
    let t = server_now(&pg);
    wait_covered(&ws, &t);
    let segments = |ws: &Workspace| -> Vec<String> {
        let mut v: Vec<String> = records(&ws.repo)
            .iter()
            .filter(|r| r["kind"] == "segment")
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let before = segments(&ws);
    let newest_base = ws.manifests()[0].clone();
    let start: String = Workspace::artifact(&newest_base, "postgres/cluster")["wal"]["start_lsn"]
        .as_str()
        .unwrap()
        .to_owned();
    let (hi, lo) = start.split_once('/').unwrap();
    let first_needed = (u64::from_str_radix(hi, 16).unwrap() << 32
        | u64::from_str_radix(lo, 16).unwrap())
        / (16 << 20);

    ws.run(&["prune", "--grace", "0s"]).assert_exit(0);
    let after = segments(&ws);
    assert!(after.len() < before.len(), "nothing was pruned: {before:?}");
    for s in &after {
        let n = u64::from_str_radix(&s[16..24], 16).unwrap()
            + (u64::from_str_radix(&s[8..16], 16).unwrap() << 8);
        assert!(
            n >= first_needed,
            "{s} is older than the retained base backup"
        );
    }
    for s in &before {
        let n = u64::from_str_radix(&s[16..24], 16).unwrap()
            + (u64::from_str_radix(&s[8..16], 16).unwrap() << 8);
        if n >= first_needed {
            assert!(after.contains(s), "{s} was needed and is gone");
        }
    }
    ws.run(&["check"]).assert_exit(0);
    assert_eq!(
        pg.psql(
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'kdr_test'"
        ),
        "1",
        "the slot was created"
    );
    restore(
        &ws,
        &[
            "--point-in-time",
            &t,
            "--source",
            "postgres/app",
            "--as",
            "app_t",
        ],
    )
    .assert_exit(0);
    assert_eq!(pg.psql("app_t", "select count(*) from t"), "4");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(archiver.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = archiver.wait();
}

/// `restore` with no time is the newest state (the base backup and every
/// archived WAL file); a database created after the base backup and
/// dropped again comes back from a time it existed, though no dump holds
/// it; two databases to one time take one recovery.
#[test]
fn the_newest_state_a_database_in_no_dump_and_one_recovery_for_two() {
    let pg = Pg::start();
    pg.psql("postgres", "create database shop; create database other");
    pg.psql("shop", "create table t(n int); insert into t values (1)");
    pg.psql("other", "create table o(n int); insert into o values (1)");
    let ws = Workspace::new();
    configure(&ws, &pg, &["shop", "other"]);
    ws.init();
    let _archiver = start_archiver(&ws);
    ws.run(&["backup"]).assert_exit(0);

    pg.psql("shop", "insert into t values (2)");
    pg.psql("other", "insert into o values (2)");
    pg.psql("postgres", "create database later");
    pg.psql("later", "create table l(n int); insert into l values (7)");
    std::thread::sleep(Duration::from_millis(600));
    let existed = server_now(&pg);
    std::thread::sleep(Duration::from_millis(600));
    // A recovery to a time stops at the first commit after it: one comes
    // before the drop, as on any server with traffic.
    pg.psql("other", "insert into o values (3)");
    pg.psql("postgres", "drop database later");
    pg.psql("shop", "insert into t values (3)");
    let last = server_now(&pg);
    wait_covered(&ws, &last);

    // No time: the newest state, from the base backup and all the WAL.
    let plan = restore(
        &ws,
        &["--source", "postgres/shop", "--as", "x", "--dry-run"],
    );
    plan.assert_exit(0)
        .assert_stdout_contains("the newest state")
        .assert_stdout_contains("behind now");
    restore(&ws, &["--source", "postgres/shop", "--as", "shop_now"]).assert_exit(0);
    assert_eq!(
        pg.psql(
            "shop_now",
            "select string_agg(n::text, ',' order by n) from t"
        ),
        "1,2,3"
    );

    // In no dump, dropped since: back from a time it existed.
    restore(
        &ws,
        &["--point-in-time", &existed, "--source", "postgres/later"],
    )
    .assert_exit(0);
    assert_eq!(pg.psql("later", "select n from l"), "7");
    // A name that never existed: the error lists what did.
    let r = restore(
        &ws,
        &["--point-in-time", &existed, "--source", "postgres/nope"],
    );
    r.assert_failed();
    assert!(
        r.all().contains("did not exist") && r.all().contains("shop"),
        "{}",
        r.all()
    );

    // Two databases to one time: one recovery.
    let two = ws.run(&[
        "--json",
        "restore",
        "--yes",
        "--point-in-time",
        &existed,
        "--source",
        "postgres/shop",
        "--source",
        "postgres/other",
        "--replace",
    ]);
    two.assert_exit(0);
    assert_eq!(two.json()["recoveries"], 1, "{}", two.all());
    assert!(two.json()["seconds"].as_f64().is_some(), "{}", two.all());
    assert_eq!(
        pg.psql("shop", "select string_agg(n::text, ',' order by n) from t"),
        "1,2"
    );
    assert_eq!(
        pg.psql("other", "select string_agg(n::text, ',' order by n) from o"),
        "1,2"
    );
}
