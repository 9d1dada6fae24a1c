//! Unit tests of configuration loading: valid files load into typed values,
//! and every mistake (unknown key, bad URL, two password sources, a relative
//! path, a bad schedule) is refused with the key and line that caused it.

use super::*;

const R: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/kompose-dr/test.toml"))
}

fn base() -> String {
    format!(
        "[[repository]]\nname = \"local\"\nurl = \"/var/backups\"\n\n[encryption]\nrecipients = [\"{R}\"]\n"
    )
}

#[test]
fn minimal_config_loads() {
    let c = parse(&base()).unwrap();
    assert_eq!(c.repositories[0].name, "local");
    assert_eq!(
        c.repositories[0].location,
        Location::Local("/var/backups".into())
    );
    assert_eq!(c.compression.level, 3);
    assert_eq!(c.encryption.unwrap().recipients.len(), 1);
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = parse(&format!(
        "{}\n[postgres]\nurl = \"postgres://u@h/db\"\nbogus = 1\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.line, Some(10), "{e}");
    assert!(e.to_string().contains("bogus"), "{e}");
    assert!(e.to_string().contains("test.toml line 10"), "{e}");
}

#[test]
fn malformed_recipient_names_key_and_line() {
    let e = parse("[encryption]\nrecipients = [\n  \"age1nope\",\n]\n").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("encryption.recipients[0]"));
}

#[test]
fn missing_recipients_is_an_error() {
    let e = parse("[encryption]\nrecipients = []\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("encryption.recipients"));
}

#[test]
fn bad_urls_are_errors() {
    let e = parse(&format!("{}[postgres]\nurl = \"mysql://x@y/z\"\n", base())).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("postgres.url"));
    assert_eq!(e.line, Some(8));
    let e = parse(&format!(
        "{}[postgres]\nurl = \"postgres://h/db\"\n",
        base()
    ))
    .unwrap_err();
    assert!(e.message.contains("no user"), "{e}");
    let e = parse(&format!("{}[redis]\nurl = \"redis:/\"\n", base())).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("redis.url"));
    let e = parse("[[repository]]\nname = \"x\"\nurl = \"ftp://h/p\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("repository[0].url"));
}

#[test]
fn postgres_url_parts_and_password_from_env_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.env"), "DB_PASSWORD=pa%ss\n").unwrap();
    let text = format!(
        "env_file = \"secrets.env\"\n{}[postgres]\nurl = \"postgres://kompose@core_postgres:5433/postgres\"\npassword = \"${{DB_PASSWORD}}\"\ndatabases = [\"a\", \"b\"]\njobs = 3\n",
        base()
    );
    let c = Config::from_toml(&text, &dir.path().join("c.toml")).unwrap();
    let pg = c.postgres.unwrap();
    assert_eq!(pg.endpoint.host, "core_postgres");
    assert_eq!(pg.endpoint.port, 5433);
    assert_eq!(pg.endpoint.user, "kompose");
    assert_eq!(pg.password.unwrap().expose(), "pa%ss");
    assert_eq!(
        pg.databases,
        DatabaseSelection::List(vec!["a".into(), "b".into()])
    );
    assert_eq!(pg.jobs.get(), 3);
    assert!(pg.globals);
}

#[test]
fn unreadable_env_file_names_the_key() {
    let e = parse(&format!(
        "env_file = \"/nonexistent/secrets.env\"\n{}",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("env_file"));
    assert_eq!(e.line, Some(1));
}

#[test]
fn unset_variable_names_key_and_variable() {
    let e = parse(&format!(
        "{}[redis]\nurl = \"redis://h:6379\"\npassword = \"${{KDR_SURELY_UNSET}}\"\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("redis.password"));
    assert!(e.message.contains("KDR_SURELY_UNSET"));
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let text = format!(
        "{}[redis]\nurl = \"redis://h\"\npassword_file = \"{}\"\n",
        base(),
        dir.path().join("pw").display()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.redis.unwrap().password.unwrap().expose(), "s3cret");
}

#[test]
fn two_password_sources_are_refused() {
    let e = parse(&format!(
        "{}[redis]\nurl = \"redis://h\"\npassword = \"a\"\npassword_file = \"/x\"\n",
        base()
    ))
    .unwrap_err();
    assert!(e.message.contains("only one"), "{e}");
}

#[test]
fn star_must_stand_alone_and_levels_are_checked() {
    let e = parse(&format!(
        "{}[postgres]\nurl = \"postgres://u@h/db\"\ndatabases = [\"*\", \"x\"]\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("postgres.databases"));
    let e = parse(&format!("{}[compression]\nlevel = 40\n", base())).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("compression.level"));
}

#[test]
fn files_need_absolute_unique_names() {
    let e = parse(&format!(
        "{}[[files]]\nname = \"a\"\npath = \"/x\"\n[[files]]\nname = \"a\"\npath = \"/y\"\n",
        base()
    ))
    .unwrap_err();
    assert!(e.message.contains("twice"));
    let e = parse(&format!(
        "{}[[files]]\nname = \"a\"\npath = \"rel\"\n",
        base()
    ))
    .unwrap_err();
    assert!(e.message.contains("absolute"));
}

#[test]
fn mqtt_and_metrics_sections() {
    let c = parse(&format!(
        "{}[mqtt]\nurl = \"mqtts://broker\"\nusername = \"kdr\"\npassword = \"x\"\ntimeout = \"3s\"\n\n[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter/kompose_dr.prom\"\n",
        base()
    ))
    .unwrap();
    let m = c.mqtt.unwrap();
    assert!(m.tls);
    assert_eq!((m.host.as_str(), m.port), ("broker", 8883));
    assert_eq!(m.topic_prefix, "kompose");
    assert_eq!(m.timeout, std::time::Duration::from_secs(3));
    assert_eq!(
        c.metrics.unwrap().textfile,
        Path::new("/var/lib/prometheus/node-exporter/kompose_dr.prom")
    );
    let e = parse(&format!("{}[mqtt]\nurl = \"mqtt://u:p@broker\"\n", base())).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("mqtt.url"));
    let e = parse(&format!(
        "{}[mqtt]\nurl = \"mqtt://broker\"\npassword = \"p\"\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("mqtt.username"));
    let e = parse(&format!(
        "{}[mqtt]\nurl = \"mqtt://broker\"\ntimeout = \"soon\"\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("mqtt.timeout"));
}

fn with_repo(repo: &str) -> Result<Config, ConfigError> {
    parse(&format!("{repo}\n[encryption]\nrecipients = [\"{R}\"]\n"))
}

#[test]
fn s3_repositories_load_with_defaults_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = (dir.path().join("id"), dir.path().join("secret"));
    std::fs::write(&id, "GKexample\n").unwrap();
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let c = with_repo(&format!(
        "[[repository]]\nname = \"offsite\"\nurl = \"s3://backups/prod/kompose/\"\nendpoint = \"http://garage:3900\"\nregion = \"garage\"\npath_style = true\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\npart_size = \"64MiB\"\nobject_lock = {{ mode = \"compliance\", days = 400 }}\n",
        id.display(),
        secret.display()
    ))
    .unwrap();
    let Location::S3(s3) = &c.repositories[0].location else {
        panic!("not S3")
    };
    assert_eq!(s3.bucket, "backups");
    assert_eq!(s3.prefix, "prod/kompose/");
    assert_eq!(s3.part_size, 64 << 20);
    assert_eq!(s3.concurrency, 4);
    assert_eq!(s3.attempts, 6);
    assert_eq!(
        s3.object_lock,
        Some(ObjectLock {
            mode: ObjectLockMode::Compliance,
            days: 400
        })
    );
    let creds = s3.credentials.as_ref().unwrap();
    assert_eq!(creds.secret_access_key.expose(), "s3cr3t-value");
    assert!(!format!("{c:?}").contains("s3cr3t-value"));
    assert!(c.secrets().iter().any(|s| s.expose() == "s3cr3t-value"));

    let c = with_repo("[[repository]]\nname = \"aws\"\nurl = \"s3://my-bucket\"\n").unwrap();
    let Location::S3(s3) = &c.repositories[0].location else {
        panic!("not S3")
    };
    assert_eq!((s3.prefix.as_str(), s3.region.as_str()), ("", "us-east-1"));
    assert_eq!(s3.part_size, 16 << 20);
}

#[test]
fn s3_mistakes_name_key_and_line() {
    let cases = [
        (
            "url = \"s3://Bad_Bucket/x\"",
            "repository[0].url",
            "not a bucket name",
        ),
        (
            "url = \"s3://ok-bucket/x\"\npart_size = \"1MiB\"",
            "repository[0].part_size",
            "5MiB to 5GiB",
        ),
        (
            "url = \"s3://ok-bucket/x\"\npart_size = \"16 parsecs\"",
            "repository[0].part_size",
            "unknown size unit",
        ),
        (
            "url = \"s3://ok-bucket/x\"\naccess_key_id_file = \"/nope\"",
            "repository[0].access_key_id_file",
            "set both",
        ),
        (
            "url = \"s3://ok-bucket/x\"\naccess_key_id_file = \"/nope/id\"\nsecret_access_key_file = \"/nope/s\"",
            "repository[0].access_key_id_file",
            "cannot read /nope/id",
        ),
        (
            "url = \"s3://ok-bucket/x\"\nendpoint = \"garage:3900\"",
            "repository[0].endpoint",
            "http://",
        ),
        (
            "url = \"s3://ok-bucket/x\"\nendpoint = \"http://k:s@garage:3900\"",
            "repository[0].endpoint",
            "credentials do not belong",
        ),
        (
            "url = \"s3://ok-bucket/x\"\nobject_lock = { mode = \"forever\", days = 3 }",
            "repository[0].object_lock.mode",
            "governance",
        ),
        (
            "url = \"s3://ok-bucket/x\"\nconcurrency = 0",
            "repository[0].concurrency",
            "between 1 and 64",
        ),
        (
            "url = \"/var/backups\"\nendpoint = \"http://garage:3900\"",
            "repository[0].endpoint",
            "only to s3://",
        ),
        (
            "url = \"gs://bucket/x\"",
            "repository[0].url",
            "not supported",
        ),
    ];
    for (body, key, message) in cases {
        let e = with_repo(&format!("[[repository]]\nname = \"r\"\n{body}\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{body}: {e}");
        assert!(e.to_string().contains(message), "{body}: {e}");
        assert!(e.line.is_some_and(|l| l >= 3), "{body}: {e}");
    }
}

#[test]
fn agent_listen_and_schedules_are_typed_at_load() {
    let c = parse(&format!(
        "prune_schedule = \"0 30 4 * * *\"\ndrill_schedule = \"0 0 5 1 * *\"\n{}\n[agent]\nlisten = \"127.0.0.1:9731\"\ncatch_up = true\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.agent.listen, Some(([127, 0, 0, 1], 9731).into()));
    assert!(c.agent.catch_up);
    let prune = c.agent.prune_schedule.unwrap();
    assert_eq!(prune.as_str(), "0 30 4 * * *");
    assert!(prune.cron().upcoming(chrono::Utc).next().is_some());
    assert_eq!(c.agent.drill_schedule.unwrap().to_string(), "0 0 5 1 * *");

    let c = parse(&base()).unwrap();
    assert!(c.agent.listen.is_none() && c.agent.prune_schedule.is_none());
}

#[test]
fn bad_listen_and_schedules_name_key_and_line() {
    let e = parse(&format!("prune_schedule = \"30 4 * * *\"\n{}", base())).unwrap_err();
    assert_eq!(
        (e.key.as_deref(), e.line),
        (Some("prune_schedule"), Some(1))
    );
    assert!(e.message.contains("seconds field first"), "{e}");
    let e = parse(&format!("\ndrill_schedule = \"often\"\n{}", base())).unwrap_err();
    assert_eq!(
        (e.key.as_deref(), e.line),
        (Some("drill_schedule"), Some(2))
    );
    let e = parse(&format!("{}[agent]\nlisten = \"localhost\"\n", base())).unwrap_err();
    assert_eq!((e.key.as_deref(), e.line), (Some("agent.listen"), Some(8)));
    assert_eq!(
        e.message,
        "`localhost` is not an address: write 127.0.0.1:9731"
    );
}

#[test]
fn the_lock_wait_defaults_to_five_minutes_and_a_bad_one_is_named() {
    let c = parse(&format!(
        "{}[postgres]\nurl = \"postgres://u@h/db\"\n",
        base()
    ))
    .unwrap();
    assert_eq!(
        c.postgres.unwrap().lock_wait,
        std::time::Duration::from_secs(300)
    );
    let e = parse(&format!(
        "{}[postgres]\nurl = \"postgres://u@h/db\"\nlock_wait = \"soon\"\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("postgres.lock_wait"));
    assert_eq!(e.line, Some(9));
    assert!(e.message.contains("5m"), "{e}");
}

#[test]
fn timeouts_default_to_minutes_and_seconds_not_forever() {
    let c = parse(&base()).unwrap();
    let t = &c.timeouts;
    assert_eq!(t.stall, std::time::Duration::from_secs(600));
    assert_eq!(t.connect, std::time::Duration::from_secs(15));
    assert_eq!(t.child_exit, std::time::Duration::from_secs(60));
    assert_eq!(t.stall_for("postgres/app"), t.stall);
}

#[test]
fn stall_timeouts_are_set_globally_and_per_source() {
    let c = parse(&format!(
        "{}[timeouts]\nstall = \"2m\"\nconnect = \"5s\"\nchild_exit = \"30s\"\n\n\
         [postgres]\nurl = \"postgres://u@h/db\"\nstall_timeout = \"1h\"\n\n\
         [redis]\nurl = \"redis://h\"\nstall_timeout = \"20m\"\n\n\
         [[files]]\nname = \"acme\"\npath = \"/a.json\"\nstall_timeout = \"30s\"\n\n\
         [[files]]\nname = \"other\"\npath = \"/b\"\n",
        base()
    ))
    .unwrap();
    let t = &c.timeouts;
    let d = std::time::Duration::from_secs;
    assert_eq!((t.stall, t.connect, t.child_exit), (d(120), d(5), d(30)));
    assert_eq!(t.stall_for("postgres/app"), d(3600));
    assert_eq!(t.stall_for("postgres/globals"), d(3600));
    assert_eq!(t.stall_for("redis"), d(1200));
    assert_eq!(t.stall_for("files/acme"), d(30));
    assert_eq!(t.stall_for("files/other"), d(120));
    assert_eq!(
        Timeouts::stall_key("postgres/app"),
        "postgres.stall_timeout"
    );
    assert_eq!(
        Timeouts::stall_key("files/acme"),
        "stall_timeout of [[files]] `acme`"
    );
}

#[test]
fn a_bad_or_zero_timeout_is_named_with_its_key_and_line() {
    let e = parse(&format!("{}[timeouts]\nstall = \"0s\"\n", base())).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("timeouts.stall"));
    assert_eq!(e.line, Some(8));
    assert!(e.message.contains("above zero"), "{e}");
    let e = parse(&format!(
        "{}[[files]]\nname = \"a\"\npath = \"/a\"\nstall_timeout = \"never\"\n",
        base()
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("files[0].stall_timeout"));
    let e = parse(&format!("{}[timeouts]\nstal = \"1m\"\n", base())).unwrap_err();
    assert!(e.to_string().contains("stal"), "{e}");
}

#[test]
fn the_lease_ttl_is_an_s3_key_of_whole_seconds() {
    let s3 = "[[repository]]\nname = \"off\"\nurl = \"s3://bucket/p\"\n";
    let c = parse(&format!("{s3}lease_ttl = \"90s\"\n")).unwrap();
    let Location::S3(s) = &c.repositories[0].location else {
        panic!("an S3 repository")
    };
    assert_eq!(s.lease_ttl, std::time::Duration::from_secs(90));
    let c = parse(s3).unwrap();
    let Location::S3(s) = &c.repositories[0].location else {
        panic!("an S3 repository")
    };
    assert_eq!(s.lease_ttl, std::time::Duration::from_secs(300));
    for bad in ["1s", "1500ms", "2d", "soon"] {
        let e = parse(&format!("{s3}lease_ttl = \"{bad}\"\n")).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("repository[0].lease_ttl"),
            "{bad}: {e}"
        );
    }
    let e = parse("[[repository]]\nname = \"l\"\nurl = \"/x\"\nlease_ttl = \"1m\"\n").unwrap_err();
    assert!(e.message.contains("only to s3://"), "{e}");
}
