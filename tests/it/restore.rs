//! `kompose-dr restore` against real servers: selection, safety, integrity.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use crate::support::{self, Pg, Ran, Redis, Workspace};

fn backup(ws: &Workspace, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "backup"];
    args.extend_from_slice(extra);
    let out = ws.run(&args);
    out.assert_exit_in(&[0, 3]);
    out.json()
}

fn captured(ws: &Workspace, snapshot: &str, source: &str) -> String {
    let m = ws
        .manifests()
        .into_iter()
        .find(|m| m["id"] == snapshot)
        .unwrap();
    Workspace::artifact(&m, source)["captured_at"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn point_in_time_chooses_per_source_among_three_snapshots() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    let redis = Redis::start(false, None);
    let ws = Workspace::new();
    ws.configure(&format!(
        "{}{}",
        Workspace::pg_section(&pg, &["app"]),
        Workspace::redis_section(&redis)
    ));
    ws.init();

    redis.cli(&["SET", "k1", "v"]);
    let s1 = backup(&ws, &[])["snapshot"].as_str().unwrap().to_owned();
    pg.psql("app", "INSERT INTO t VALUES (2)");
    redis.cli(&["SET", "k2", "v"]);
    let s2 = backup(&ws, &[])["snapshot"].as_str().unwrap().to_owned();
    pg.psql("app", "INSERT INTO t VALUES (3)");
    // The third snapshot has only the database.
    let s3 = backup(&ws, &["--source", "postgres/app"])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();

    // Just after the second capture: the database of s2.
    let t2 = captured(&ws, &s2, "postgres/app");
    let out = ws.run(&[
        "restore",
        "--point-in-time",
        &t2,
        "--source",
        "postgres/app",
        "--as",
        "app_t2",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_eq!(pg.psql("app_t2", "SELECT count(*) FROM t"), "2");

    // At the third: the database of s3, Redis still of s2 (independently).
    let t3 = captured(&ws, &s3, "postgres/app");
    let empty = tempfile::tempdir().unwrap();
    let to = empty.path().display().to_string();
    let out = ws.run(&[
        "--json",
        "restore",
        "--point-in-time",
        &t3,
        "--replace",
        "--to",
        &to,
        "--dry-run",
    ]);
    out.assert_exit(0);
    let plan: serde_json::Value = out.json();
    let pick = |src: &str| {
        plan["plan"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["source"] == src)
            .unwrap()["snapshot"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(pick("postgres/app"), s3);
    assert_eq!(pick("redis"), s2);
    assert_eq!(pick("postgres/globals"), s2);
    assert_eq!(plan["dry_run"], true);

    // Before everything: an error naming the earliest time.
    let t1 = captured(&ws, &s1, "postgres/app");
    let out = ws.run(&[
        "restore",
        "--point-in-time",
        "2020-01-01T00:00:00Z",
        "--source",
        "postgres/app",
        "--yes",
    ]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("earliest available") && err.contains(&t1[..19]),
        "{err}"
    );
    assert!(err.contains(&s1), "{err}");
}

#[test]
fn existing_data_is_refused_without_replace_and_replaced_with_a_client_connected() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    backup(&ws, &[]);
    pg.psql("app", "DELETE FROM t WHERE n > 10");

    // Refused: nothing changes.
    let out = ws.run(&["restore", "--source", "postgres/app", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("exists and is not empty");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "10");

    // --dry-run changes nothing either, even with --replace.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--replace",
        "--dry-run",
    ]);
    out.assert_exit(0);
    out.assert_stdout_contains("REPLACES");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "10");

    // No terminal and no --yes: refused.
    let out = ws.run(&["restore", "--source", "postgres/app", "--replace"]);
    out.assert_exit(2);
    out.assert_stderr_contains("--yes");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "10");

    // --replace while a client holds a session open.
    let mut client = pg
        .client("psql")
        .args(["-X", "-d", "app", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_until("the client's session on app", 20, || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        ) == "1"
    });
    let out = ws.run(&["restore", "--source", "postgres/app", "--replace", "--yes"]);
    out.assert_exit(0);
    out.assert_stdout_contains("replaced database app");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "1000");
    assert!(
        !client.wait().unwrap().success(),
        "the connected session was terminated"
    );
    // No scratch databases are left; what `app` held is kept, renamed.
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'kdr\\_restore\\_%'"
        ),
        "0"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'kdr\\_replaced\\_%\\_app'"
        ),
        "1"
    );

    // --jobs: pg_restore's jobs on the verified spool.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "app_jobs",
        "--jobs",
        "2",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_eq!(pg.psql("app_jobs", "SELECT count(*) FROM t"), "1000");
}

/// Entries of `dir` that a restore's plaintext spool would leave.
fn spools_left(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kompose-dr-scratch-"))
        .collect()
}

/// Unmounts a test's tmpfs, however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_database_streams_piece_by_piece_and_a_changed_piece_restores_nothing() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (n int PRIMARY KEY, s text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         CREATE INDEX t_s ON t (s);",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    // Pieces of 4 KiB: the dump's archive is many of them.
    Ran::of(ws.kdr().env("KOMPOSE_DR_TEST_PIECE", "4096").arg("backup")).assert_exit(0);
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "postgres/app");
    let pieces = a["pieces"]["sha256"].as_array().expect("pieces recorded");
    assert_eq!(a["pieces"]["bytes"], 4096);
    let stored = a["stored_bytes"].as_u64().unwrap();
    assert_eq!(pieces.len() as u64, stored.div_ceil(4096));
    assert!(pieces.len() > 20, "{} pieces", pieces.len());
    let same = |db: &str| pg.psql(db, "SELECT count(*), sum(n), count(DISTINCT s) FROM t");

    // Read by pieces: no checked copy is made first, and the data is whole.
    for jobs in ["1", "2"] {
        let db = format!("by_pieces_{jobs}");
        let out = ws.run(&[
            "restore",
            "--source",
            "postgres/app",
            "--as",
            &db,
            "--jobs",
            jobs,
            "--yes",
        ]);
        out.assert_exit(0);
        assert_eq!(same(&db), same("app"), "{}", out.all());
    }

    // One byte changed in the middle of the archive: that piece is refused,
    // pg_restore is stopped, and nothing is left on the server.
    let archive = ws.archive(a);
    let genuine = std::fs::read(&archive).unwrap();
    let mut bytes = genuine.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "tampered",
        "--yes",
    ]);
    out.assert_failed();
    out.assert_stderr_contains(&format!(
        "piece {} of the stored bytes is not what the manifest says",
        at / 4096
    ));
    out.assert_stderr_contains("tampered is unchanged");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'tampered' OR datname LIKE 'kdr_%'"
        )
        .trim(),
        "0",
        "{}",
        out.all()
    );

    // A snapshot written before pieces were recorded (the same manifest
    // without them, signed): read from a checked copy of the whole archive.
    std::fs::write(&archive, &genuine).unwrap();
    let id = m["id"].as_str().unwrap();
    let path = ws.repo.join("snapshots").join(format!("{id}.json"));
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for a in old["artifacts"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("pieces");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    ws.sign(&path);
    let out = ws.run(&[
        "-vv",
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "from_copy",
        "--yes",
    ]);
    out.assert_exit(0);
    out.assert_stderr_contains("the archive checked out against the manifest");
    assert_eq!(same("from_copy"), same("app"), "{}", out.all());
    // With the changed byte, the copy is refused whole: nothing started.
    std::fs::write(&archive, &bytes).unwrap();
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "tampered",
        "--yes",
    ]);
    out.assert_failed();
    out.assert_stderr_contains("differs from the manifest");
}

#[test]
fn a_database_comes_from_a_private_plaintext_spool_and_streams_when_tmpdir_is_small() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (n int PRIMARY KEY, s text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g; \
         CREATE INDEX t_s ON t (s); \
         CREATE TABLE u AS SELECT g AS n FROM generate_series(1, 300) g;",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    backup(&ws, &[]);
    let same = |db: &str| {
        pg.psql(db, "SELECT count(*), sum(n), count(DISTINCT s) FROM t")
            + &pg.psql(db, "SELECT count(*) FROM u")
            + &pg.psql(db, "SELECT count(*) FROM pg_indexes WHERE tablename = 't'")
    };

    // With jobs: the spool; nothing left after.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "a1",
        "--jobs",
        "2",
        "--yes",
    ]);
    out.assert_exit(0);
    out.assert_stderr_contains("pg_restore --jobs from the verified plaintext spool");
    assert_eq!(same("a1"), same("app"));
    // The spool keeps the plaintext's start: the post-data section runs on
    // it while it holds the table of contents (pg_restore --list says so),
    // and streams from the archive again when it does not.
    for (kept, says) in [
        (
            "65536",
            "pg_restore --jobs from the verified plaintext spool",
        ),
        ("100", "post-data streams from the checked archive again"),
    ] {
        let db = format!("a_{kept}");
        let out = Ran::of(
            ws.kdr()
                .env("KOMPOSE_DR_TEST_SPOOL_PREFIX", kept)
                .args(["restore", "--source", "postgres/app", "--as", &db])
                .args(["--jobs", "2", "--yes"]),
        );
        out.assert_exit(0).assert_stderr_contains(says);
        assert_eq!(same(&db), same("app"), "{}", out.all());
    }
    // One job: no plaintext spool, the verified archive streams.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "a0",
        "--jobs",
        "1",
        "--yes",
    ]);
    out.assert_exit(0);
    out.assert_stderr_contains("fed the verified archive as it decodes");
    assert!(!out.stderr().contains("from the verified plaintext spool"));
    assert_eq!(same("a0"), same("app"));
    assert!(
        spools_left(&ws.tmp()).is_empty(),
        "{:?}",
        spools_left(&ws.tmp())
    );

    // A TMPDIR without room for the plaintext: the checked copy stays
    // encrypted and streams into one pg_restore, and the log says why.
    let small = ws.dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    support::run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs"])
            .arg(&small),
    );
    let _unmount = Unmount(small.clone());
    let out = Ran::of(ws.kdr().env("TMPDIR", &small).args([
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "a2",
        "--jobs",
        "2",
        "--yes",
    ]));
    out.assert_exit(0);
    out.assert_stderr_contains("no room for the plaintext spool");
    assert!(!out.stderr().contains("from the verified plaintext spool"));
    assert_eq!(same("a2"), same("app"));
    assert!(spools_left(&small).is_empty());
}

#[test]
fn a_declined_confirmation_changes_nothing() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("acme.json");
    std::fs::write(&file, "{}").unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    backup(&ws, &[]);
    let target = ws.dir.path().join("restored.json");
    // `script` gives the command a terminal; we answer "no".
    let cmd = format!(
        "{} --config {} restore --to {}",
        env!("CARGO_BIN_EXE_kompose-dr"),
        ws.config.display(),
        target.display()
    );
    let terminal = ws.dir.path().join("terminal.out");
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&terminal).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until("the confirmation prompt", 30, || {
        std::fs::read_to_string(&terminal).is_ok_and(|t| t.contains("Type 'yes'"))
    });
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"no\n").unwrap();
    let mut output = child.wait_with_output().unwrap();
    output.stdout = std::fs::read(&terminal).unwrap();
    let out = Ran::new("script kompose-dr restore", output);
    let all = out.all();
    assert!(all.contains("Type 'yes'"), "{all}");
    assert!(all.contains("declined"), "{all}");
    assert!(!target.exists());
}

#[test]
fn damaged_archives_and_wrong_keys_replace_nothing() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("acme.json");
    std::fs::write(&file, "{\"resolver\": {}}".repeat(1000)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    backup(&ws, &[]);
    let m = &ws.manifests()[0];
    let archive = ws.archive(Workspace::artifact(m, "files/acme"));
    let good = std::fs::read(&archive).unwrap();
    let original = std::fs::read(&file).unwrap();

    // A flipped byte.
    let mut bad = good.clone();
    let i = bad.len() / 2;
    bad[i] ^= 0x40;
    std::fs::write(&archive, &bad).unwrap();
    std::fs::write(&file, "current").unwrap();
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("files/acme") && err.contains("damaged"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "current",
        "nothing replaced"
    );
    assert_eq!(
        std::fs::read_dir(ws.dir.path())
            .unwrap()
            .filter(|e| {
                let n = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                n.ends_with(".tmp") || n.ends_with(".bak")
            })
            .count(),
        0,
        "no temporary or backup files left"
    );

    // A truncated archive.
    std::fs::write(&archive, &good[..good.len() - 100]).unwrap();
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("files/acme");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "current");

    // The wrong identity.
    std::fs::write(&archive, &good).unwrap();
    let other = ws.dir.path().join("other.txt");
    support::run_ok(Command::new("age-keygen").arg("-o").arg(&other));
    let cfg = std::fs::read_to_string(&ws.config).unwrap().replace(
        &ws.identity.display().to_string(),
        &other.display().to_string(),
    );
    std::fs::write(&ws.config, cfg).unwrap();
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("files/acme") && err.contains("cannot decrypt"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "current");

    // The right one, with --replace: restored with its mode and mtime, the
    // replaced file kept as .bak.
    let cfg = std::fs::read_to_string(&ws.config).unwrap().replace(
        &other.display().to_string(),
        &ws.identity.display().to_string(),
    );
    std::fs::write(&ws.config, cfg).unwrap();
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(0);
    assert_eq!(std::fs::read(&file).unwrap(), original);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        meta.mtime().to_string(),
        chrono::DateTime::parse_from_rfc3339(
            Workspace::artifact(m, "files/acme")["file"]["mtime"]
                .as_str()
                .unwrap()
        )
        .unwrap()
        .timestamp()
        .to_string()
    );
    let baks: Vec<_> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .collect();
    assert_eq!(baks.len(), 1);
    assert_eq!(std::fs::read_to_string(baks[0].path()).unwrap(), "current");
}

fn redis_round_trip(aof: bool) {
    let redis = Redis::start(aof, None);
    redis.fill(500);
    let ws = Workspace::new();
    let data_dir = redis.dir.path().to_path_buf();
    ws.configure(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
        redis.port,
        data_dir.display()
    ));
    ws.init();
    backup(&ws, &[]);

    // Refused while Redis runs on its data directory, with what to do.
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("is running") && err.contains("docker stop"),
        "{err}"
    );

    // Into an empty directory, then loaded by redis-server.
    let target = tempfile::Builder::new()
        .prefix("kdr-redis-restore-")
        .tempdir()
        .unwrap();
    let out = ws.run(&[
        "restore",
        "--to",
        &target.path().display().to_string(),
        "--yes",
    ]);
    out.assert_exit(0);
    let copy = Redis::start_in(target, aof, None);
    assert_eq!(copy.dbsize(), 500);
    // A non-empty directory is refused without --replace.
    let out = ws.run(&[
        "restore",
        "--to",
        &copy.dir.path().display().to_string(),
        "--yes",
    ]);
    out.assert_exit(1);
    out.assert_stderr_contains("is not empty");
}

#[test]
fn redis_aof_restore_loads() {
    redis_round_trip(true);
}

#[test]
fn redis_rdb_restore_loads() {
    redis_round_trip(false);
}

#[test]
fn good_sources_of_a_partial_snapshot_restore() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t AS SELECT generate_series(1, 5) n");
    let ws = Workspace::new();
    ws.configure(&format!(
        "{}[[files]]\nname = \"gone\"\npath = \"/nonexistent/file\"\n",
        Workspace::pg_section(&pg, &["app"])
    ));
    ws.init();
    let r = backup(&ws, &[]);
    assert_eq!(r["status"], "partial");
    let id = r["snapshot"].as_str().unwrap().to_owned();
    pg.psql("postgres", "DROP DATABASE app");
    let out = ws.run(&["restore", "--snapshot", &id, "--yes"]);
    out.assert_exit(0);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "5");
    // Asking for the failed one by name says why it cannot be had.
    let out = ws.run(&[
        "restore",
        "--snapshot",
        &id,
        "--source",
        "files/gone",
        "--yes",
    ]);
    out.assert_exit(2);
    out.assert_stderr_contains("failed in snapshot");
}

#[test]
fn pg_restore_runs_in_the_container_and_must_read_the_archive() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE kmps");
    pg.psql(
        "kmps",
        "CREATE TABLE events AS SELECT generate_series(1, 42) id",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["kmps"]));
    ws.init();
    backup(&ws, &[]);

    // A pg_restore older than the pg_dump that wrote the archive: both versions named.
    let old = ws.dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    support::script(
        &old.join("pg_restore"),
        "#!/bin/sh\necho 'pg_restore (PostgreSQL) 13.9'\n",
    );
    ws.configure(&Workspace::pg_section_bin(&pg, &["kmps"], &old));
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/kmps",
        "--as",
        "kmps_old",
        "--yes",
    ]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("13.9") && err.contains("pg_dump (PostgreSQL) 15"),
        "{err}"
    );
    assert!(err.contains("postgresql-client-15"), "{err}");
}
