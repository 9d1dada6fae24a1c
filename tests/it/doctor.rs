//! `doctor` walks the whole path against real throw-away servers: a good
//! configuration passes, and each prerequisite broken on purpose fails
//! with exit 1, naming its check and the fix, while every other check
//! still passes. Checks of what the units' user may read or write run with
//! `--as-user nobody` (the tests run as root, who may read anything).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Mosquitto, PG_BIN, Pg, Ran, Redis, Workspace, closed_port, run_ok, script};

const MQTT_USER: &str = "kdr";
const MQTT_PASSWORD: &str = "mqtt-secret-3f9a";
const REDIS_PASSWORD: &str = "redis-secret-8c1e";

/// What each section of a test's configuration is.
struct Parts {
    postgres: Option<String>,
    redis: Option<String>,
    files: Option<String>,
    mqtt: Option<String>,
    metrics: Option<String>,
}

impl Parts {
    fn none() -> Parts {
        Parts {
            postgres: None,
            redis: None,
            files: None,
            mqtt: None,
            metrics: None,
        }
    }
}

/// A workspace whose repository is initialised, with `parts`, fast
/// timeouts, and its own policy, drill and report directories.
fn workspace(parts: &Parts) -> Workspace {
    let ws = Workspace::new();
    configure(&ws, parts);
    ws.init();
    ws
}

fn configure(ws: &Workspace, parts: &Parts) {
    let body: String = [
        &parts.postgres,
        &parts.redis,
        &parts.files,
        &parts.mqtt,
        &parts.metrics,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    ws.configure(&format!("{body}\n[timeouts]\nconnect = \"5s\"\n"));
    let d = ws.dir.path();
    ws.prepend_top_level(&format!(
        "policies_dir = \"{}\"\ndrills_dir = \"{}\"\nreports_dir = \"{}\"",
        d.join("policies").display(),
        d.join("drills").display(),
        d.join("reports").display()
    ));
}

/// `doctor --json` (plus `extra` arguments): the exit code, the document,
/// and both streams.
fn doctor(ws: &Workspace, extra: &[&str]) -> (Option<i32>, serde_json::Value, Ran) {
    let mut args = vec!["--json", "doctor"];
    args.extend_from_slice(extra);
    let ran = Ran::of(kdr(ws).args(&args));
    let doc = serde_json::from_str(&ran.stdout())
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", ran.all()));
    (ran.code(), doc, ran)
}

/// The names of the failed checks.
fn failed(doc: &serde_json::Value) -> Vec<String> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The message of check `name`.
fn message(doc: &serde_json::Value, name: &str) -> String {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {doc:#}"))["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Asserts exit 1 and that exactly `name` failed, its message holding
/// every one of `fix`.
#[track_caller]
fn fails_only(ws: &Workspace, extra: &[&str], name: &str, fix: &[&str]) -> String {
    let (code, doc, ran) = doctor(ws, extra);
    assert_eq!(code, Some(1), "{}", ran.all());
    assert_eq!(doc["ok"], false);
    assert_eq!(failed(&doc), vec![name.to_owned()], "{doc:#}");
    let m = message(&doc, name);
    for f in fix {
        assert!(m.contains(f), "check `{name}` does not say `{f}`: {m}");
    }
    // The human output names it too.
    let text = Ran::of(kdr(ws).arg("doctor").args(extra));
    assert_eq!(text.code(), Some(1));
    assert!(
        text.stdout().contains(&format!("FAIL {name}: ")),
        "{}",
        text.all()
    );
    m
}

/// The binary, reading systemd units from the workspace's `units/`
/// (none unless a test installs one), not from this host's.
fn kdr(ws: &Workspace) -> Command {
    let mut c = ws.kdr();
    c.env("KOMPOSE_DR_UNIT_DIR", ws.dir.path().join("units"));
    c
}

/// The shipped backup unit, running as `user`, with `edit` applied to its
/// text, installed in the workspace's `units/`.
fn install_backup_unit(ws: &Workspace, user: &str, edit: impl Fn(String) -> String) {
    let shipped = include_str!("../../systemd/kompose-dr-backup.service");
    let text = edit(shipped.replace("User=kompose-dr", &format!("User={user}")));
    let dir = ws.dir.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kompose-dr-backup.service"), text).unwrap();
}

/// An installation that dropped the backup unit's capability and
/// sandbox: only the user's own rights count.
fn without_capabilities(text: String) -> String {
    text.lines()
        .filter(|l| {
            ![
                "AmbientCapabilities",
                "CapabilityBoundingSet",
                "ProtectSystem",
                "ReadWritePaths",
                "ProtectHome",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn pg_part(pg: &Pg, databases: &[&str]) -> String {
    Workspace::pg_section(pg, databases)
}

fn redis_part(r: &Redis, password: &str, data_dir: &Path) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\npassword = \"{password}\"\ndata_dir = \"{}\"\n\n",
        r.port,
        data_dir.display()
    )
}

fn mqtt_part(port: u16, password: &str) -> String {
    format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nusername = \"{MQTT_USER}\"\npassword = \"{password}\"\n\n"
    )
}

fn files_part(path: &Path) -> String {
    format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n\n",
        path.display()
    )
}

fn metrics_part(textfile: &Path) -> String {
    format!("[metrics]\ntextfile = \"{}\"\n\n", textfile.display())
}

/// A Redis with a password and a `dump.rdb` in its directory.
fn redis_with_data() -> Redis {
    let r = Redis::start(false, Some(REDIS_PASSWORD));
    r.fill(3);
    r.cli(&["SAVE"]);
    r
}

/// Hands the workspace to `nobody` (its configuration, keys and
/// repository), as an installation hands them to the units' user.
fn hand_to_nobody(ws: &Workspace) {
    run_ok(
        Command::new("chown")
            .args(["-R", "nobody"])
            .arg(ws.dir.path()),
    );
    std::fs::set_permissions(ws.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_good_configuration_passes_every_check_and_prints_no_secret() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let redis = redis_with_data();
    let broker = Mosquitto::start(Some((MQTT_USER, MQTT_PASSWORD)));
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    configure(
        &ws,
        &Parts {
            postgres: Some(pg_part(&pg, &["app"])),
            redis: Some(redis_part(&redis, REDIS_PASSWORD, redis.dir.path())),
            files: Some(files_part(&acme)),
            mqtt: Some(mqtt_part(broker.port, MQTT_PASSWORD)),
            metrics: Some(metrics_part(&ws.dir.path().join("kompose_dr.prom"))),
        },
    );
    // A policy and a drill, so that they are parsed and reports_dir checked.
    std::fs::create_dir_all(ws.dir.path().join("policies")).unwrap();
    std::fs::write(
        ws.dir.path().join("policies/nightly.toml"),
        "name = \"nightly\"\nschedule = \"0 0 3 * * *\"\nsources = [\"postgres/*\", \"redis\", \"files/*\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(ws.dir.path().join("drills")).unwrap();
    std::fs::write(
        ws.dir.path().join("drills/quarterly.toml"),
        "name = \"quarterly\"\nsources = [\"postgres/*\"]\n",
    )
    .unwrap();
    ws.init();

    let (code, doc, ran) = doctor(&ws, &[]);
    assert_eq!(code, Some(0), "{}", ran.all());
    assert_eq!(doc["ok"], true);
    assert!(failed(&doc).is_empty(), "{doc:#}");
    for name in [
        "user",
        "repository local: write",
        "postgres: connect",
        "postgres: databases",
        "postgres: pg_dump",
        "postgres: pg_dumpall",
        "postgres: globals",
        "redis: connect",
        "redis: data_dir",
        "files/acme",
        "mqtt",
        "metrics textfile",
        "scratch: postgres binaries",
        "scratch: redis-server",
        "scratch: user",
        "policies",
        "policies: coverage",
        "drills",
        "reports_dir",
        "identity",
    ] {
        message(&doc, name);
    }
    assert!(message(&doc, "postgres: pg_dump").contains("15"));
    assert!(message(&doc, "redis: data_dir").contains("dump.rdb"));
    assert!(
        message(&doc, "user").contains("--as-user kompose-dr"),
        "{doc:#}"
    );
    for secret in [pg.password.as_str(), REDIS_PASSWORD, MQTT_PASSWORD] {
        assert!(
            !ran.all().contains(secret),
            "a secret in the output:\n{}",
            ran.all()
        );
    }
}

#[test]
fn a_wrong_postgres_password_is_named() {
    let pg = Pg::start();
    let mut part = pg_part(&pg, &["postgres"]);
    part = part.replace(&pg.password, "not-the-password-71");
    let ws = workspace(&Parts {
        postgres: Some(part),
        ..Parts::none()
    });
    let m = fails_only(
        &ws,
        &[],
        "postgres: connect",
        &["password authentication failed", "postgres.password"],
    );
    assert!(!m.contains("not-the-password-71"), "{m}");
}

#[test]
fn an_unreachable_postgres_is_named() {
    let closed = closed_port();
    let port = closed.port;
    let ws = workspace(&Parts {
        postgres: Some(format!(
            "[postgres]\nurl = \"postgres://kompose@127.0.0.1:{port}/postgres\"\npassword = \"x\"\ndatabases = [\"app\"]\n\n"
        )),
        ..Parts::none()
    });
    fails_only(
        &ws,
        &[],
        "postgres: connect",
        &[
            &format!("127.0.0.1:{port}"),
            "is PostgreSQL running",
            "postgres.url",
        ],
    );
}

#[test]
fn a_missing_database_is_named() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let ws = workspace(&Parts {
        postgres: Some(pg_part(&pg, &["app", "nosuchdb"])),
        ..Parts::none()
    });
    let m = fails_only(
        &ws,
        &[],
        "postgres: databases",
        &["nosuchdb", "postgres.databases"],
    );
    assert!(!m.contains("app,"), "{m}");
}

/// The machine has one PostgreSQL (15), so an older pg_dump cannot be
/// installed: `postgres.bin_dir` points at a directory whose pg_dump only
/// answers `--version` as 9.6 would. The server is real; only the client
/// tool's version is stood in for, through the key the source itself reads.
#[test]
fn a_pg_dump_older_than_the_server_is_named() {
    let pg = Pg::start();
    let ws = Workspace::new();
    let bin = ws.dir.path().join("old-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["pg_dump", "pg_dumpall"] {
        script(
            &bin.join(tool),
            &format!("#!/bin/sh\necho '{tool} (PostgreSQL) 9.6.24'\n"),
        );
    }
    configure(
        &ws,
        &Parts {
            postgres: Some(Workspace::pg_section_bin(&pg, &["postgres"], &bin)),
            ..Parts::none()
        },
    );
    ws.init();
    let (code, doc, ran) = doctor(&ws, &[]);
    assert_eq!(code, Some(1), "{}", ran.all());
    assert_eq!(
        failed(&doc),
        vec!["postgres: pg_dump", "postgres: pg_dumpall"],
        "{doc:#}"
    );
    let m = message(&doc, "postgres: pg_dump");
    for needle in [
        "9.6.24",
        "PostgreSQL 15",
        "install postgresql-client-15",
        "postgres.bin_dir",
    ] {
        assert!(m.contains(needle), "no `{needle}` in: {m}");
    }
    // The real tools pass.
    configure(
        &ws,
        &Parts {
            postgres: Some(Workspace::pg_section_bin(
                &pg,
                &["postgres"],
                Path::new(PG_BIN),
            )),
            ..Parts::none()
        },
    );
    let (code, doc, _) = doctor(&ws, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
}

#[test]
fn a_wrong_redis_password_is_named() {
    let redis = redis_with_data();
    let ws = workspace(&Parts {
        redis: Some(redis_part(&redis, "wrong-redis-pw-55", redis.dir.path())),
        ..Parts::none()
    });
    let m = fails_only(&ws, &[], "redis: connect", &["redis.password"]);
    assert!(!m.contains("wrong-redis-pw-55"), "{m}");
}

#[test]
fn a_redis_data_dir_the_units_user_cannot_read_is_named() {
    let redis = redis_with_data();
    // The server's directory stays root's, 0700.
    std::fs::set_permissions(redis.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ws = workspace(&Parts {
        redis: Some(redis_part(&redis, REDIS_PASSWORD, redis.dir.path())),
        ..Parts::none()
    });
    hand_to_nobody(&ws);
    install_backup_unit(&ws, "nobody", without_capabilities);
    fails_only(
        &ws,
        &["--as-user", "nobody"],
        "redis: data_dir",
        &[
            "cannot list",
            "Permission denied",
            "CAP_DAC_READ_SEARCH",
            "redis.container",
        ],
    );
    // With the shipped unit's CAP_DAC_READ_SEARCH (and no sandbox in the
    // way) the same user reads it.
    install_backup_unit(&ws, "nobody", |t| {
        t.lines()
            .filter(|l| !l.starts_with("ProtectSystem") && !l.starts_with("ProtectHome"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (code, doc, _) = doctor(&ws, &["--as-user", "nobody"]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert!(message(&doc, "user").contains("dac_read_search"), "{doc:#}");
}

#[test]
fn a_missing_file_is_named() {
    let ws = Workspace::new();
    let gone = ws.dir.path().join("letsencrypt/acme.json");
    configure(
        &ws,
        &Parts {
            files: Some(files_part(&gone)),
            ..Parts::none()
        },
    );
    ws.init();
    fails_only(
        &ws,
        &[],
        "files/acme",
        &["does not exist", "[[files]] `acme`"],
    );
}

#[test]
fn an_unreachable_broker_is_named() {
    let closed = closed_port();
    let ws = workspace(&Parts {
        mqtt: Some(mqtt_part(closed.port, MQTT_PASSWORD)),
        ..Parts::none()
    });
    let m = fails_only(&ws, &[], "mqtt", &["is the broker running", "mqtt.url"]);
    assert!(!m.contains(MQTT_PASSWORD), "{m}");
}

#[test]
fn a_broker_refusing_the_credentials_is_named() {
    let broker = Mosquitto::start(Some((MQTT_USER, MQTT_PASSWORD)));
    let ws = workspace(&Parts {
        mqtt: Some(mqtt_part(broker.port, "wrong-mqtt-pw-19")),
        ..Parts::none()
    });
    let m = fails_only(
        &ws,
        &[],
        "mqtt",
        &["refused", "mqtt.username and mqtt.password"],
    );
    assert!(!m.contains("wrong-mqtt-pw-19"), "{m}");
}

#[test]
fn a_textfile_directory_the_units_user_cannot_write_is_named() {
    let ws = Workspace::new();
    let dir = ws.dir.path().join("node-exporter");
    configure(
        &ws,
        &Parts {
            metrics: Some(metrics_part(&dir.join("kompose_dr.prom"))),
            ..Parts::none()
        },
    );
    ws.init();
    hand_to_nobody(&ws);
    install_backup_unit(&ws, "nobody", without_capabilities);
    // node_exporter's directory: root's, 0755.
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(Command::new("chown").arg("root").arg(&dir));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    fails_only(
        &ws,
        &["--as-user", "nobody"],
        "metrics textfile",
        &["Permission denied", "ReadWritePaths", "metrics.textfile"],
    );
}

#[test]
fn an_identity_the_units_user_cannot_read_is_named() {
    let ws = workspace(&Parts::none());
    hand_to_nobody(&ws);
    run_ok(Command::new("chown").arg("root").arg(&ws.identity));
    std::fs::set_permissions(&ws.identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Under the shipped backup unit's capability the file opens, but the
    // drill unit has none: the check says so.
    fails_only(
        &ws,
        &["--as-user", "nobody"],
        "identity",
        &[
            "cannot read the identity file",
            "without capabilities",
            "chmod 0600",
            "identity_file",
        ],
    );
    // Without the capability, opening it fails outright.
    install_backup_unit(&ws, "nobody", without_capabilities);
    fails_only(
        &ws,
        &["--as-user", "nobody"],
        "identity",
        &[
            "cannot read the identity file",
            "Permission denied",
            "chmod 0600",
        ],
    );
}

#[test]
fn a_sandbox_that_does_not_cover_a_path_is_named() {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    configure(
        &ws,
        &Parts {
            files: Some(files_part(&acme)),
            metrics: Some(metrics_part(&ws.dir.path().join("kompose_dr.prom"))),
            ..Parts::none()
        },
    );
    ws.init();
    // The shipped unit, installed as is but for the user: its
    // ReadWritePaths cover neither this repository nor this textfile.
    install_backup_unit(&ws, "nobody", |t| t);
    let m = fails_only(
        &ws,
        &[],
        "sandbox: kompose-dr-backup.service",
        &[
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "systemctl edit kompose-dr-backup.service",
        ],
    );
    assert!(
        m.contains(&format!("cannot write {}", ws.repo.display())),
        "{m}"
    );
    assert!(
        m.contains(&format!("cannot write {}", ws.dir.path().display())),
        "{m}"
    );
    // Listing them is the fix.
    install_backup_unit(&ws, "nobody", |t| {
        t.replace(
            "ReadWritePaths=/var/local/data/backups",
            &format!(
                "ReadWritePaths={} /var/local/data/backups",
                ws.dir.path().display()
            ),
        )
    });
    let (code, doc, _) = doctor(&ws, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
}

#[test]
fn an_unreachable_repository_is_named() {
    let ws = Workspace::new();
    let id: PathBuf = ws.dir.path().join("s3-id");
    let secret: PathBuf = ws.dir.path().join("s3-secret");
    std::fs::write(&id, "GK0123456789abcdef01234567").unwrap();
    std::fs::write(&secret, "f".repeat(64)).unwrap();
    let closed = closed_port();
    let port = closed.port;
    let local = format!(
        "[[repository]]\nname = \"local\"\nurl = \"{}\"\n",
        ws.repo.display()
    );
    ws.configure_repositories(
        &format!(
            "{local}\n[[repository]]\nname = \"offsite\"\nurl = \"s3://kdr-doctor\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"garage\"\npath_style = true\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\ntimeout = \"2s\"\nretries = 1\n",
            id.display(),
            secret.display()
        ),
        "[timeouts]\nconnect = \"5s\"\n",
    );
    ws.run(&["init", "--repository", "local"]).assert_exit(0);
    let m = fails_only(
        &ws,
        &[],
        "repository offsite: reach",
        &[&format!("127.0.0.1:{port}")],
    );
    assert!(!m.contains(&"f".repeat(64)), "{m}");
}

#[test]
fn an_unreachable_notification_receiver_is_named_without_its_secrets() {
    let unreachable = closed_port();
    let closed = unreachable.port;
    let uuid = "5f1e8a2c-9d3b-4c7e-8f60-1a2b3c4d5e6f";
    let ws = Workspace::new();
    configure(&ws, &Parts::none());
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!(
            "{cfg}\n[[notify]]\nkind = \"gotify\"\nurl = \"http://127.0.0.1:{closed}/\"\ntoken = \"gotify-tok-42\"\n\n\
             [healthchecks]\nurl = \"http://127.0.0.1:{closed}/ping/{uuid}\"\n"
        ),
    )
    .unwrap();
    ws.init();
    let (code, doc, ran) = doctor(&ws, &[]);
    assert_eq!(code, Some(1), "{}", ran.all());
    assert_eq!(
        failed(&doc),
        vec!["notify gotify 127.0.0.1", "healthchecks 127.0.0.1"],
        "{doc:#}"
    );
    assert!(message(&doc, "notify gotify 127.0.0.1").contains("notify[0].url"));
    assert!(message(&doc, "healthchecks 127.0.0.1").contains("healthchecks.url"));
    for secret in [uuid, "gotify-tok-42"] {
        assert!(!ran.all().contains(secret), "{secret} in:\n{}", ran.all());
    }
}

/// Servers that accept a connection and then say nothing (a hung
/// PostgreSQL, Redis or broker) cost doctor `[timeouts] connect` each, not
/// for ever.
#[test]
fn servers_that_never_answer_are_bounded_by_the_connect_timeout() {
    // The kernel completes the handshakes; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let ws = Workspace::new();
    ws.configure(&format!(
        "[postgres]\nurl = \"postgres://kompose@127.0.0.1:{port}/postgres\"\npassword = \"x\"\n\n\
         [redis]\nurl = \"redis://127.0.0.1:{port}\"\n\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\n\
         [timeouts]\nconnect = \"2s\"\n"
    ));
    ws.init();
    let start = std::time::Instant::now();
    let (code, doc, ran) = doctor(&ws, &[]);
    let took = start.elapsed();
    assert_eq!(code, Some(1), "{}", ran.all());
    assert_eq!(
        failed(&doc),
        vec!["postgres: connect", "redis: connect", "mqtt"],
        "{doc:#}"
    );
    assert!(
        message(&doc, "postgres: connect").contains("[timeouts] connect"),
        "{doc:#}"
    );
    assert!(
        took < std::time::Duration::from_secs(12),
        "doctor took {took:?}"
    );
    drop(silent);
}

/// With policies, a configured source that no policy sends to a repository
/// fails `policies: coverage`, naming the source and the repository; a
/// policy that adds it makes the check pass.
#[test]
fn a_source_no_policy_sends_to_a_repository_is_named() {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    let vault = ws.dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    std::fs::write(vault.join("config.json"), "{}").unwrap();
    configure(
        &ws,
        &Parts {
            files: Some(format!(
                "{}[[directories]]\nname = \"vaultwarden\"\npath = \"{}\"\n\n",
                files_part(&acme),
                vault.display()
            )),
            ..Parts::none()
        },
    );
    ws.init();
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("nightly.toml"),
        "name = \"nightly\"\nschedule = \"0 0 3 * * *\"\nsources = [\"files/*\"]\n",
    )
    .unwrap();
    fails_only(
        &ws,
        &[],
        "policies: coverage",
        &[
            "no policy sends directories/vaultwarden to repository local",
            "directories/*",
        ],
    );
    // A second policy that sends it there.
    std::fs::write(
        policies.join("vault.toml"),
        "name = \"vault\"\nschedule = \"0 0 4 * * *\"\nsources = [\"directories/*\"]\nrepositories = [\"local\"]\n",
    )
    .unwrap();
    let (code, doc, ran) = doctor(&ws, &[]);
    assert_eq!(code, Some(0), "{}", ran.all());
    assert!(message(&doc, "policies: coverage").contains("every configured source"));
}
