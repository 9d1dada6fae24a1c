//! Every shipped example configuration parses and validates.

use std::path::Path;

use kompose_dr::model::config::{Config, DatabaseSelection, Location};

/// Loads an example with its `env_file` pointed at a stand-in secrets file.
fn load_example(path: &Path) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, "DB_PASSWORD=example-db-pw\nREDIS_PASSWORD=\n").unwrap();
    let (key, public_key) = crate::support::signing_key(dir.path(), "example");
    let text = std::fs::read_to_string(path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("env_file") {
                format!("env_file = \"{}\"", secrets.display())
            } else if l.starts_with("key_credential") {
                format!("key_file = \"{}\"", key.display())
            } else if l.starts_with("public_key") {
                format!("public_key = \"{public_key}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Config::from_toml(&text, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_example_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load_example(&path);
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn the_kompose_example_describes_the_real_stack() {
    let c = load_example(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kompose-dr.toml"
    )));
    assert_eq!(
        c.repositories[0].location,
        Location::Local("/var/local/data/backups".into())
    );
    match &c.repositories[1].location {
        Location::S3(s3) => {
            assert_eq!(
                (s3.bucket.as_str(), s3.prefix.as_str()),
                ("kompose-backups", "prod/")
            );
            assert_eq!(s3.endpoint.as_deref(), Some("http://garage:3900"));
            assert!(s3.path_style && s3.credentials.is_none());
        }
        other => panic!("the offsite repository is {other:?}"),
    }
    let pg = c.postgres.unwrap();
    // Everything through the engine, credentials from the container.
    assert_eq!(pg.container.as_ref().unwrap().name, "core-postgres");
    // WAL on, for the container case: no url, the sidecar does it.
    assert!(pg.wal.is_some(), "the example shows [postgres.wal] on");
    assert!(pg.credentials_from_container && !pg.user_configured);
    assert!(pg.password.is_none());
    assert_eq!(
        pg.databases,
        DatabaseSelection::List(
            [
                "keycloak",
                "linkwarden",
                "letterspace",
                "umami",
                "grafana",
                "kmps"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    let redis = c.redis.unwrap();
    assert_eq!(redis.container.as_ref().unwrap().name, "core-redis");
    assert!(redis.data_dir.is_none());
    assert!(
        redis.password.is_none(),
        "an empty REDIS_PASSWORD means no password"
    );
    assert_eq!(
        c.files[0].path,
        Path::new("/var/local/data/traefik/letsencrypt/acme.json")
    );
    assert_eq!(
        c.mqtt.unwrap().container.unwrap().name,
        "core-mqtt",
        "port 1883 is not published: the broker is reached by container"
    );
    assert_eq!(
        c.scratch.runtime,
        kompose_dr::model::config::ScratchRuntimeKind::Docker
    );
}

#[test]
fn shipped_drills_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/restore-drills");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let d = kompose_dr::ops::drill::Drill::load(&e.unwrap().path()).unwrap();
        // A stack drill judges the apps' health; the others run checks.
        assert!(d.scope == kompose_dr::ops::drill::Scope::Stack || !d.checks.is_empty());
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn shipped_policies_parse() {
    let p = kompose_dr::model::policy::Policy::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies"
    )))
    .unwrap();
    let nightly = p.iter().find(|p| p.name == "nightly").unwrap();
    assert_eq!(nightly.retention.keep_daily, Some(14));
    assert_eq!(nightly.retention.keep_weekly, Some(8));
    assert_eq!(nightly.retention.keep_monthly, Some(12));
    assert_eq!(nightly.retention.keep_yearly, Some(2));
    assert_eq!(nightly.schedule_text, "0 0 3 * * *");
}

#[test]
fn the_agent_port_is_none_the_stack_already_uses() {
    // The stack's own listeners: node_exporter, postgres_exporter,
    // redis_exporter, Prometheus, Alertmanager, Pushgateway, Grafana,
    // Gotify, Traefik, and the services themselves.
    const TAKEN: [u16; 12] = [
        9100, 9187, 9121, 9090, 9093, 9091, 3000, 80, 443, 8080, 5432, 6379,
    ];
    let c = load_example(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kompose-dr.toml"
    )));
    let port = c
        .agent
        .listen
        .expect("the example sets [agent] listen")
        .port();
    assert!(!TAKEN.contains(&port), "port {port} is taken in the stack");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(&format!("127.0.0.1:{port}")));
}

#[test]
fn the_quick_start_installs_only_what_a_backup_needs() {
    let quickstart =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart"))
            .unwrap();
    assert!(
        quickstart.contains("scripts/setup --runtime"),
        "{quickstart}"
    );
    // The runtime part of setup ends before any test tool or the S3 server.
    let setup =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup")).unwrap();
    let runtime = setup
        .split("if [ \"${1:-}\" = \"--runtime\" ]; then")
        .nth(1)
        .and_then(|rest| rest.split("\nfi\n").next())
        .expect("setup has a --runtime branch");
    for not_needed in [
        "garage",
        "docker",
        "mosquitto",
        "prometheus",
        "redis-server",
    ] {
        assert!(
            !runtime.contains(not_needed),
            "--runtime installs {not_needed}"
        );
    }
    assert!(runtime.contains("exit 0"));
}

/// The shipped policies send every kind of source the example configures
/// — its `[[directories]]` entry uncommented — to both repositories, and
/// the shipped drill reads the offsite copy.
#[test]
fn shipped_policies_cover_every_source_and_the_drill_reads_offsite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/kompose-dr.toml")).unwrap();
    let mut in_block = false;
    let text: String = text
        .lines()
        .map(|l| {
            if l == "# [[directories]]" {
                in_block = true;
            } else if !l.starts_with('#') {
                in_block = false;
            }
            match l.strip_prefix("# ") {
                Some(rest) if in_block => rest.to_owned(),
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kompose-dr.toml");
    std::fs::write(&copy, text).unwrap();
    let c = load_example(&copy);
    assert_eq!(
        c.directories.len(),
        1,
        "the example's [[directories]] entry"
    );
    let policies = kompose_dr::model::policy::Policy::load_dir(&root.join("policies")).unwrap();
    for r in &c.repositories {
        let missing = kompose_dr::ops::doctor::coverage::uncovered(&c, &policies, &r.name);
        assert!(missing.is_empty(), "repository {}: {missing:?}", r.name);
    }
    // Without directories/* the Vaultwarden volume would go nowhere.
    let mut narrow = policies.clone();
    narrow[0].sources.retain(|s| s != "directories/*");
    assert_eq!(
        kompose_dr::ops::doctor::coverage::uncovered(&c, &narrow, "offsite"),
        vec!["directories/vaultwarden".to_owned()]
    );
    let drill =
        kompose_dr::ops::drill::Drill::load(&root.join("restore-drills/kompose-quarterly.toml"))
            .unwrap();
    // No repository named: the offsite copy, by default.
    assert_eq!(drill.repository, None);
    assert_eq!(
        kompose_dr::ops::drill::stack::default_repository(&c).map(|r| r.name.as_str()),
        Some("offsite")
    );
    let stack = kompose_dr::ops::drill::Drill::load(
        &root.join("restore-drills/kompose-quarterly-stack.toml"),
    )
    .unwrap();
    assert_eq!(stack.scope, kompose_dr::ops::drill::Scope::Stack);
    assert!(!stack.apps.is_empty());
    assert!(c.repositories.iter().any(|r| r.name == "offsite"));
}
