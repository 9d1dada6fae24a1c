//! PostgreSQL backups against a real throw-away server, opened with the
//! stock tools (`age -d | zstd -d | pg_restore`).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::{self, Pg, Ran, Workspace, script};

const VARIED: &str = r#"
CREATE ROLE app LOGIN PASSWORD 'app-role-pw';
CREATE DATABASE linkwarden OWNER app;
"#;

const VARIED_SCHEMA: &str = r#"
SET ROLE app;
CREATE TABLE "Link" (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  url text NOT NULL,
  tags text[],
  meta jsonb,
  body bytea,
  price numeric(20,6),
  uid uuid,
  addr inet,
  created timestamptz DEFAULT now(),
  doc oid
);
INSERT INTO "Link" (url, tags, meta, body, price, uid, addr, doc)
SELECT 'https://example.org/' || g,
       ARRAY['tag' || (g % 7), 'x'],
       jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       decode(md5(g::text), 'hex'),
       g * 1.000001,
       md5(g::text)::uuid,
       ('10.0.' || (g % 250) || '.1')::inet,
       CASE WHEN g <= 3 THEN lo_from_bytea(0, convert_to('large object ' || g, 'UTF8')) END
FROM generate_series(1, 500) g;
CREATE VIEW recent_links AS SELECT id, url FROM "Link" WHERE id > 490;
CREATE TABLE empty_table (x int);
RESET ROLE;
"#;

const COMPARE: &[&str] = &[
    r#"SELECT id, url, tags, meta, encode(body, 'hex'), price, uid, addr FROM "Link" ORDER BY id"#,
    "SELECT * FROM recent_links ORDER BY id",
    r#"SELECT id, encode(lo_get(doc), 'escape') FROM "Link" WHERE doc IS NOT NULL ORDER BY id"#,
    "SELECT tableowner FROM pg_tables WHERE tablename = 'Link'",
    "SELECT count(*) FROM empty_table",
];

fn assert_private(path: &std::path::Path) {
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.path().display());
            assert_private(&entry.path());
        } else {
            assert_eq!(mode, 0o600, "{}", entry.path().display());
        }
    }
}

#[test]
fn varied_database_restores_with_stock_tools() {
    let pg = Pg::start();
    pg.psql("postgres", VARIED);
    pg.psql("linkwarden", VARIED_SCHEMA);
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["linkwarden"]));
    ws.init();

    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "ok");

    let manifests = ws.manifests();
    assert_eq!(manifests.len(), 1);
    let m = &manifests[0];
    let a = Workspace::artifact(m, "postgres/linkwarden");
    assert_eq!(a["status"], "ok");
    assert_eq!(a["kind"], "postgres-dump");
    assert!(a["server_version"].as_str().unwrap().starts_with("15."));
    assert!(
        a["tool_version"]
            .as_str()
            .unwrap()
            .contains("pg_dump (PostgreSQL) 1")
    );
    assert!(a["captured_at"].is_string());
    let archive = ws.archive(a);
    assert!(archive.ends_with(format!(
        "data/{}/postgres/linkwarden.dump.zst.age",
        m["id"].as_str().unwrap()
    )));
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(a["stored_bytes"].as_u64().unwrap(), bytes.len() as u64);
    use sha2::Digest;
    assert_eq!(
        a["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    // The same figures in the --json report as in the manifest.
    let ra = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["source"] == "postgres/linkwarden")
        .unwrap();
    assert_eq!(ra["sha256"], a["sha256"]);

    // Restore with the stock tools only.
    pg.psql("postgres", "CREATE DATABASE restored");
    Ran::of(
        Command::new("sh")
            .arg("-c")
            .arg("age -d -i \"$1\" \"$2\" | zstd -d -q | \"$3\" --exit-on-error -d restored")
            .arg("sh")
            .arg(&ws.identity)
            .arg(&archive)
            .arg(format!("{}/pg_restore", support::PG_BIN))
            .envs(
                pg.client("true")
                    .get_envs()
                    .map(|(k, v)| (k.to_owned(), v.unwrap().to_owned())),
            ),
    )
    .assert_exit(0);
    for q in COMPARE {
        assert_eq!(pg.psql("linkwarden", q), pg.psql("restored", q), "{q}");
    }
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'Link'"
        ),
        "app"
    );

    // Globals hold the roles.
    let g = Workspace::artifact(m, "postgres/globals");
    let globals = String::from_utf8(ws.stock_decrypt(&ws.archive(g))).unwrap();
    assert!(globals.contains("CREATE ROLE app;"), "{globals}");
    assert!(globals.contains("CREATE ROLE kompose;"), "{globals}");

    // The facts sidecar has the exact row counts, and only encrypted.
    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let facts: serde_json::Value = serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    let tables = &facts["sources"]["postgres/linkwarden"]["tables"];
    assert_eq!(tables["public.Link"], 500);
    assert_eq!(tables["public.empty_table"], 0);
    let manifest_text = std::fs::read_to_string(
        ws.repo
            .join(format!("snapshots/{}.json", m["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        !manifest_text.contains("empty_table"),
        "table names must not be in plaintext"
    );

    // Repository files are 0600 and directories 0700.
    assert_private(&ws.repo);
}

#[test]
fn all_databases_are_discovered_and_jobs_run_in_parallel() {
    let pg = Pg::start();
    for db in ["keycloak", "umami", "grafana"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(
            db,
            &format!(
                "CREATE TABLE t AS SELECT g AS id, '{db}' AS app FROM generate_series(1, 100) g"
            ),
        );
    }
    pg.psql(
        "postgres",
        "CREATE DATABASE noconnect; ALTER DATABASE noconnect ALLOW_CONNECTIONS false",
    );
    let ws = Workspace::new();
    ws.configure(&format!(
        "[postgres]\nurl = \"{}\"\npassword = \"{}\"\ndatabases = [\"*\"]\nglobals = false\njobs = 3\n",
        pg.url(),
        pg.password
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let m = &ws.manifests()[0];
    let sources: Vec<&str> = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "postgres/grafana",
            "postgres/keycloak",
            "postgres/postgres",
            "postgres/umami",
            "config"
        ]
    );

    // --source selects with globs; a pattern that matches nothing is an error.
    let out = ws.run(&["--json", "backup", "--source", "postgres/k*"]);
    out.assert_exit(0);
    let r: serde_json::Value = out.json();
    // The database, and the configuration that goes with every run.
    assert_eq!(r["artifacts"].as_array().unwrap().len(), 2);
    let out = ws.run(&["backup", "--source", "postgres/nope"]);
    out.assert_exit(2);
    out.assert_stderr_contains("--source postgres/nope matches no configured source");
}

/// A pg_dump stand-in: the real one, except that for the database named in
/// `$KILL_DB` it writes part of the dump and then dies of SIGKILL.
fn killing_shim(dir: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    script(
        &bin.join("pg_dump"),
        &format!(
            "#!/bin/sh\nif [ \"$PGDATABASE\" = victim ]; then\n  {pg}/pg_dump \"$@\" | head -c 3000\n  kill -9 $$\nfi\nexec {pg}/pg_dump \"$@\"\n",
            pg = support::PG_BIN
        ),
    );
    script(
        &bin.join("pg_dumpall"),
        &format!("#!/bin/sh\nexec {}/pg_dumpall \"$@\"\n", support::PG_BIN),
    );
    bin
}

#[test]
fn missing_database_and_killed_pg_dump_give_exit_3() {
    let pg = Pg::start();
    for db in ["good", "victim"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(db, "CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g");
    }
    let ws = Workspace::new();
    let bin = killing_shim(ws.dir.path());
    ws.configure(&Workspace::pg_section_bin(
        &pg,
        &["good", "missing", "victim"],
        &bin,
    ));
    ws.init();
    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(3);
    let (stdout, stderr) = (out.stdout(), out.stderr());
    assert!(stderr.contains("postgres/missing"), "{stderr}");
    assert!(stderr.contains("postgres/victim"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "partial");

    let m = &ws.manifests()[0];
    assert_eq!(m["status"], "partial");
    assert_eq!(Workspace::artifact(m, "postgres/good")["status"], "ok");
    assert_eq!(Workspace::artifact(m, "postgres/globals")["status"], "ok");
    let missing = Workspace::artifact(m, "postgres/missing");
    assert_eq!(missing["status"], "failed");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("database \"missing\" does not exist"),
        "{missing}"
    );
    let victim = Workspace::artifact(m, "postgres/victim");
    assert_eq!(victim["status"], "failed");
    assert!(victim["path"].is_null());
    assert!(
        victim["error"].as_str().unwrap().contains("signal 9"),
        "{victim}"
    );
    // Nothing of the failed dump is left in the repository.
    let dir = ws
        .repo
        .join(format!("data/{}/postgres", m["id"].as_str().unwrap()));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["globals.sql.zst.age", "good.dump.zst.age"]);

    // The good dump restores.
    pg.psql("postgres", "CREATE DATABASE good_restored");
    let dump = ws.stock_decrypt(&ws.archive(Workspace::artifact(m, "postgres/good")));
    let mut child = pg
        .client("pg_restore")
        .args(["-d", "good_restored"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &dump).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(pg.psql("good_restored", "SELECT count(*) FROM t"), "20000");
}

#[test]
fn too_old_pg_dump_is_refused_with_both_versions() {
    let pg = Pg::start();
    let ws = Workspace::new();
    let bin = ws.dir.path().join("oldbin");
    std::fs::create_dir(&bin).unwrap();
    script(
        &bin.join("pg_dump"),
        "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n",
    );
    script(
        &bin.join("pg_dumpall"),
        "#!/bin/sh\necho 'pg_dumpall (PostgreSQL) 14.11'\n",
    );
    ws.configure(&Workspace::pg_section_bin(&pg, &["postgres"], &bin));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let stderr = out.stderr();
    assert!(stderr.contains("14.11"), "{stderr}");
    assert!(stderr.contains("PostgreSQL 15."), "{stderr}");
    assert!(stderr.contains("install postgresql-client-15"), "{stderr}");
    assert!(stderr.contains("postgres.container"), "{stderr}");
    assert!(ws.manifests().is_empty());
}

#[test]
fn a_table_lock_held_by_another_session_fails_the_source_in_time_not_forever() {
    let pg = Pg::start();
    for db in ["free", "locked"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(
            db,
            "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g",
        );
    }
    // Another session holds ACCESS EXCLUSIVE on locked.t for a minute.
    let mut holder = pg
        .client("psql")
        .args([
            "-d",
            "locked",
            "-c",
            "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_until("the lock is held", 10, || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation IS NOT NULL",
        ) != "0"
    });
    let ws = Workspace::new();
    ws.configure(&format!(
        "{}lock_wait = \"2s\"\n",
        Workspace::pg_section(&pg, &["free", "locked"])
    ));
    ws.init();
    let start = std::time::Instant::now();
    let out = ws.run(&["backup"]);
    let took = start.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    out.assert_exit(3);
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    let m = &ws.manifests()[0];
    assert_eq!(Workspace::artifact(m, "postgres/free")["status"], "ok");
    let locked = Workspace::artifact(m, "postgres/locked");
    assert_eq!(locked["status"], "failed");
    assert!(
        locked["error"].as_str().unwrap().contains("lock"),
        "{locked}"
    );
    // The repository lock went with the run: the next backup may start.
    ws.run(&["backup", "--source", "postgres/free"])
        .assert_exit(0);
}
