//! A fresh stack takes a restore without `--replace` where the targets are
//! new (issue 25): a fresh PostgreSQL's default databases, a fresh Redis's
//! empty AOF, a file whose directories are gone, a missing volume — while
//! real data still needs `--replace`; `kdr_replaced_*` databases are never
//! backed up and doctor lists them; the lost local repository comes back
//! with `init`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::support::{Pg, Redis, Workspace};

fn backup(ws: &Workspace) {
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
}

/// How many `kdr_replaced_*` databases the server has.
fn set_aside(pg: &Pg) -> String {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'kdr\\_replaced\\_%'",
    )
}

/// The check named `name` in a `doctor --json` document.
fn doctor_check(ws: &Workspace, name: &str) -> serde_json::Value {
    let out = ws.run(&["--json", "doctor"]);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout())
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", out.all()));
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {doc:#}"))
        .clone()
}

#[test]
fn a_fresh_postgres_is_restored_without_replace_and_keeps_nothing_aside() {
    let old = Pg::start();
    old.psql(
        "postgres",
        "CREATE TABLE admin_notes (n int); INSERT INTO admin_notes VALUES (1), (2)",
    );
    old.psql("postgres", "CREATE DATABASE umami");
    old.psql(
        "umami",
        "CREATE TABLE website (id int); INSERT INTO website SELECT generate_series(1, 50)",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&old, &["postgres", "umami"]));
    ws.init();
    backup(&ws);

    // A fresh server: its `postgres` holds no user object, umami is new.
    let fresh = Pg::start();
    ws.configure(&Workspace::pg_section(&fresh, &["postgres", "umami"]));
    let out = ws.run(&["restore", "--yes"]);
    out.assert_exit(0);
    out.assert_stdout_contains("restored into database postgres, which held no user objects");
    out.assert_stdout_contains("restored into new database umami");
    assert!(!out.all().contains("REPLACES"), "{}", out.all());
    assert!(!out.all().contains("did not finish"), "{}", out.all());
    assert_eq!(set_aside(&fresh), "0");
    assert_eq!(
        fresh.psql("postgres", "SELECT count(*) FROM admin_notes"),
        "2"
    );
    assert_eq!(fresh.psql("umami", "SELECT count(*) FROM website"), "50");

    // Now they hold data: --replace is needed again.
    let out = ws.run(&["restore", "--source", "postgres/umami", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("exists and is not empty");

    // --replace onto a fresh server (what the operator typed) keeps
    // nothing aside either: an empty database is no data to keep.
    let second = Pg::start();
    ws.configure(&Workspace::pg_section(&second, &["postgres", "umami"]));
    let out = ws.run(&["restore", "--replace", "--yes"]);
    out.assert_exit(0);
    out.assert_stdout_contains("restored into database postgres, which held no user objects");
    assert_eq!(set_aside(&second), "0");
    assert_eq!(
        second.psql("postgres", "SELECT count(*) FROM admin_notes"),
        "2"
    );
}

#[test]
fn a_postgres_database_with_any_user_object_still_needs_replace() {
    let old = Pg::start();
    old.psql(
        "postgres",
        "CREATE TABLE admin_notes (n int); INSERT INTO admin_notes VALUES (1)",
    );
    old.psql("postgres", "CREATE DATABASE umami");
    old.psql("umami", "CREATE TABLE website (id int)");
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&old, &["postgres", "umami"]));
    ws.init();
    backup(&ws);

    let target = Pg::start();
    ws.configure(&Workspace::pg_section(&target, &["postgres", "umami"]));
    // A function alone is a user object.
    target.psql(
        "postgres",
        "CREATE FUNCTION kept() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    );
    let out = ws.run(&["restore", "--source", "postgres/postgres", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("database postgres");
    out.assert_stderr_contains("exists and is not empty");
    // So is a table.
    target.psql(
        "postgres",
        "DROP FUNCTION kept(); CREATE TABLE mine (n int)",
    );
    let out = ws.run(&["restore", "--source", "postgres/postgres", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("exists and is not empty");
    assert_eq!(target.psql("postgres", "SELECT count(*) FROM mine"), "0");

    // With --replace it is replaced, and what it held kept aside.
    let out = ws.run(&[
        "restore",
        "--source",
        "postgres/postgres",
        "--replace",
        "--yes",
    ]);
    out.assert_exit(0);
    out.assert_stdout_contains("what it held is kept as database kdr_replaced_");
    assert_eq!(set_aside(&target), "1");
    // A later restore names it for what it is.
    let out = ws.run(&["restore", "--source", "postgres/umami", "--yes"]);
    out.assert_exit(0);
    assert!(!out.all().contains("did not finish"), "{}", out.all());
    assert!(
        out.all()
            .contains("what database postgres held before `restore --replace` replaced it"),
        "{}",
        out.all()
    );

    // databases = ["*"] never backs it up; doctor lists it with the command.
    ws.configure(&format!(
        "{}\n[timeouts]\nconnect = \"5s\"\n",
        Workspace::pg_section(&target, &[]).replace("databases = []", "databases = [\"*\"]")
    ));
    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(0);
    let report = out.json();
    let sources: Vec<&str> = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert!(sources.contains(&"postgres/umami"), "{sources:?}");
    assert!(
        !sources.iter().any(|s| s.contains("kdr_replaced")),
        "{sources:?}"
    );
    let c = doctor_check(&ws, "postgres: replaced databases");
    assert_eq!(c["ok"], false, "{c:#}");
    let m = c["message"].as_str().unwrap();
    assert!(m.contains("DROP DATABASE \"kdr_replaced_"), "{m}");
}

#[test]
fn a_fresh_redis_data_directory_takes_a_restore_without_replace() {
    let src = Redis::start(true, None);
    src.fill(300);
    let ws = Workspace::new();
    let section = |r: &Redis| {
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            r.port,
            r.dir.path().display()
        )
    };
    ws.configure(&section(&src));
    ws.init();
    backup(&ws);

    // A fresh Redis with AOF writes its empty appendonlydir/; stopped.
    let mut fresh = Redis::start(true, None);
    assert_eq!(fresh.dbsize(), 0);
    fresh.kill();
    let dir = std::mem::replace(&mut fresh.dir, tempfile::tempdir().unwrap());
    // The harness' own files (not a server's) go.
    for f in ["redis.log", "redis.conf"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    assert!(dir.path().join("appendonlydir").is_dir());
    ws.configure(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
        fresh.port,
        dir.path().display()
    ));
    let out = ws.run(&["restore", "--yes"]);
    out.assert_exit(0);
    let copy = Redis::start_in(dir, true, None);
    assert_eq!(copy.dbsize(), 300);

    // One key is data.
    let mut one = Redis::start(true, None);
    one.cli(&["SET", "k", "v"]);
    one.kill();
    for f in ["redis.log", "redis.conf"] {
        let _ = std::fs::remove_file(one.dir.path().join(f));
    }
    ws.configure(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
        one.port,
        one.dir.path().display()
    ));
    let out = ws.run(&["restore", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("is not empty");
}

#[test]
fn a_file_whose_directories_are_gone_is_restored_with_the_recorded_mode() {
    let ws = Workspace::new();
    let data = ws.dir.path().join("data");
    let acme = data.join("traefik/letsencrypt/acme.json");
    std::fs::create_dir_all(acme.parent().unwrap()).unwrap();
    std::fs::write(&acme, "{\"certs\": []}").unwrap();
    std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o600)).unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n",
        acme.display()
    ));
    ws.init();
    backup(&ws);

    std::fs::remove_dir_all(data.join("traefik")).unwrap();
    let out = ws.run(&["restore", "--yes"]);
    out.assert_exit(0);
    out.assert_stdout_contains("created");
    assert_eq!(std::fs::read_to_string(&acme).unwrap(), "{\"certs\": []}");
    assert_eq!(std::fs::metadata(&acme).unwrap().mode() & 0o7777, 0o600);
    for d in [data.join("traefik"), data.join("traefik/letsencrypt")] {
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700, "{}", d.display());
        assert_eq!(m.uid(), std::fs::metadata(&acme).unwrap().uid());
    }
}

#[test]
fn a_file_under_a_missing_top_directory_is_refused_naming_it() {
    let top = std::path::PathBuf::from(format!("/kdr-fresh-{:08x}", std::process::id()));
    let acme = top.join("letsencrypt/acme.json");
    std::fs::create_dir_all(acme.parent().unwrap()).unwrap();
    std::fs::write(&acme, "{}").unwrap();
    let ws = Workspace::new();
    ws.configure(&format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n",
        acme.display()
    ));
    ws.init();
    backup(&ws);
    std::fs::remove_dir_all(&top).unwrap();
    let out = ws.run(&["restore", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains(&format!("the directory {} does not exist", top.display()));
    assert!(!top.exists(), "a directory below / was created");
}

#[test]
fn init_re_creates_a_lost_local_repository_and_doctor_and_backup_name_it() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("notes.txt");
    std::fs::write(&file, "x").unwrap();
    let offsite = ws.dir.path().join("offsite");
    ws.configure_repositories(
        &format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n[[repository]]\nname = \"offsite\"\nurl = \"{}\"\n",
            ws.repo.display(),
            offsite.display()
        ),
        &format!(
            "[[files]]\nname = \"notes\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    ws.init();
    backup(&ws);
    let stack = |dir: &std::path::Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("kompose-dr.json")).unwrap()).unwrap();
        m["stack"].as_str().unwrap().to_owned()
    };
    let before = stack(&offsite);

    // The host's disk is gone, and the local repository with it.
    std::fs::remove_dir_all(&ws.repo).unwrap();
    let c = doctor_check(&ws, "repository local: reach");
    assert_eq!(c["ok"], false, "{c:#}");
    let m = c["message"].as_str().unwrap();
    assert!(
        m.contains(&format!(
            "{} does not exist: run `kompose-dr init`",
            ws.repo.display()
        )),
        "{m}"
    );
    let out = ws.run(&["backup"]);
    out.assert_exit(3);
    assert!(
        out.stderr()
            .lines()
            .any(|l| l.contains("local") && l.contains("run `kompose-dr init`")),
        "{}",
        out.all()
    );

    // init re-creates it, with the stack of the one that remains.
    let out = ws.run(&["init"]);
    out.assert_exit(0);
    out.assert_stdout_contains("created repository local");
    out.assert_stdout_contains("repository offsite");
    assert_eq!(stack(&ws.repo), before);
    backup(&ws);
}

/// Container mode, the issue's own refusals: a fresh Redis container with
/// AOF (an empty appendonlydir/) and a volume that does not exist take the
/// restore without `--replace`; Redis holding a key still needs it.
#[test]
fn a_fresh_redis_container_and_a_missing_volume_take_a_restore_without_replace() {
    use crate::support::docker::{Stack, engine};
    use crate::support::{Ran, run_ok};
    let engine = engine();
    let old = Stack::start(engine);
    let mut mset = vec!["MSET".to_owned()];
    for i in 0..120 {
        mset.push(format!("key:{i}"));
        mset.push(format!("value {i}"));
    }
    old.redis_cli(&mset.iter().map(String::as_str).collect::<Vec<_>>());
    let volume = format!("kdr-fresh-vol-{}", old.suffix);
    let app = format!("kdr-fresh-app-{}", old.suffix);
    run_ok(engine.docker().args(["volume", "create", &volume]));
    std::fs::write(
        engine.volume_path(&volume).join("config.json"),
        "{\"v\": 1}",
    )
    .unwrap();
    run_ok(
        engine
            .docker()
            .args(["create", "--name", &app, "-v", &format!("{volume}:/data")])
            .arg(&engine.redis_image),
    );
    let ws = Workspace::new();
    let configure = |s: &Stack| {
        ws.configure(&format!(
            "[docker]\nhost = \"{}\"\n\n[redis]\ncontainer = \"{}\"\npassword = \"{}\"\n\n\
             [[directories]]\nname = \"vault\"\nvolume = \"{volume}\"\n",
            engine.host, s.redis, s.redis_password
        ));
    };
    configure(&old);
    let kdr = |args: &[&str]| Ran::of(ws.kdr().env_remove("DOCKER_HOST").args(args));
    kdr(&["init"]).assert_exit(0);
    kdr(&["backup"]).assert_exit(0);

    // The host is gone: the volume and its container with it; a fresh stack.
    run_ok(engine.docker().args(["rm", "-f", &app]));
    run_ok(engine.docker().args(["volume", "rm", &volume]));
    drop(old);
    let fresh = Stack::start(engine);
    configure(&fresh);
    let out = kdr(&["restore", "--yes"]);
    let cleanup = || {
        let _ = engine
            .docker()
            .args(["volume", "rm", "-f", &volume])
            .output();
    };
    if out.code() != Some(0) {
        cleanup();
    }
    out.assert_exit(0);
    out.assert_stdout_contains("(created: it did not exist)");
    assert_eq!(fresh.redis_cli(&["DBSIZE"]), "120");
    assert_eq!(
        std::fs::read_to_string(engine.volume_path(&volume).join("config.json")).unwrap(),
        "{\"v\": 1}"
    );
    // Now Redis holds keys: --replace again.
    let out = kdr(&["restore", "--source", "redis", "--yes"]);
    cleanup();
    out.assert_exit(1);
    out.assert_stderr_contains("holds 120 key(s)");
    out.assert_stderr_contains("--replace");
}
