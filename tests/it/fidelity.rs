//! Restore fidelity against a real server: what comes back is what was
//! there — the database object itself (owner, ACL, settings, comment,
//! encoding, locale) and everything in it — live roles are never rolled
//! back silently, and every failure or interruption of the swap leaves
//! production as it was.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, PG_BIN, Pg, Workspace, script, wait_until};

/// A database full of unusual objects: many schemas, a partitioned table,
/// row-level security, a rule, a large object, an extension, a domain, an
/// enum, a trigger, a view, several owners; and a database object with a
/// restricted ACL, settings, a per-role setting, a comment, a connection
/// limit and an ICU collation.
const UNUSUAL: &str = r#"
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE words (w text, m mood, n posint, c citext);
INSERT INTO words VALUES ('a', 'ok', 1, 'X'), ('B', 'sad', 2, 'y'), ('z', 'happy', 3, 'Z'),
  ('Z', 'ok', 4, 'ä'), ('ä', 'ok', 5, 'é'), ('é', 'sad', 6, 'b');
CREATE TABLE events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT DATE '2025-06-01' + i, 'e' || i FROM generate_series(0, 300) i;
CREATE TABLE secrets (owner_name text, body text);
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON secrets USING (owner_name = current_user);
INSERT INTO secrets VALUES ('reader', 'r'), ('app', 'a');
CREATE TABLE audit (msg text);
CREATE RULE log_words AS ON INSERT TO words DO ALSO INSERT INTO audit VALUES ('word ' || NEW.w);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.what := upper(NEW.what); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE VIEW sorted AS SELECT w FROM words ORDER BY w;
SELECT lo_from_bytea(424242, 'a large object');
COMMENT ON TABLE words IS 'the words';
DO $$ BEGIN FOR i IN 1..12 LOOP
  EXECUTE format('CREATE SCHEMA s%s AUTHORIZATION reader', i);
  EXECUTE format('CREATE TABLE s%s.t (id serial PRIMARY KEY, v text)', i);
  EXECUTE format('INSERT INTO s%s.t (v) SELECT md5(g::text) FROM generate_series(1, %s) g', i, i * 10);
  EXECUTE format('ALTER TABLE s%s.t OWNER TO reader', i);
END LOOP; END $$;
GRANT SELECT ON words TO reader;
"#;

/// Creates roles `app` and `reader` and database `shop` (ICU `de-DE`,
/// owned by `app`) with [`UNUSUAL`] in it and a restricted database object.
fn unusual_database(pg: &Pg) {
    pg.psql(
        "postgres",
        "CREATE ROLE app LOGIN PASSWORD 'app-pw'; CREATE ROLE reader LOGIN PASSWORD 'reader-pw'",
    );
    pg.psql(
        "postgres",
        "CREATE DATABASE shop OWNER app TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8'",
    );
    pg.psql(
        "postgres",
        "REVOKE CONNECT, TEMPORARY ON DATABASE shop FROM PUBLIC; \
         GRANT CONNECT ON DATABASE shop TO reader; \
         GRANT CREATE ON DATABASE shop TO reader WITH GRANT OPTION; \
         ALTER DATABASE shop SET work_mem = '7MB'; \
         ALTER DATABASE shop SET search_path = \"$user\", public, s1; \
         ALTER ROLE reader IN DATABASE shop SET statement_timeout = '42s'; \
         COMMENT ON DATABASE shop IS 'the store''s data'; \
         ALTER DATABASE shop CONNECTION LIMIT 40",
    );
    pg.psql("shop", UNUSUAL);
    pg.psql(
        "shop",
        "ALTER TABLE words OWNER TO app; ALTER TABLE events OWNER TO app",
    );
}

/// Everything about database `db` that a restore must bring back, as
/// text: the database object (pg_dump --create writes it) and its whole
/// content, with pg_dump's random `\restrict` keys and the name taken out.
fn dump_of(pg: &Pg, db: &str) -> String {
    let out = pg
        .client("pg_dump")
        .args(["--create", "--format=plain", "--dbname", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump {db}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| l.replace(db, "DB"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts two dumps are equal, naming the first line that differs.
#[track_caller]
fn assert_same(before: &str, after: &str, what: &str) {
    assert!(
        before == after,
        "pg_dump --create differs after {what}: {}",
        first_difference(before, after)
    );
}

/// The first line where two dumps differ, for the assertion message.
fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| format!("line {}: before `{x}`, after `{y}`", i + 1))
        .unwrap_or_else(|| "one dump is longer".into())
}

fn databases_like(pg: &Pg, pattern: &str) -> String {
    pg.psql(
        "postgres",
        &format!("SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '{pattern}'"),
    )
}

#[test]
fn replace_and_as_bring_back_the_database_object_and_everything_in_it() {
    let pg = Pg::start();
    unusual_database(&pg);
    pg.psql(
        "postgres",
        "CREATE DATABASE legacy ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    pg.psql(
        "legacy",
        "CREATE TABLE t (s text); INSERT INTO t VALUES ('caf\u{e9}')",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["shop", "legacy"]));
    ws.init();
    let sorted = "SELECT string_agg(w, ' ' ORDER BY w) FROM words";
    let order = pg.psql("shop", sorted);
    assert_eq!(order, "a ä B é z Z", "ICU de-DE orders like this");
    let before = dump_of(&pg, "shop");
    let legacy_before = dump_of(&pg, "legacy");
    ws.run(&["backup"]).assert_exit(0);

    // Damage, then replace: everything comes back, the object included.
    pg.psql(
        "postgres",
        "GRANT CONNECT ON DATABASE shop TO PUBLIC; ALTER DATABASE shop RESET ALL; COMMENT ON DATABASE shop IS NULL",
    );
    pg.psql("shop", "DROP TABLE words CASCADE; DROP SCHEMA s3 CASCADE");
    pg.psql("legacy", "DELETE FROM t");
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/shop",
        "postgres/legacy",
        "--replace",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_same(&before, &dump_of(&pg, "shop"), "--replace");
    assert_eq!(
        pg.psql("shop", sorted),
        order,
        "the ICU collation came back"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT datlocprovider::text || ' ' || daticulocale || ' ' || datconnlimit FROM pg_database WHERE datname = 'shop'"),
        "i de-DE 40"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'legacy'"
        ),
        "LATIN1"
    );
    assert!(legacy_before == dump_of(&pg, "legacy"), "legacy differs");
    assert_eq!(
        databases_like(&pg, "kdr\\_restore\\_%"),
        "",
        "no scratch database is left (a replaced one is kept, by design)"
    );

    // --as: the same object under another name (the name is the only
    // difference, and dump_of takes it out).
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/shop",
        "--as",
        "shop_copy",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_same(&before, &dump_of(&pg, "shop_copy"), "--as");

    // verify compares the object with the facts, roles restored first.
    let out = ws.run(&["--json", "verify"]);
    out.assert_exit(0);
    let report = out.json();
    let shop = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "postgres/shop")
        .unwrap();
    let check = shop["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "database properties")
        .expect("verify checks the database object");
    assert_eq!(check["ok"], true, "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains("owner app"),
        "{check}"
    );
}

#[test]
fn restore_onto_a_server_without_the_roles_is_refused_before_anything_is_written() {
    let pg = Pg::start();
    unusual_database(&pg);
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["shop"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let other = Pg::start();
    let url = format!(
        "postgres://{}@127.0.0.1:{}/postgres",
        other.user, other.port
    );
    // The other server has another password: give the workspace its own.
    ws.configure(&format!(
        "[postgres]\nurl = \"{url}\"\npassword = \"{}\"\ndatabases = [\"shop\"]\n\n",
        other.password
    ));
    let out = ws.run(&["restore", "--source", "postgres/shop", "--yes"]);
    out.assert_exit(1);
    let err = out.all();
    assert!(
        err.contains("app") && err.contains("--source postgres/globals"),
        "{err}"
    );
    assert_eq!(databases_like(&other, "%shop%"), "");
    // Roles first, then the database: it comes back whole.
    ws.run(&["restore", "--source", "postgres/globals", "--yes"])
        .assert_exit(0);
    ws.run(&["restore", "--source", "postgres/shop", "--yes"])
        .assert_exit(0);
    assert_eq!(dump_of(&pg, "shop"), dump_of(&other, "shop"));
}

#[test]
fn existing_roles_are_never_rolled_back_unless_asked_and_the_plan_says_which() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "CREATE ROLE app LOGIN PASSWORD 'old-pw' CONNECTION LIMIT 5; CREATE ROLE admins; GRANT admins TO app; \
         CREATE ROLE gone LOGIN; CREATE DATABASE app OWNER app",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    // Since the backup: a new password, no login, another limit, the
    // membership revoked, a role dropped.
    pg.psql(
        "postgres",
        "ALTER ROLE app PASSWORD 'new-pw' NOLOGIN CONNECTION LIMIT 9 VALID UNTIL '2031-01-01'; REVOKE admins FROM app; DROP ROLE gone",
    );
    let state = "SELECT rolpassword || ' ' || rolcanlogin || ' ' || rolconnlimit || ' ' || rolvaliduntil \
                 || ' ' || pg_has_role('app', 'admins', 'member') FROM pg_authid WHERE rolname = 'app'";
    let live = pg.psql("postgres", state);

    // `--as` without --source: the plan names what is created and kept.
    let out = ws.run(&[
        "restore",
        "--as",
        "app_copy",
        "--source",
        "postgres/*",
        "--dry-run",
    ]);
    out.assert_exit(0);
    let plan = out.stdout();
    assert!(plan.contains("create gone"), "{plan}");
    assert!(
        plan.contains("leave existing") && plan.contains("app"),
        "{plan}"
    );
    let out = ws.run(&[
        "restore",
        "--as",
        "app_copy",
        "--source",
        "postgres/*",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_eq!(
        pg.psql("postgres", state),
        live,
        "the live role was not touched"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'gone'"
        ),
        "1"
    );
    assert!(out.stdout().contains("left existing"), "{}", out.stdout());

    // Asked for explicitly: the role is reset to the snapshot.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/globals",
        "--overwrite-roles",
        "--yes",
    ]);
    out.assert_exit(0);
    let reset = pg.psql("postgres", state);
    assert_ne!(reset, live);
    // Password, LOGIN, limit and membership as they were backed up
    // (pg_dumpall writes no VALID UNTIL for a role that had none, so a
    // date set since stays: the one attribute a reset cannot take back).
    assert!(
        reset.contains(" true 5 ") && reset.ends_with(" true"),
        "{reset}"
    );
    assert!(
        !reset.starts_with(live.split(' ').next().unwrap()),
        "the old password hash is back"
    );
}

#[test]
fn a_database_named_globals_is_backed_up_and_restored_beside_the_roles() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE globals");
    pg.psql(
        "globals",
        "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 7)",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["globals"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let m = &ws.manifests()[0];
    let sources: Vec<&str> = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"postgres/globals") && sources.contains(&"postgres/~globals"),
        "{sources:?}"
    );
    ws.run(&[
        "restore",
        "--source",
        "postgres/~globals",
        "--as",
        "g2",
        "--yes",
    ])
    .assert_exit(0);
    assert_eq!(pg.psql("g2", "SELECT count(*) FROM t"), "7");
    ws.run(&["verify"]).assert_exit(0);
}

/// A `bin_dir` whose pg_restore is the real one followed by `then`, after
/// the last pg_restore of a restore (not after its pre-data or data
/// section).
fn pg_restore_then(ws: &Workspace, then: &str) -> std::path::PathBuf {
    let bin = ws.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(
        &bin.join("pg_restore"),
        &format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {PG_BIN}/pg_restore --version ;; esac\n\
             {PG_BIN}/pg_restore \"$@\" || exit $?\n\
             case \" $* \" in *\" --section=pre-data \"*|*\" --section=data \"*) exit 0 ;; esac\n{then}\n"
        ),
    );
    for tool in ["pg_dump", "pg_dumpall", "psql"] {
        script(
            &bin.join(tool),
            &format!("#!/bin/sh\nexec {PG_BIN}/{tool} \"$@\"\n"),
        );
    }
    bin
}

#[test]
fn rows_written_into_an_empty_target_during_the_restore_are_not_dropped() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app; CREATE DATABASE spare");
    pg.psql("app", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    pg.psql("spare", "CREATE TABLE arrived (n int)");
    let ws = Workspace::new();
    // While pg_restore runs, someone writes into the (empty when planned)
    // target database.
    let bin = pg_restore_then(
        &ws,
        &format!(
            "PGDATABASE=late {PG_BIN}/psql -X -q -c 'CREATE TABLE arrived (n int); INSERT INTO arrived VALUES (42)'"
        ),
    );
    ws.configure(&Workspace::pg_section_bin(&pg, &["app"], &bin));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    pg.psql("postgres", "CREATE DATABASE late");
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/app",
        "--as",
        "late",
        "--yes",
    ]);
    out.assert_exit_in(&[1, 2]);
    let err = out.all();
    assert!(
        err.contains("holds data now") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(pg.psql("late", "SELECT n FROM arrived"), "42");
    assert_eq!(databases_like(&pg, "kdr\\_restore\\_%"), "");
}

#[test]
fn a_swap_that_cannot_terminate_sessions_leaves_production_open_and_unchanged() {
    let pg = Pg::start();
    // The restore runs as a role that owns the database but may not end a
    // superuser's session: pg_terminate_backend fails at the swap.
    pg.psql(
        "postgres",
        "CREATE ROLE restorer LOGIN CREATEDB PASSWORD 'restorer-pw'; CREATE DATABASE app OWNER restorer",
    );
    pg.psql(
        "app",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO restorer",
    );
    let ws = Workspace::new();
    ws.configure(&format!(
        "[postgres]\nurl = \"postgres://restorer@127.0.0.1:{}/postgres\"\npassword = \"restorer-pw\"\ndatabases = [\"app\"]\nglobals = false\n\n",
        pg.port
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    pg.psql("app", "INSERT INTO t VALUES (2)");
    // A superuser session on the database for the whole restore.
    let mut held = pg
        .client("psql")
        .args(["-X", "-q", "-d", "app", "-c", "SELECT pg_sleep(120)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the superuser session", 20, || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'",
        ) == "1"
    });
    let out = ws.run(&["restore", "--source", "postgres/app", "--replace", "--yes"]);
    let _ = held.kill();
    let _ = held.wait();
    out.assert_exit(1);
    let err = out.all();
    assert!(
        err.contains("is unchanged") && err.contains("open to connections"),
        "{err}"
    );
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM t"),
        "2",
        "production as it was"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'app'"
        ),
        "t"
    );
    assert_eq!(
        databases_like(&pg, "kdr\\_%"),
        "",
        "the restored copy was dropped"
    );
}

#[test]
fn an_interrupted_restore_leaves_production_as_it_was_and_a_killed_one_is_swept_up() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
    let ws = Workspace::new();
    let marker = ws.dir.path().join("restored");
    let bin = pg_restore_then(&ws, &format!("touch {}; sleep 60", marker.display()));
    ws.configure(&Workspace::pg_section_bin(&pg, &["app"], &bin));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    pg.psql("app", "INSERT INTO t VALUES (2)");

    for signal in ["TERM", "KILL"] {
        let _ = std::fs::remove_file(&marker);
        let mut child = ws
            .kdr()
            .args(["restore", "--source", "postgres/app", "--replace", "--yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("pg_restore to have run", 60, || marker.exists());
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        let waited = support::wait_child(&mut child, Duration::from_secs(30));
        assert!(waited.is_some(), "restore did not end after SIG{signal}");
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert_eq!(
            pg.psql("app", "SELECT count(*) FROM t"),
            "2",
            "SIG{signal}: production as it was"
        );
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT datallowconn FROM pg_database WHERE datname = 'app'"
            ),
            "t"
        );
        if signal == "TERM" {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("interrupted") && err.contains("unchanged"),
                "{err}"
            );
            assert_eq!(
                databases_like(&pg, "kdr\\_%"),
                "",
                "SIGTERM: the scratch database was dropped"
            );
        } else {
            assert!(
                databases_like(&pg, "kdr\\_restore\\_%").starts_with("kdr_restore_"),
                "kill -9 leaves it"
            );
        }
    }
    // The next restore drops what the killed one left, then does its work.
    let bin_ok = pg_restore_then(&ws, "true");
    ws.configure(&Workspace::pg_section_bin(&pg, &["app"], &bin_ok));
    ws.run(&["restore", "--source", "postgres/app", "--replace", "--yes"])
        .assert_exit(0);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "1");
    assert_eq!(databases_like(&pg, "kdr\\_restore\\_%"), "");
}
