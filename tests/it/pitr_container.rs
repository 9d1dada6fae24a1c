//! Point-in-time recovery where the stack really runs (issue 24): the
//! production imitation's `core-postgres` publishes no port and the host
//! runs no PostgreSQL binary for kompose-dr (`[scratch] postgres_bin`
//! points nowhere). WAL goes through a sidecar container sharing the
//! server's network namespace; recovery runs in scratch containers from the
//! production image; the whole cluster goes back into the container.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::{Engine, Stack, engine, kdr, run};
use crate::support::{Ran, Workspace, wait_until};

fn restore(ws: &Workspace, engine: &Engine, args: &[&str]) -> Ran {
    let mut a = vec!["--json", "restore", "--yes"];
    a.extend_from_slice(args);
    run(ws, engine, &a)
}

/// Container mode only: no url, WAL on, scratch in containers, and no
/// server binary on the host that a fallback could use. With a replication
/// slot, as production needs (docs/DESIGN.md §11) and the other PITR tests
/// have: without one the server does not wait for pg_receivewal, and a base
/// backup's fast checkpoint right after another's segment switch recycles
/// the segment a busy machine's pg_receivewal is still streaming (the
/// server's log: `requested WAL segment … has already been removed`).
fn configure(ws: &Workspace, engine: &Engine, stack: &Stack) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\ncontainer = \"{pg}\"\ndatabases = [\"*\"]\n\n\
         [postgres.wal]\nmax_lag = \"2s\"\nslot = \"kdr_test\"\nspool_dir = \"{spool}\"\n\n\
         [scratch]\nruntime = \"docker\"\npostgres_bin = \"/nonexistent/{{major}}/bin\"\n",
        host = engine.host,
        pg = stack.postgres,
        spool = ws.dir.path().join("state/wal/spool").display(),
    ));
}

/// The server's clock, as a restore takes it.
fn server_now(stack: &Stack) -> String {
    stack.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn rows(stack: &Stack, db: &str, table: &str) -> String {
    stack.psql(
        db,
        &format!("select string_agg(n::text, ',' order by n) from {table}"),
    )
}

/// The newest `covered_until` the archive claims (`check --json`).
fn covered(ws: &Workspace, engine: &Engine) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = run(ws, engine, &["--json", "check"]);
    let j = c.json();
    j["wal"]
        .as_array()?
        .iter()
        .filter(|w| w["gaps"].as_array().is_some_and(|g| g.is_empty()))
        .filter_map(|w| w["covered_until"].as_str()?.parse().ok())
        .max()
}

fn wait_covered(ws: &Workspace, engine: &Engine, t: &str, log: &std::path::Path) {
    let t: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
    wait_until(
        &format!(
            "the archive to cover {t}; archiver log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
        120,
        || covered(ws, engine).is_some_and(|c| c >= t),
    );
}

/// `kompose-dr wal`, killed when dropped.
struct Archiver(Child);

impl Drop for Archiver {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_archiver(ws: &Workspace, engine: &Engine, log: &std::path::Path) -> Archiver {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Archiver(
        kdr(ws, engine)
            .arg("wal")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn point_in_time_recovery_through_the_engine_alone() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE shop");
    stack.psql("postgres", "CREATE DATABASE other");
    stack.psql("shop", "CREATE TABLE t(n int); INSERT INTO t VALUES (1)");
    stack.psql("other", "CREATE TABLE o(n int); INSERT INTO o VALUES (1)");
    let ws = Workspace::new();
    configure(&ws, engine, &stack);
    let log = ws.dir.path().join("wal.log");

    // The order a new user takes: init, a backup, then the archiver.
    run(&ws, engine, &["init"]).assert_exit(0);
    run(&ws, engine, &["backup"]).assert_exit(0);
    stack.psql("shop", "INSERT INTO t VALUES (2)");
    std::thread::sleep(Duration::from_millis(600));
    let before_archiver = server_now(&stack);
    std::thread::sleep(Duration::from_millis(600));
    stack.psql("other", "INSERT INTO o VALUES (2)");
    let archiver = start_archiver(&ws, engine, &log);

    stack.psql("shop", "INSERT INTO t VALUES (3)");
    stack.psql("postgres", "CREATE DATABASE later");
    stack.psql("later", "CREATE TABLE l(n int); INSERT INTO l VALUES (7)");
    std::thread::sleep(Duration::from_millis(600));
    let t = server_now(&stack);
    std::thread::sleep(Duration::from_millis(600));
    stack.psql("other", "INSERT INTO o VALUES (3)");
    stack.psql("postgres", "DROP DATABASE later");
    stack.psql("shop", "INSERT INTO t VALUES (4)");
    let last = server_now(&stack);
    wait_covered(&ws, engine, &last, &log);

    // Between the base backup and the archiver's start.
    restore(
        &ws,
        engine,
        &[
            "--point-in-time",
            &before_archiver,
            "--source",
            "postgres/shop",
            "--as",
            "shop_early",
        ],
    )
    .assert_exit(0);
    assert_eq!(rows(&stack, "shop_early", "t"), "1,2");

    // Two databases to T in one recovery.
    let two = restore(
        &ws,
        engine,
        &[
            "--point-in-time",
            &t,
            "--source",
            "postgres/shop",
            "--source",
            "postgres/other",
            "--replace",
        ],
    );
    two.assert_exit(0);
    assert_eq!(two.json()["recoveries"], 1, "{}", two.all());
    assert_eq!(rows(&stack, "shop", "t"), "1,2,3");
    assert_eq!(rows(&stack, "other", "o"), "1,2");

    // A database in no dump, dropped since: back from T.
    restore(
        &ws,
        engine,
        &["--point-in-time", &t, "--source", "postgres/later"],
    )
    .assert_exit(0);
    assert_eq!(stack.psql("later", "select n from l"), "7");

    // No time: the newest state, up to the archive's end.
    stack.psql("shop", "INSERT INTO t VALUES (5)");
    let newest = server_now(&stack);
    wait_covered(&ws, engine, &newest, &log);
    let plain = restore(
        &ws,
        engine,
        &["--source", "postgres/shop", "--as", "shop_now"],
    );
    plain.assert_exit(0);
    assert_eq!(rows(&stack, "shop_now", "t"), "1,2,3,5");

    // The whole cluster to T, back into the container.
    drop(archiver);
    let whole = restore(
        &ws,
        engine,
        &[
            "--point-in-time",
            &t,
            "--source",
            "postgres/cluster",
            "--replace",
        ],
    );
    whole.assert_exit(0);
    assert_eq!(rows(&stack, "shop", "t"), "1,2,3");
    assert_eq!(stack.psql("later", "select n from l"), "7");
    let _ = Instant::now();
}

/// The agent starts the archiver and the first base backup at the same
/// moment: whichever comes first, every second after the base backup is
/// restorable.
#[test]
fn the_agent_starting_the_archiver_and_a_base_backup_at_once_loses_no_second() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE shop");
    stack.psql("shop", "CREATE TABLE t(n int); INSERT INTO t VALUES (1)");
    let ws = Workspace::new();
    configure(&ws, engine, &stack);
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("often.toml"),
        "name = \"often\"\nschedule = \"*/2 * * * * *\"\nsources = [\"postgres/*\"]\n",
    )
    .unwrap();
    ws.prepend_top_level(&format!("policies_dir = \"{}\"", policies.display()));
    run(&ws, engine, &["init"]).assert_exit(0);
    let log = ws.dir.path().join("agent.log");
    let agent = Archiver(
        kdr(&ws, engine)
            .arg("agent")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("the agent's first base backup", 120, || {
        let s = run(&ws, engine, &["--json", "snapshots"]);
        s.code() == Some(0)
            && s.json()["snapshots"].as_array().is_some_and(|a| {
                a.iter().any(|m| {
                    m["artifacts"].as_array().is_some_and(|x| {
                        x.iter()
                            .any(|a| a["source"] == "postgres/cluster" && a["status"] == "ok")
                    })
                })
            })
    });
    stack.psql("shop", "INSERT INTO t VALUES (2)");
    std::thread::sleep(Duration::from_millis(600));
    let t = server_now(&stack);
    std::thread::sleep(Duration::from_millis(600));
    stack.psql("shop", "INSERT INTO t VALUES (3)");
    let last = server_now(&stack);
    wait_covered(&ws, engine, &last, &log);
    drop(agent);
    restore(
        &ws,
        engine,
        &[
            "--point-in-time",
            &t,
            "--source",
            "postgres/shop",
            "--as",
            "shop_t",
        ],
    )
    .assert_exit(0);
    assert_eq!(rows(&stack, "shop_t", "t"), "1,2");
}
