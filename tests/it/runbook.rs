//! Runs every command of docs/RUNBOOK.md, in order, against a real Docker
//! engine and a production imitation ([`Stack`]: `core-postgres`,
//! `core-redis` with AOF and a password, `core-mqtt`) plus Traefik's
//! `proxy_app` and Linkwarden's `link_app`, all with the stack's random
//! suffix. The fenced `sh` blocks are extracted, the runbook's production
//! values (paths, container names, the incident time) replaced in their
//! text by the test's, and run in bash with `DOCKER_HOST` at the private
//! engine, inside the engine's network namespace (as on a real host, where
//! kompose-dr reaches `core-mqtt` by its address).
//!
//! Two sessions, each starting with the settings block: part A with
//! kompose-dr, then, after the incident is done again, part B without it.
//! Host-side `psql`, `pg_restore`, `createdb`, `pg_dump` and `redis-cli`
//! (and in part B `kompose-dr`) are replaced by guards that fail, so the
//! runbook can only use the tools inside the containers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::support::docker::{Engine, Stack, engine};
use crate::support::{Ran, Workspace, require, run_ok, script};

/// The runbook's `sh` blocks: the settings (before part A), part A and
/// part B.
struct Blocks {
    settings: Vec<String>,
    a: Vec<String>,
    b: Vec<String>,
    /// Section E, "The host is gone": a session of its own, with no
    /// settings block (there is no configuration to read them from).
    e: Vec<String>,
}

fn sh_blocks(markdown: &str) -> Blocks {
    let mut blocks = Blocks {
        settings: Vec::new(),
        a: Vec::new(),
        b: Vec::new(),
        e: Vec::new(),
    };
    let mut part = ' ';
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => {
                let block = current.take().unwrap();
                match part {
                    'A' => blocks.a.push(block),
                    'B' => blocks.b.push(block),
                    'E' => blocks.e.push(block),
                    ' ' => blocks.settings.push(block),
                    _ => panic!(
                        "an sh block in a section the test does not run: put it in A, B or E"
                    ),
                }
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, l) if l.starts_with("## A.") => part = 'A',
            (None, l) if l.starts_with("## B.") => part = 'B',
            (None, l) if l.starts_with("## C.") => part = 'C',
            (None, l) if l.starts_with("## D.") => part = 'D',
            (None, l) if l.starts_with("## E.") => part = 'E',
            (None, l) if l.starts_with("## F.") => part = 'F',
            (None, _) => {}
        }
    }
    blocks
}

/// Extra containers beside the stack (Traefik's and Linkwarden's stand-ins,
/// real containers from the Mosquitto image), removed when dropped.
struct Extra<'a> {
    engine: &'a Engine,
    names: Vec<String>,
}

impl Drop for Extra<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .docker()
            .args(["rm", "-f"])
            .args(&self.names)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn links(stack: &Stack, db: &str) -> String {
    stack.psql(db, r#"SELECT count(*) FROM "Link""#)
}

fn redis_state(stack: &Stack) -> String {
    format!(
        "{}:{}",
        stack.redis_cli(&["DBSIZE"]),
        stack.redis_cli(&["GET", "k42"])
    )
}

/// The incident: most links deleted, Redis emptied, acme.json clobbered.
fn incident(stack: &Stack, acme: &Path) {
    stack.psql("linkwarden", r#"DELETE FROM "Link" WHERE id > 5"#);
    stack.redis_cli(&["FLUSHALL"]);
    std::fs::write(acme, "{}").unwrap();
    assert_eq!(links(stack, "linkwarden"), "5");
    assert_eq!(redis_state(stack), "0:");
}

/// `.State.StartedAt` of a container.
fn started_at(engine: &Engine, container: &str) -> String {
    engine.inspect(container, "{{.State.StartedAt}}")
}

/// A directory of guards named `tools`, each failing and saying so.
fn guards(dir: &Path, tools: &[&str]) {
    std::fs::create_dir(dir).unwrap();
    for t in tools {
        script(
            &dir.join(t),
            "#!/bin/sh\necho \"runbook: $0 on the host: use the one in the container\" >&2\nexit 97\n",
        );
    }
}

#[test]
fn every_runbook_command_works_against_the_containers() {
    for tool in ["jq", "age", "zstd", "sha256sum", "stat"] {
        require(tool);
    }
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    let blocks = sh_blocks(&runbook);
    assert_eq!(blocks.settings.len(), 1, "one settings block before part A");
    assert!(blocks.a.len() >= 5, "part A's sh blocks were not found");
    assert!(blocks.b.len() >= 7, "part B's sh blocks were not found");
    let t0 = Instant::now();

    // The stack: linkwarden with 300 links, Redis (AOF, password) with 77
    // keys, an acme.json that Traefik's container mounts.
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE linkwarden");
    stack.psql(
        "linkwarden",
        r#"CREATE TABLE "Link" (id int PRIMARY KEY, url text NOT NULL);
           INSERT INTO "Link" SELECT g, 'https://example.org/' || g FROM generate_series(1, 300) g;"#,
    );
    stack.redis_cli(&[
        "EVAL",
        "for i=1,77 do redis.call('SET','k'..i,'v'..i) end return 1",
        "0",
    ]);
    let before_redis = redis_state(&stack);
    assert_eq!(before_redis, "77:v42");

    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    let original_acme = r#"{"resolver":{"Account":null,"Certificates":[]}}"#;
    std::fs::write(&acme, original_acme).unwrap();
    std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o600)).unwrap();

    let proxy = format!("proxy_app-{}", stack.suffix);
    let link = format!("link_app-{}", stack.suffix);
    let _extra = Extra {
        engine,
        names: vec![proxy.clone(), link.clone()],
    };
    let label = format!("kdr-test.stack={}", stack.suffix);
    for (name, mount) in [
        (
            &proxy,
            Some(format!("{}:/letsencrypt/acme.json", acme.display())),
        ),
        (&link, None),
    ] {
        let mut c = engine.docker();
        c.args(["run", "-d", "--name", name, "--label", &label])
            .args(["--network", &stack.network]);
        if let Some(m) = mount {
            c.args(["-v", &m]);
        }
        run_ok(c.arg(&engine.mosquitto_image));
    }
    let proxy_sees_acme = || {
        run_ok(
            engine
                .docker()
                .args(["exec", &proxy, "cat", "/letsencrypt/acme.json"]),
        )
    };
    assert_eq!(proxy_sees_acme(), original_acme);

    // kompose-dr configured as examples/kompose-dr.toml: container names,
    // Redis' password from the stack's secrets file, the engine from
    // DOCKER_HOST.
    let secrets = ws.dir.path().join("secrets.env");
    std::fs::write(
        &secrets,
        format!(
            "# the stack's secrets\nREDIS_PASSWORD={}\n",
            stack.redis_password
        ),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    ws.configure(&format!(
        "[postgres]\ncontainer = \"{pg}\"\ndatabases = [\"linkwarden\"]\nglobals = true\n\n\
         [redis]\ncontainer = \"{redis}\"\npassword = \"${{REDIS_PASSWORD:-}}\"\n\n\
         [[files]]\nname = \"traefik-acme\"\npath = \"{acme}\"\n\n\
         [mqtt]\ncontainer = \"{mqtt}\"\ntimeout = \"10s\"\n\n\
         [scratch]\nruntime = \"docker\"\n",
        pg = stack.postgres,
        redis = stack.redis,
        acme = acme.display(),
        mqtt = stack.mqtt,
    ));
    ws.prepend_top_level(&format!("env_file = \"{}\"", secrets.display()));

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kompose-dr"))
        .parent()
        .unwrap()
        .to_owned();
    // bash (or the binary) with DOCKER_HOST at the engine, in its network
    // namespace, with the guards first on PATH.
    let in_engine = |program: &str, extra_path: &[&Path], guard_dir: &Path| {
        let mut path: Vec<PathBuf> = vec![guard_dir.to_owned()];
        path.extend(extra_path.iter().map(|p| p.to_path_buf()));
        path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
        let mut c = engine.in_netns(program);
        c.env("PATH", std::env::join_paths(path).unwrap())
            .env("DOCKER_HOST", &engine.host)
            .env("DOCKER_CONFIG", engine.dir.join("cli"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("REDISCLI_AUTH")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null());
        c
    };
    let host_tools = ["psql", "pg_restore", "createdb", "pg_dump", "redis-cli"];
    let guard_a = ws.dir.path().join("guard-a");
    guards(&guard_a, &host_tools);
    let guard_b = ws.dir.path().join("guard-b");
    guards(&guard_b, &[&host_tools[..], &["kompose-dr"]].concat());

    let kdr = |args: &[&str]| {
        Ran::of(
            in_engine(env!("CARGO_BIN_EXE_kompose-dr"), &[], &guard_a)
                .arg("--config")
                .arg(&ws.config)
                .args(args),
        )
    };
    kdr(&["init"]).assert_exit(0);
    kdr(&["backup"]).assert_exit(0);
    let incident_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let setup = t0.elapsed();

    // The runbook's production values and the test's, replaced in the
    // script text. Each must be in the runbook, or the substitution would
    // silently miss it.
    let substitutions: Vec<(&str, String)> = vec![
        (
            "/etc/kompose-dr/kompose-dr.toml",
            ws.config.display().to_string(),
        ),
        ("/var/local/data/backups", ws.repo.display().to_string()),
        (
            "/etc/kompose-dr/identity.txt",
            ws.identity.display().to_string(),
        ),
        (
            "/var/local/data/traefik/letsencrypt/acme.json",
            acme.display().to_string(),
        ),
        ("/opt/kompose/secrets.env", secrets.display().to_string()),
        ("2026-11-27T03:30:00Z", incident_time),
        ("core-postgres", stack.postgres.clone()),
        ("core-redis", stack.redis.clone()),
        ("proxy_app", proxy.clone()),
        ("link_app", link.clone()),
    ];
    let session = |blocks: &[String]| {
        let mut body = String::from("set -euo pipefail\nset -x\n");
        body.push_str(&blocks.concat());
        for (production, test) in &substitutions {
            assert!(
                body.contains(production),
                "the runbook no longer says {production}"
            );
            body = body.replace(production, test);
        }
        body
    };

    // Part A, with kompose-dr.
    incident(&stack, &acme);
    let proxy_started = started_at(engine, &proxy);
    let t_a = Instant::now();
    // On failure, `set -x` in stderr shows which runbook command it was.
    let out = Ran::of(
        in_engine("bash", &[&bin_dir], &guard_a)
            .arg("-c")
            .arg(session(&[&blocks.settings[..], &blocks.a[..]].concat())),
    );
    out.assert_exit(0);
    let part_a = t_a.elapsed();
    let stdout = out.stdout();
    for db in ["linkwarden", "linkwarden_restored"] {
        assert_eq!(links(&stack, db), "300", "{db}");
    }
    assert_eq!(redis_state(&stack), before_redis);
    assert_eq!(std::fs::read_to_string(&acme).unwrap(), original_acme);
    assert_eq!(
        std::fs::metadata(&acme).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(stdout.contains("600 "), "stat shows mode 600: {stdout}");
    // The plan says Redis' container is stopped and started (A1, A4).
    assert!(
        stdout.contains(&format!(
            "in container {} (stop it, replace the files, start it",
            stack.redis
        )),
        "the plan does not say it stops {}: {stdout}",
        stack.redis
    );
    assert_ne!(
        started_at(engine, &proxy),
        proxy_started,
        "Traefik restarted"
    );
    assert_eq!(proxy_sees_acme(), original_acme);
    assert_eq!(engine.inspect(&link, "{{.State.Running}}"), "true");
    let kept = run_ok(stack.exec(&stack.redis).args(["ls", "-A", "/data"]));
    assert!(kept.contains(".kompose-dr-replaced-"), "{kept}");

    // Part B, by hand: the incident again, and no kompose-dr.
    incident(&stack, &acme);
    let proxy_started = started_at(engine, &proxy);
    let t_b = Instant::now();
    let out = Ran::of(
        in_engine("bash", &[], &guard_b)
            .arg("-c")
            .arg(session(&[&blocks.settings[..], &blocks.b[..]].concat())),
    );
    out.assert_exit(0);
    let part_b = t_b.elapsed();
    assert_eq!(links(&stack, "linkwarden"), "300");
    assert_eq!(links(&stack, "linkwarden_manual2"), "300");
    assert_eq!(links(&stack, "linkwarden_before_restore"), "5");
    assert_eq!(redis_state(&stack), before_redis);
    let data = run_ok(stack.exec(&stack.redis).args(["ls", "-lA", "/data"]));
    assert!(data.contains(".before-restore-"), "{data}");
    assert_eq!(
        run_ok(
            stack
                .exec(&stack.redis)
                .args(["stat", "-c", "%U", "/data/appendonlydir"])
        )
        .trim(),
        "redis"
    );
    assert_eq!(std::fs::read_to_string(&acme).unwrap(), original_acme);
    assert_eq!(
        std::fs::metadata(&acme).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ne!(
        started_at(engine, &proxy),
        proxy_started,
        "Traefik restarted"
    );
    assert_eq!(proxy_sees_acme(), original_acme);
    assert_eq!(engine.inspect(&link, "{{.State.Running}}"), "true");
    eprintln!(
        "runbook: stack and backup {setup:?}, part A {part_a:?}, part B {part_b:?}, total {:?}",
        t0.elapsed()
    );
}
