//! Section E of docs/RUNBOOK.md, "The host is gone", run end to end: the
//! stack imitation backed up to a local repository and an S3 server
//! (Garage), then the containers, their volumes, the local repository,
//! kompose-dr's configuration, its secret files, the signing key and the
//! host's state destroyed; a fresh stack under the same names; then the
//! section's `sh` blocks, as written (production values replaced by the
//! test's), in bash with DOCKER_HOST at the private engine; then every
//! database compared (pg_dump equal, each role logs in with its password),
//! Redis, the file and the volume.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::support::docker::{Engine, Stack, engine};
use crate::support::s3::Garage;
use crate::support::{Ran, Workspace, require, run_ok};

/// The `sh` blocks of section E.
fn section_e() -> Vec<String> {
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    let mut inside = false;
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in runbook.lines() {
        if line.starts_with("## ") {
            inside = line.starts_with("## E.");
        }
        match (&mut current, line.trim_end()) {
            (None, "```sh") if inside => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Each database's schema and rows, as plain SQL without what differs
/// between two dumps of the same data (comments, `\restrict` keys).
fn dumps(stack: &Stack, dbs: &[&str]) -> Vec<String> {
    dbs.iter()
        .map(|db| {
            let out = run_ok(stack.exec(&stack.postgres).args([
                "pg_dump",
                "-U",
                &stack.pg_user,
                "--no-comments",
                db,
            ]));
            out.lines()
                .filter(|l| {
                    !l.starts_with("--")
                        && !l.starts_with("\\restrict")
                        && !l.starts_with("\\unrestrict")
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// Whether `role` logs in with `password` over TCP to the server's address
/// on the stack's network (scram there; loopback is trust), from inside
/// its container.
fn logs_in(stack: &Stack, role: &str, password: &str, db: &str) -> bool {
    stack
        .exec(&stack.postgres)
        .args(["sh", "-c"])
        .arg(format!(
            "PGPASSWORD='{password}' psql -h \"$(hostname -i)\" -U {role} -d {db} -Atc 'select 1'"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A volume's files with their modes and checksums, read by a throw-away
/// container from the PostgreSQL image (busybox inside).
fn volume_listing(engine: &Engine, volume: &str) -> String {
    run_ok(engine.docker().args(["run", "--rm", "--network", "none"]).args([
        "-v",
        &format!("{volume}:/v:ro"),
        &engine.postgres_image,
        "sh",
        "-c",
        "cd /v && find . -type f -exec stat -c '%n %a %u' {} + | sort && find . -type f -exec md5sum {} + | sort",
    ]))
}

fn redis_state(stack: &Stack) -> String {
    format!(
        "{}:{}",
        stack.redis_cli(&["DBSIZE"]).trim(),
        stack.redis_cli(&["GET", "k42"]).trim()
    )
}

/// The stack's data: two app databases with an owner role each (password
/// logins), 77 Redis keys, acme.json, and a volume with a file.
fn fill(stack: &Stack, engine: &Engine, volume: &str) {
    stack.psql(
        "postgres",
        "CREATE ROLE link_user LOGIN PASSWORD 'link-pw'; CREATE ROLE umami_user LOGIN PASSWORD 'umami-pw'",
    );
    stack.psql("postgres", "CREATE DATABASE linkwarden OWNER link_user");
    stack.psql("postgres", "CREATE DATABASE umami OWNER umami_user");
    stack.psql(
        "linkwarden",
        r#"SET ROLE link_user; CREATE TABLE "Link" (id int PRIMARY KEY, url text NOT NULL);
           INSERT INTO "Link" SELECT g, 'https://example.org/' || g FROM generate_series(1, 300) g;"#,
    );
    stack.psql(
        "umami",
        "SET ROLE umami_user; CREATE TABLE website AS SELECT g AS id FROM generate_series(1, 40) g",
    );
    stack.redis_cli(&[
        "EVAL",
        "for i=1,77 do redis.call('SET','k'..i,'v'..i) end return 1",
        "0",
    ]);
    run_ok(engine.docker().args(["volume", "create", volume]));
    run_ok(engine.docker().args(["run", "--rm", "--network", "none"]).args([
        "-v",
        &format!("{volume}:/v"),
        &engine.postgres_image,
        "sh",
        "-c",
        "echo vault > /v/db.sqlite3 && chmod 640 /v/db.sqlite3 && mkdir -p /v/attachments && echo a > /v/attachments/1",
    ]));
    start_vault_app(stack, engine, volume);
}

/// Vaultwarden's stand-in: the container the volume belongs to.
fn start_vault_app(stack: &Stack, engine: &Engine, volume: &str) {
    run_ok(
        engine
            .docker()
            .args(["run", "-d", "--name", &vault_app(stack)])
            .args(["--network", &stack.network, "-v"])
            .arg(format!("{volume}:/data"))
            .arg(&engine.mosquitto_image),
    );
}

fn vault_app(stack: &Stack) -> String {
    format!("vault_app-{}", stack.suffix)
}

#[test]
fn section_e_brings_the_whole_stack_back_from_the_offsite_copy_alone() {
    for tool in ["age", "zstd"] {
        require(tool);
    }
    let blocks = section_e();
    assert!(blocks.len() >= 4, "section E's sh blocks were not found");
    let engine = engine();
    let stack = Stack::start(engine);
    let volume = format!("vault_data-{}", stack.suffix);
    fill(&stack, engine, &volume);
    let garage = Garage::start();
    garage.bucket("kompose-backups");

    let ws = Workspace::new();
    let acme = ws.dir.path().join("traefik/acme.json");
    std::fs::create_dir_all(acme.parent().unwrap()).unwrap();
    std::fs::write(&acme, r#"{"resolver":{"Account":null}}"#).unwrap();
    std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secrets = ws.dir.path().join("secrets.env");
    std::fs::write(
        &secrets,
        format!("REDIS_PASSWORD={}\n", stack.redis_password),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keys = ws.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let offsite = garage.repository(
        &keys,
        "offsite",
        "s3://kompose-backups/prod/",
        &garage.endpoint(),
        "",
    );
    ws.configure_repositories(
        &format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n{offsite}",
            ws.repo.display()
        ),
        &format!(
            "[docker]\nhost = \"{host}\"\n\n\
             [postgres]\ncontainer = \"{pg}\"\ndatabases = [\"*\"]\nglobals = true\n\n\
             [redis]\ncontainer = \"{redis}\"\npassword = \"${{REDIS_PASSWORD:-}}\"\n\n\
             [[files]]\nname = \"traefik-acme\"\npath = \"{acme}\"\n\n\
             [[directories]]\nname = \"vaultwarden\"\nvolume = \"{volume}\"\n\n\
             [scratch]\nruntime = \"docker\"\n",
            host = engine.host,
            pg = stack.postgres,
            redis = stack.redis,
            acme = acme.display(),
        ),
    );
    ws.prepend_top_level(&format!("env_file = \"{}\"", secrets.display()));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);

    let dbs = ["linkwarden", "umami"];
    let before = dumps(&stack, &dbs);
    let redis_before = redis_state(&stack);
    assert_eq!(redis_before, "77:v42");
    let volume_before = volume_listing(engine, &volume);
    let acme_before = std::fs::read(&acme).unwrap();

    // What the operator still has: the identity (kept offline), the public
    // key, the offsite credentials.
    let offline = ws.dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    let id_file = offline.join("identity.txt");
    std::fs::copy(&ws.identity, &id_file).unwrap();
    let secret_file = offline.join("offsite-secret-key");
    std::fs::write(&secret_file, &garage.secret).unwrap();

    // The host is gone.
    stack.destroy_and_start_fresh();
    run_ok(engine.docker().args(["rm", "-f", &vault_app(&stack)]));
    run_ok(engine.docker().args(["volume", "rm", &volume]));
    for gone in [
        &ws.repo,
        &ws.state_dir(),
        &keys,
        &acme.parent().unwrap().to_owned(),
    ] {
        std::fs::remove_dir_all(gone).unwrap();
    }
    for gone in [&ws.config, &ws.identity, &ws.signing_key, &secrets] {
        std::fs::remove_file(gone).unwrap();
    }
    assert_eq!(
        stack.psql(
            "postgres",
            "select count(*) from pg_database where datname in ('linkwarden','umami')"
        ),
        "0"
    );

    let restored = ws.dir.path().join("kdr-restored");
    let substitutions: Vec<(&str, String)> = vec![
        ("/root/identity.txt", id_file.display().to_string()),
        (
            "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
            ws.public_key.clone(),
        ),
        ("GK31c2f218a2e44f485b94239e", garage.key_id.clone()),
        (
            "/root/offsite-secret-key",
            secret_file.display().to_string(),
        ),
        ("https://s3.example.net", garage.endpoint()),
        ("/root/kdr-restored", restored.display().to_string()),
        (
            "/etc/kompose-dr/identity.txt",
            ws.identity.display().to_string(),
        ),
        (
            "/etc/kompose-dr/kompose-dr.toml",
            ws.config.display().to_string(),
        ),
    ];
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kompose-dr"))
        .parent()
        .unwrap()
        .to_owned();
    let mut path = vec![bin_dir];
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap()));
    let path = std::env::join_paths(path).unwrap();
    // E1 to E3 (the restore), then the apps start (`docker compose up -d`:
    // here Vaultwarden's stand-in), then E4 (the new host's first backup).
    let session = |blocks: &[String]| {
        let mut body = String::from("set -euo pipefail\nset -x\n");
        body.push_str(&blocks.concat());
        for (production, test) in &substitutions {
            body = body.replace(production, test);
        }
        let out = Ran::of(
            std::process::Command::new("bash")
                .arg("-c")
                .arg(&body)
                .env("PATH", &path)
                .env("DOCKER_HOST", &engine.host)
                .env("DOCKER_CONFIG", engine.dir.join("cli"))
                .env("KOMPOSE_DR_STATE_DIR", ws.state_dir())
                .env("TMPDIR", ws.tmp())
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("KOMPOSE_DR_CONFIG")
                .stdin(Stdio::null()),
        );
        out.assert_exit(0);
        out.stdout()
    };
    let all = blocks.concat();
    for (production, _) in &substitutions {
        assert!(
            all.contains(production),
            "section E no longer says {production}"
        );
    }
    // The section puts files back at their paths below `/`: the
    // directories that exist (`/`, /tmp) must keep their owner and mode.
    let modes = || {
        ["/", "/tmp", "/var", "/usr"].map(|d| {
            let m = std::fs::metadata(d).unwrap();
            (
                d,
                m.permissions().mode(),
                std::os::unix::fs::MetadataExt::uid(&m),
            )
        })
    };
    let modes_before = modes();
    let start = std::time::Instant::now();
    let stdout = session(&blocks[..blocks.len() - 1]);
    assert_eq!(
        modes(),
        modes_before,
        "section E changed a system directory"
    );
    eprintln!(
        "runbook E: bootstrap to restored took {:?}",
        start.elapsed()
    );
    assert!(stdout.contains("(the recovery time)"), "{stdout}");
    start_vault_app(&stack, engine, &volume);
    // Everything is back, and the new host backs up and checks.
    // The same shell would still have E1's KOMPOSE_DR_CONFIG.
    session(&[
        "export KOMPOSE_DR_CONFIG=/etc/kompose-dr/kompose-dr.toml\n".to_owned(),
        blocks[blocks.len() - 1].clone(),
    ]);
    assert_eq!(dumps(&stack, &dbs), before);
    assert!(logs_in(&stack, "link_user", "link-pw", "linkwarden"));
    assert!(logs_in(&stack, "umami_user", "umami-pw", "umami"));
    assert!(
        !logs_in(&stack, "link_user", "wrong", "linkwarden"),
        "a wrong password logs in"
    );
    assert_eq!(redis_state(&stack), redis_before);
    assert_eq!(std::fs::read(&acme).unwrap(), acme_before);
    assert_eq!(
        std::fs::metadata(&acme).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(volume_listing(engine, &volume), volume_before);
    let replaced = stack.psql(
        "postgres",
        "select count(*) from pg_database where datname like 'kdr_replaced_%'",
    );
    assert_eq!(replaced, "0", "a fresh server's databases were 'replaced'");
}
