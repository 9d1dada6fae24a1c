//! The stack as it really runs: kompose-dr against a real Docker engine and
//! a production imitation (`core-postgres` with a named volume and no
//! published port, `core-redis` with AOF on a named volume and a password,
//! `core-mqtt`), named only by container.
//!
//! kompose-dr runs inside the engine's network namespace (as on a real host,
//! where the host routes to its bridges) so that it could reach container
//! addresses — which only MQTT uses; PostgreSQL and Redis go through the
//! engine alone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::docker::{Engine, Stack, engine, kdr, run};
use crate::support::{Workspace, run_ok, wait_until};

const SCRATCH_LABEL: &str = "io.kompose-dr.scratch";

/// A workspace whose configuration names the stack's containers only.
fn configure(ws: &Workspace, engine: &Engine, stack: &Stack, acme: &std::path::Path) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\ncontainer = \"{pg}\"\ndatabases = [\"*\"]\n\n\
         [redis]\ncontainer = \"{redis}\"\npassword = \"{redis_pw}\"\n\n\
         [[files]]\nname = \"traefik-acme\"\npath = \"{acme}\"\n\n\
         [mqtt]\ncontainer = \"{mqtt}\"\ntimeout = \"20s\"\n\n\
         [scratch]\nruntime = \"docker\"\n",
        host = engine.host,
        pg = stack.postgres,
        redis = stack.redis,
        redis_pw = stack.redis_password,
        acme = acme.display(),
        mqtt = stack.mqtt,
    ));
}

fn links_fingerprint(stack: &Stack) -> String {
    stack.psql(
        "linkwarden",
        r#"SELECT count(*) || ':' || md5(string_agg(id || '=' || url, ',' ORDER BY id)) FROM "Link""#,
    )
}

fn redis_fingerprint(stack: &Stack) -> String {
    format!(
        "{}:{}:{}",
        stack.redis_cli(&["DBSIZE"]).trim(),
        stack.redis_cli(&["GET", "k77"]).trim(),
        stack.redis_cli(&["HGET", "session:9", "user"]).trim()
    )
}

/// Scratch containers left behind: those whose owner (the label
/// `HOST/PID`) no longer runs. Other tests share the engine, and their
/// running processes' scratch containers are not leftovers.
fn scratch_containers(engine: &Engine) -> Vec<String> {
    engine
        .containers_with_label(SCRATCH_LABEL)
        .into_iter()
        .filter(|name| {
            let owner = engine.inspect(name, "{{index .Config.Labels \"io.kompose-dr.owner\"}}");
            let pid = owner
                .rsplit_once('/')
                .and_then(|(_, p)| p.trim().parse::<u32>().ok());
            pid.is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

/// The scratch containers of kompose-dr process `pid`.
fn scratch_of(engine: &Engine, pid: u32) -> Vec<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    engine.containers_with_label(&format!("io.kompose-dr.owner={}/{pid}", host.trim()))
}

/// A `verify` started in the background, once its scratch container runs.
fn verify_with_a_scratch_container(ws: &Workspace, engine: &Engine) -> std::process::Child {
    let mut child = kdr(ws, engine)
        .arg("verify")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while scratch_of(engine, child.id()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "verify never started a scratch container"
        );
        assert!(child.try_wait().unwrap().is_none(), "verify ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// A `TMPDIR` the engine cannot see (systemd's PrivateTmp: a tmpfs in the
/// restore's own mount namespace): no client container can read the
/// spool, so one pg_restore in the server's container reads it on stdin.
fn restore_with_a_private_tmp(ws: &Workspace, engine: &Engine, stack: &Stack) {
    let out = under_a_private_tmp(
        ws,
        engine,
        &[
            "restore",
            "--source",
            "postgres/umami",
            "--as",
            "umami_copy",
            "--jobs",
            "2",
            "--yes",
        ],
    );
    out.assert_exit(0)
        .assert_stderr_contains("no client container beside the server");
    assert_eq!(
        stack.psql("umami_copy", "SELECT count(*) FROM website"),
        "40"
    );
    // A backup there has no FIFO the engine can see: pg_dump's output
    // comes over the exec stream, whole.
    let before = ws.manifests().len();
    under_a_private_tmp(ws, engine, &["backup", "--source", "postgres/umami"]).assert_exit(0);
    let m = ws.manifests().pop().unwrap();
    assert_eq!(ws.manifests().len(), before + 1);
    let dump = ws.stock_decrypt(&ws.archive(Workspace::artifact(&m, "postgres/umami")));
    assert!(dump.starts_with(b"PGDMP"), "not a pg_dump custom archive");
    assert!(scratch_containers(engine).is_empty());
}

/// kompose-dr with `args` under `unshare -m` with a tmpfs of its own as
/// `$TMPDIR` (what systemd's PrivateTmp gives): the engine cannot see it.
fn under_a_private_tmp(ws: &Workspace, engine: &Engine, args: &[&str]) -> crate::support::Ran {
    let private = ws.dir.path().join("private-tmp");
    std::fs::create_dir_all(&private).unwrap();
    let c = kdr(ws, engine);
    let kdr_args: Vec<std::ffi::OsString> = c.get_args().map(ToOwned::to_owned).collect();
    let mut wrapped = engine.in_netns("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0700 tmpfs \"$TMPDIR\" && exec \"$@\"")
        .arg("sh")
        // `kdr`'s own command line after `nsenter --net=… --`.
        .args(kdr_args.iter().skip(2))
        .args(args)
        .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("DOCKER_HOST")
        .env("TMPDIR", &private)
        .stdin(Stdio::null());
    crate::support::Ran::of(&mut wrapped)
}

#[test]
fn the_stack_by_container_name_backs_up_verifies_drills_and_restores() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE linkwarden");
    stack.psql(
        "linkwarden",
        r#"CREATE TABLE "Link" (id int PRIMARY KEY, url text NOT NULL);
           INSERT INTO "Link" SELECT g, 'https://example.org/' || g FROM generate_series(1, 250) g;"#,
    );
    stack.psql("postgres", "CREATE DATABASE umami");
    stack.psql(
        "umami",
        "CREATE TABLE website AS SELECT g AS id FROM generate_series(1, 40) g",
    );
    stack.psql(
        "postgres",
        "CREATE ROLE app_reader LOGIN PASSWORD 'reader-pw'",
    );
    stack.redis_cli(&[
        "EVAL",
        "for i=1,120 do redis.call('SET','k'..i,i) end redis.call('HSET','session:9','user','ada') return 1",
        "0",
    ]);
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, r#"{"resolver":{"Account":{}}}"#).unwrap();
    std::fs::set_permissions(&acme, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    configure(&ws, engine, &stack, &acme);
    run(&ws, engine, &["init"]).assert_exit(0);

    // Events reach the broker by its container address. The subscriber is
    // ready once it has the retained probe: then the event is its second
    // message.
    run_ok(stack.exec(&stack.mqtt).args([
        "mosquitto_pub",
        "-t",
        "kdr-test/probe",
        "-r",
        "-m",
        "subscribed",
    ]));
    let heard = ws.dir.path().join("mosquitto_sub.out");
    let mut sub = stack
        .exec(&stack.mqtt)
        .args(["mosquitto_sub", "-t", "kdr-test/probe", "-t", "kompose/#"])
        .args(["-C", "2", "-W", "90"])
        .stdout(std::fs::File::create(&heard).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("mosquitto_sub to subscribe", 60, || {
        std::fs::read_to_string(&heard).is_ok_and(|h| h.contains("subscribed"))
    });

    let before_links = links_fingerprint(&stack);
    let before_redis = redis_fingerprint(&stack);
    let out = run(&ws, engine, &["--json", "backup"]);
    out.assert_exit(0);
    let report = out.json();
    let sources: Vec<&str> = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    for s in [
        "postgres/globals",
        "postgres/linkwarden",
        "postgres/umami",
        "redis",
        "files/traefik-acme",
    ] {
        assert!(sources.contains(&s), "{s} missing from {sources:?}");
    }
    let _ = sub.wait();
    let event = std::fs::read_to_string(&heard).unwrap();
    assert!(event.contains("\"backup.completed\""), "event: {event}");

    // The archives are the open format: the dump opens with the stock tools
    // and the counts recorded in the snapshot are exact.
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "postgres/linkwarden");
    let dump = ws.stock_decrypt(&ws.archive(a));
    assert!(dump.starts_with(b"PGDMP"), "not a pg_dump custom archive");
    assert!(
        Workspace::artifact(m, "redis")["kind"]
            .as_str()
            .unwrap()
            .contains("aof"),
        "{m}"
    );

    // verify in scratch containers from the production images, removed after.
    let out = run(&ws, engine, &["--json", "verify"]);
    out.assert_exit(0);
    assert!(
        scratch_containers(engine).is_empty(),
        "scratch containers left after verify: {:?}",
        scratch_containers(engine)
    );

    // A drill with its own checks, in scratch containers too.
    let drill = ws.dir.path().join("drill.toml");
    std::fs::write(
        &drill,
        "name = \"quarterly\"\n\n[[check]]\nsource = \"postgres/linkwarden\"\nsql = 'select count(*) from \"Link\"'\nequals = \"250\"\n\n[[check]]\nsource = \"redis\"\nmin_keys = 121\n",
    )
    .unwrap();
    run(&ws, engine, &["drill", "--drill", drill.to_str().unwrap()]).assert_exit(0);
    assert!(scratch_containers(engine).is_empty());

    // The incident.
    stack.psql("linkwarden", r#"DELETE FROM "Link" WHERE id > 10"#);
    stack.redis_cli(&["FLUSHALL"]);
    assert_ne!(links_fingerprint(&stack), before_links);

    // The plan says the Redis container is stopped and started.
    let out = run(
        &ws,
        engine,
        &["restore", "--source", "redis", "--replace", "--dry-run"],
    );
    out.assert_exit(0);
    assert!(
        out.all().contains(&format!("in container {}", stack.redis))
            && out.all().contains("stop it"),
        "{}",
        out.all()
    );

    run(
        &ws,
        engine,
        &[
            "restore",
            "--source",
            "postgres/linkwarden",
            "--replace",
            "--jobs",
            "2",
            "--yes",
        ],
    )
    .assert_exit(0)
    // pg_restore --jobs on the verified spool, in a client container
    // beside the server, removed after.
    .assert_stderr_contains("pg_restore --jobs from the verified plaintext spool");
    assert_eq!(links_fingerprint(&stack), before_links);
    assert!(scratch_containers(engine).is_empty());
    restore_with_a_private_tmp(&ws, engine, &stack);

    run(
        &ws,
        engine,
        &["restore", "--source", "redis", "--replace", "--yes"],
    )
    .assert_exit(0);
    assert_eq!(
        engine.inspect(&stack.redis, "{{.State.Running}}").trim(),
        "true",
        "Redis was not started again"
    );
    assert_eq!(redis_fingerprint(&stack), before_redis);
    // The replaced files are kept beside the data.
    let kept = stack
        .exec(&stack.redis)
        .args(["sh", "-c", "ls -A /data"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&kept.stdout).contains(".kompose-dr-replaced-"),
        "{:?}",
        kept
    );

    // kill -9 during a verify leaves its scratch container behind; the next
    // run sweeps it.
    let mut victim = verify_with_a_scratch_container(&ws, engine);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = victim.wait();
    // The Drop of the killed (and reaped) process never ran.
    let left = scratch_of(engine, victim.id());
    assert!(!left.is_empty(), "kill -9 left nothing to sweep");
    run(&ws, engine, &["verify", "--source", "postgres/umami"]).assert_exit(0);
    wait_until("the sweep", 10, || {
        scratch_of(engine, victim.id()).is_empty()
    });

    // SIGTERM (the systemd stop) and Ctrl-C remove them on the way out.
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut stopped = verify_with_a_scratch_container(&ws, engine);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped.id() as i32), signal).unwrap();
        let pid = stopped.id();
        let status = stopped.wait().unwrap();
        assert!(!status.success(), "{signal}: {status:?}");
        assert!(
            scratch_of(engine, pid).is_empty(),
            "{signal} left scratch containers: {:?}",
            scratch_of(engine, pid)
        );
    }
}

#[test]
fn a_wrong_container_name_exits_2_naming_the_close_match() {
    let engine = engine();
    let stack = Stack::start(engine);
    let ws = Workspace::new();
    let wrong = stack.postgres.replace("core-postgres", "core_postgres");
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[postgres]\ncontainer = \"{wrong}\"\n",
        engine.host
    ));
    run(&ws, engine, &["init"]).assert_exit(0);
    let out = run(&ws, engine, &["backup"]);
    out.assert_exit(2);
    out.assert_stderr_contains(&format!("did you mean `{}`?", stack.postgres));
    assert!(ws.manifests().is_empty());

    // doctor names it too, and the container it does find.
    let out = run(&ws, engine, &["doctor"]);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.all()
            .contains(&format!("did you mean `{}`?", stack.postgres)),
        "{}",
        out.all()
    );
}

#[test]
fn doctor_reports_each_container_and_the_scratch_runtime() {
    let engine = engine();
    let stack = Stack::start(engine);
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    configure(&ws, engine, &stack, &acme);
    run(&ws, engine, &["init"]).assert_exit(0);
    let out = run(&ws, engine, &["doctor"]);
    out.assert_exit(0);
    let all = out.all();
    for needle in [
        format!("container {}", stack.postgres),
        "PostgreSQL 15".to_owned(),
        format!("container {}", stack.redis),
        "Redis 7".to_owned(),
        format!("container {}", stack.mqtt),
        "scratch runtime".to_owned(),
        "docker ([scratch] runtime".to_owned(),
    ] {
        assert!(
            all.contains(&needle),
            "doctor does not say `{needle}`:\n{all}"
        );
    }
}

#[test]
fn an_engine_that_is_down_gives_a_clear_error() {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    let socket = ws.dir.path().join("no-engine.sock");
    ws.configure(&format!(
        "[docker]\nhost = \"unix://{}\"\n\n[postgres]\ncontainer = \"core-postgres\"\ndatabases = [\"app\"]\n\n\
         [[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        socket.display(),
        acme.display()
    ));
    ws.init();
    // The file is backed up; PostgreSQL fails, saying why: exit 3.
    let out = ws.run(&["backup"]);
    out.assert_exit(3);
    out.assert_stderr_contains(&format!(
        "cannot reach the container engine at unix://{}",
        socket.display()
    ));
    let m = &ws.manifests()[0];
    assert_eq!(Workspace::artifact(m, "files/traefik-acme")["status"], "ok");
}

/// In a container, pg_dump runs behind `sh -c '… | dd'` (its 4 KiB writes
/// gathered into 1 MiB ones for the engine's exec stream): a pg_dump that
/// fails must still fail the backup with its own message. The role may
/// read the table (the row counts pass) but not the sequence, which only
/// pg_dump reads.
#[test]
fn a_failing_pg_dump_in_the_container_fails_the_backup_with_its_message() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE shop");
    stack.psql(
        "shop",
        "CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item SELECT generate_series(1, 5000);
         CREATE SEQUENCE hidden;
         CREATE ROLE clerk LOGIN PASSWORD 'clerk-pw'; GRANT SELECT ON item TO clerk;",
    );
    let ws = Workspace::new();
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[postgres]\ncontainer = \"{}\"\nuser = \"clerk\"\n\
         password = \"clerk-pw\"\ndatabases = [\"shop\"]\nglobals = false\n",
        engine.host, stack.postgres
    ));
    run(&ws, engine, &["init"]).assert_exit(0);
    let out = run(&ws, engine, &["backup"]);
    assert_ne!(out.code(), Some(0), "{}", out.all());
    out.assert_stderr_contains("pg_dump failed (exit status 1)");
    out.assert_stderr_contains("permission denied for sequence hidden");
    assert!(!out.all().contains("clerk-pw"), "{}", out.all());

    // Allowed, the same dump goes through the batched stream whole.
    stack.psql("shop", "GRANT SELECT ON hidden TO clerk");
    run(&ws, engine, &["backup"]).assert_exit(0);
    let m = ws.manifests().pop().unwrap();
    let dump = ws.stock_decrypt(&ws.archive(Workspace::artifact(&m, "postgres/shop")));
    assert!(dump.starts_with(b"PGDMP"), "not a pg_dump custom archive");
    let listed = ws.dir.path().join("shop.dump");
    std::fs::write(&listed, &dump).unwrap();
    let toc = run_ok(
        std::process::Command::new("/usr/lib/postgresql/15/bin/pg_restore")
            .arg("-l")
            .arg(&listed),
    );
    assert!(toc.contains("TABLE DATA public item"), "{toc}");
}

/// The stack's PostgreSQL as the library resolves it, and a tool that
/// runs its clients in containers (as a backup run's).
async fn container_tool(
    engine: &Engine,
    stack: &Stack,
) -> (
    kompose_dr::model::config::PostgresConfig,
    kompose_dr::clients::postgres::DumpTool,
) {
    let cfg = kompose_dr::model::config::Config::from_toml(
        &format!(
            "[[repository]]\nname = \"r\"\nurl = \"/nonexistent\"\n\n[docker]\nhost = \"{}\"\n\n\
             [postgres]\ncontainer = \"{}\"\n",
            engine.host, stack.postgres
        ),
        std::path::Path::new("/etc/kompose-dr/test.toml"),
    )
    .unwrap();
    let pg = kompose_dr::clients::postgres::resolve(cfg.postgres.as_ref().unwrap())
        .await
        .unwrap();
    let tool = kompose_dr::clients::postgres::DumpTool::Container {
        container: pg.container.clone().unwrap(),
        version: String::new(),
        pipe: Default::default(),
    };
    (pg, tool)
}

/// pg_dump beside the server, off the exec stream: its output comes
/// through a FIFO in a private directory, whole; a failing pg_dump gives
/// its own status and message with an empty output (never a wait for a
/// FIFO nobody opens); one client container serves the run's dumps and
/// goes with the run's tool, leaving no FIFO behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_beside_the_server_comes_through_a_fifo() {
    use kompose_dr::clients::postgres::{DumpTool, bulk_command};
    use tokio::io::AsyncReadExt;
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql(
        &stack.pg_user,
        "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g",
    );
    let (pg, tool) = container_tool(engine, &stack).await;
    let dump = |db: &str| {
        let (pg, tool, db) = (pg.clone(), tool.clone(), db.to_owned());
        async move {
            let mut l = bulk_command(&pg, &tool, "pg_dump", &db).await;
            assert!(matches!(
                l,
                kompose_dr::clients::launch::Launch::Piped { .. }
            ));
            l.arg("--format=custom");
            let mut run = l.start("pg_dump", false).await.unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (mut o, mut e) = (run.stdout.take().unwrap(), run.stderr.take().unwrap());
            let (a, b) = tokio::join!(o.read_to_end(&mut out), e.read_to_end(&mut err));
            a.unwrap();
            b.unwrap();
            (
                run.wait().await.unwrap(),
                out,
                String::from_utf8_lossy(&err).into_owned(),
            )
        }
    };
    let (ended, out, err) = dump(&stack.pg_user).await;
    assert!(ended.success(), "{ended}: {err}");
    assert!(
        out.starts_with(b"PGDMP") && out.len() > 4_000_000,
        "{}",
        out.len()
    );
    let (ended, out, err) = dump("nosuch").await;
    assert_eq!(ended.to_string(), "exit status 1", "{err}");
    assert!(err.contains("database \"nosuch\" does not exist"), "{err}");
    assert!(out.is_empty());
    let mine = scratch_of(engine, std::process::id());
    assert_eq!(mine.len(), 1, "one client container for the run: {mine:?}");
    let DumpTool::Container { pipe, .. } = &tool else {
        unreachable!()
    };
    let dir = pipe.dir().expect("the run has a pipe");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("probe")],
        "FIFOs are unlinked"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    drop(tool);
    assert!(scratch_of(engine, std::process::id()).is_empty());
    assert!(!dir.exists());
}

/// The library's container launch, driven directly: pg_dump's status and
/// stderr come back through the batching wrapper, and a killed launch
/// leaves no pg_dump (nor dd) running in the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_pg_dump_reports_its_status_and_dies_with_its_launch() {
    use kompose_dr::clients::postgres::command;
    use tokio::io::AsyncReadExt;
    let engine = engine();
    let stack = Stack::start(engine);
    let (pg, tool) = container_tool(engine, &stack).await;
    let ps = || {
        let out = run_ok(stack.exec(&stack.postgres).args(["ps", "-o", "comm"]));
        out.lines()
            .filter(|l| matches!(l.trim(), "pg_dump" | "dd"))
            .count()
    };

    // A missing database: pg_dump's own message and status.
    let mut missing = command(&pg, &tool, "pg_dump", "nosuch");
    missing.arg("--format=custom");
    let mut run = missing.start("pg_dump", false).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut o, mut e) = (run.stdout.take().unwrap(), run.stderr.take().unwrap());
    let _ = tokio::join!(o.read_to_end(&mut out), e.read_to_end(&mut err));
    let ended = run.wait().await.unwrap();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(ended.to_string(), "exit status 1", "{err}");
    assert!(err.contains("database \"nosuch\" does not exist"), "{err}");
    assert!(!err.contains("records in"), "dd's statistics leaked: {err}");
    assert!(out.is_empty());

    // Waiting on a lock, then killed: nothing is left behind.
    let mut locker = stack
        .exec(&stack.postgres)
        .args([
            "psql",
            "-X",
            "-q",
            "-U",
            &stack.pg_user,
            "-d",
            &stack.pg_user,
        ])
        .args(["-c", "CREATE TABLE held (i int)"])
        .args(["-c", "BEGIN; LOCK TABLE held; SELECT pg_sleep(120)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while stack.psql(
        &stack.pg_user,
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted \
         AND relation = to_regclass('held')",
    ) != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the lock was never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut blocked = command(&pg, &tool, "pg_dump", &stack.pg_user);
    blocked.arg("--format=custom");
    let mut run = blocked.start("pg_dump", false).await.unwrap();
    let start = Instant::now();
    while ps() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pg_dump never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.kill();
    let start = Instant::now();
    while ps() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pg_dump or dd still runs after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = locker.kill();
    let _ = locker.wait();
}
