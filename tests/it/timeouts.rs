//! Nothing a backup waits for may hang it: a table lock never granted, a
//! server that accepts a connection and never answers. The source fails
//! (exit 3) within its configured limit, the other sources are committed,
//! and the repository lock goes with the run.

use std::time::{Duration, Instant};

use crate::support::{Pg, Workspace, wait_until};

/// pg_dump waiting for a table another session holds in ACCESS EXCLUSIVE,
/// with a lock wait far longer than the test: the stall watchdog stops the
/// source after 3 s without data (pg_dump killed, the row count cancelled
/// in the server), the other database is committed, and the next backup
/// can take the repository lock at once.
#[test]
fn a_source_stalled_on_a_lock_is_stopped_by_the_stall_timeout() {
    let pg = Pg::start();
    for db in ["free", "locked"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(
            db,
            "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g",
        );
    }
    let mut holder = pg
        .client("psql")
        .args([
            "-d",
            "locked",
            "-c",
            "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the lock is held", 10, || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation IS NOT NULL",
        ) != "0"
    });
    let ws = Workspace::new();
    ws.configure(&format!(
        "{}lock_wait = \"1h\"\n\n[timeouts]\nstall = \"3s\"\n",
        Workspace::pg_section(&pg, &["free", "locked"])
    ));
    ws.init();
    let start = Instant::now();
    let out = ws.run(&["backup"]);
    let took = start.elapsed();
    out.assert_exit(3);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let m = &ws.manifests()[0];
    assert_eq!(Workspace::artifact(m, "postgres/free")["status"], "ok");
    let locked = Workspace::artifact(m, "postgres/locked");
    assert_eq!(locked["status"], "failed");
    let error = locked["error"].as_str().unwrap();
    assert!(error.contains("made no progress for 3s"), "{error}");
    assert!(error.contains("postgres.stall_timeout"), "{error}");
    // The row count that waited on the lock was cancelled in the server,
    // not left waiting there for an hour.
    wait_until("the count to be cancelled", 10, || {
        pg.psql(
            "locked",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM ONLY%' AND state = 'active'",
        ) == "0"
    });
    // The repository lock went with the run.
    ws.run(&["backup", "--source", "postgres/free"])
        .assert_exit(0);
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A "Redis" that accepts connections and never says a word: the source
/// fails within the stall limit, the file is committed, exit 3.
#[test]
fn a_redis_that_accepts_and_never_answers_fails_its_source_in_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Keep every connection open, silent.
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let ws = Workspace::new();
    let f = ws.dir.path().join("acme.json");
    std::fs::write(&f, "{}").unwrap();
    ws.configure(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}\"\n\n[[files]]\nname = \"acme\"\npath = \"{}\"\n\n[timeouts]\nstall = \"3s\"\n",
        f.display()
    ));
    ws.init();
    let start = Instant::now();
    let out = ws.run(&["backup"]);
    let took = start.elapsed();
    out.assert_exit(3);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let m = &ws.manifests()[0];
    assert_eq!(Workspace::artifact(m, "files/acme")["status"], "ok");
    assert_eq!(Workspace::artifact(m, "redis")["status"], "failed");
    ws.run(&["backup", "--source", "files/*"]).assert_exit(0);
}
