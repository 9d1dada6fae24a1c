//! The binary's contract: exit codes, configuration errors, init, secrets,
//! and crash safety.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Pg, Ran, Redis, Workspace, run_ok, script};

fn bad_config(ws: &Workspace, body: &str) -> (i32, String) {
    std::fs::write(&ws.config, body).unwrap();
    let out = ws.run(&["backup"]);
    (out.code().unwrap(), out.stderr())
}

#[test]
fn bad_configuration_exits_2_naming_key_and_line() {
    let ws = Workspace::new();
    let head = format!(
        "[[repository]]\nname = \"local\"\nurl = \"{}\"\n",
        ws.repo.display()
    );
    let enc = format!("[encryption]\nrecipients = [\"{}\"]\n", ws.recipient);

    let (code, err) = bad_config(
        &ws,
        &format!("{head}{enc}[postgres]\nurl = \"postgres://u@h/db\"\ndatbases = [\"x\"]\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 8") && err.contains("datbases"), "{err}");

    let (code, err) = bad_config(
        &ws,
        &format!("{head}[encryption]\nrecipients = [\"age1notakey\"]\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 5") && err.contains("encryption.recipients[0]"),
        "{err}"
    );

    let (code, err) = bad_config(
        &ws,
        &format!("{head}[encryption]\nidentity_file = \"/x\"\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("recipients"), "{err}");

    let (code, err) = bad_config(
        &ws,
        &format!("env_file = \"/nonexistent/secrets.env\"\n{head}{enc}"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 1")
            && err.contains("env_file")
            && err.contains("/nonexistent/secrets.env"),
        "{err}"
    );

    let (code, err) = bad_config(
        &ws,
        &format!("{head}{enc}[redis]\nurl = \"http://cache:6379\"\n"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 7") && err.contains("redis.url"), "{err}");

    let (code, err) = bad_config(
        &ws,
        &format!(
            "{head}{enc}[postgres]\nurl = \"postgres://u@h/db\"\npassword = \"${{KDR_TEST_UNSET}}\"\n"
        ),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 8") && err.contains("KDR_TEST_UNSET"),
        "{err}"
    );

    let (code, err) = bad_config(&ws, "this is not toml");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 1"), "{err}");

    // No backtrace, no panic text, in any of them.
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );

    // A missing configuration says how to point at one.
    let out = Ran::of(Command::new(env!("CARGO_BIN_EXE_kompose-dr")).args([
        "--config",
        "/nonexistent/kompose-dr.toml",
        "snapshots",
    ]));
    out.assert_exit(2);
    out.assert_stderr_contains("KOMPOSE_DR_CONFIG");

    // Bad usage is exit 2 as well.
    let out = Ran::of(Command::new(env!("CARGO_BIN_EXE_kompose-dr")).arg("frobnicate"));
    out.assert_exit(2);
}

#[test]
fn config_comes_from_the_environment_variable() {
    let ws = Workspace::new();
    ws.configure("");
    ws.init();
    let out = Ran::of(
        Command::new(env!("CARGO_BIN_EXE_kompose-dr"))
            .args(["--json", "snapshots"])
            .env("KOMPOSE_DR_CONFIG", &ws.config),
    );
    out.assert_exit(0);
    let v: serde_json::Value = out.json();
    assert_eq!(v["snapshots"], serde_json::json!([]));
}

/// `kompose-dr init --generate-key KEY` with no configuration.
fn generate_key(key: &std::path::Path) -> Ran {
    Ran::of(
        Command::new(env!("CARGO_BIN_EXE_kompose-dr"))
            .args([
                "--config",
                "/nonexistent/kompose-dr.toml",
                "init",
                "--generate-key",
            ])
            .arg(key),
    )
}

#[test]
fn init_generates_a_private_key_and_refuses_to_reinitialise() {
    let ws = Workspace::new();
    let key = ws.dir.path().join("new-identity.txt");
    let out = generate_key(&key);
    out.assert_exit(0);
    let (stdout, stderr) = (out.stdout(), out.stderr());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let recipient = run_ok(Command::new("age-keygen").arg("-y").arg(&key));
    // The lines to paste: the recipient and the signing key's public half.
    assert!(
        stdout.contains(&format!("recipients = [\"{}\"]", recipient.trim())),
        "{stdout}"
    );
    let sign = std::path::PathBuf::from(format!("{}.sign", key.display()));
    assert_eq!(
        std::fs::metadata(&sign).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        stdout.contains(&format!("key_file = \"{}\"", sign.display())),
        "{stdout}"
    );
    let public_key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no public_key line: {stdout}"));
    assert!(!stdout.contains("AGE-SECRET-KEY") && !stderr.contains("AGE-SECRET-KEY"));
    // The stock minisign signs with the key and checks with the public key.
    let doc = ws.dir.path().join("doc");
    std::fs::write(&doc, "signed by the backup host\n").unwrap();
    run_ok(
        Command::new("minisign")
            .args(["-S", "-s"])
            .arg(&sign)
            .arg("-m")
            .arg(&doc),
    );
    run_ok(
        Command::new("minisign")
            .args(["-V", "-P", public_key, "-m"])
            .arg(&doc),
    );

    // Never overwrites an identity or a signing key.
    let before = std::fs::read(&key).unwrap();
    let before_sign = std::fs::read(&sign).unwrap();
    let out = generate_key(&key);
    out.assert_exit(2);
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert_eq!(std::fs::read(&sign).unwrap(), before_sign);

    // The repository marker records the format and the recipients.
    ws.configure("");
    let out = ws.run(&["--json", "init"]);
    out.assert_exit(0);
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.repo.join("kompose-dr.json")).unwrap()).unwrap();
    assert_eq!(marker["version"], 2);
    assert_eq!(marker["recipients"], serde_json::json!([ws.recipient]));
    assert!(marker["stack"].is_string(), "{marker:#}");
    let out = ws.run(&["init"]);
    out.assert_exit(2);
    out.assert_stderr_contains("already exists");

    // A backup into a repository that was never initialised says what to do.
    let ws2 = Workspace::new();
    ws2.configure("[[files]]\nname = \"x\"\npath = \"/etc/hostname\"\n");
    let out = ws2.run(&["--json", "backup"]);
    out.assert_exit(2);
    out.assert_stderr_contains("run `kompose-dr init`");
    let v: serde_json::Value = out.json();
    assert_eq!(v["exit_code"], 2);
}

/// Every process' argv on the machine, joined.
fn all_cmdlines() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
            && let Ok(b) = std::fs::read(e.path().join("cmdline"))
        {
            out.push(String::from_utf8_lossy(&b).replace('\0', " "));
        }
    }
    out
}

#[test]
fn secrets_never_appear_in_argv_logs_manifest_or_json() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE umami");
    pg.psql(
        "umami",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 200000) g",
    );
    let redis_pw = "redis-pw-3f9a1c";
    let redis = Redis::start(true, Some(redis_pw));
    redis.fill(100);
    let ws = Workspace::new();

    // pg_dump stand-in that records its own argv and its parent's.
    let bin = ws.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let argv_log = ws.dir.path().join("argv.log");
    for tool in ["pg_dump", "pg_dumpall"] {
        script(
            &bin.join(tool),
            &format!(
                "#!/bin/sh\ntr '\\0' ' ' < /proc/$$/cmdline >> {log}; echo >> {log}\ntr '\\0' ' ' < /proc/$PPID/cmdline >> {log}; echo >> {log}\nexec {pg}/{tool} \"$@\"\n",
                log = argv_log.display(),
                pg = support::PG_BIN
            ),
        );
    }
    let env_file = ws.dir.path().join("secrets.env");
    std::fs::write(
        &env_file,
        format!("DB_PASSWORD={}\nREDIS_PASSWORD={redis_pw}\n", pg.password),
    )
    .unwrap();
    ws.configure(&format!(
        "[postgres]\nurl = \"{}\"\npassword = \"${{DB_PASSWORD}}\"\ndatabases = [\"umami\", \"missing\"]\nbin_dir = \"{}\"\n\n\
         [redis]\nurl = \"redis://127.0.0.1:{}\"\npassword = \"${{REDIS_PASSWORD}}\"\n",
        pg.url(),
        bin.display(),
        redis.port
    ));
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!("env_file = \"{}\"\n{cfg}", env_file.display()),
    )
    .unwrap();
    ws.init();

    // Watch every process' argv while the backup runs.
    let mut child = ws
        .kdr()
        .args(["--json", "-vv", "backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout_pipe, &mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut s).unwrap();
        s
    });
    let secrets = [pg.password.clone(), redis_pw.to_owned()];
    let mut seen_argvs = 0;
    let status = loop {
        for c in all_cmdlines() {
            seen_argvs += 1;
            for s in &secrets {
                assert!(
                    !c.contains(s.as_str()),
                    "a secret is in a process' argv: {c}"
                );
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
    };
    let out = Ran::new(
        "kompose-dr --json -vv backup",
        Output {
            status,
            stdout: out_reader.join().unwrap().into_bytes(),
            stderr: err_reader.join().unwrap().into_bytes(),
        },
    );
    assert!(seen_argvs > 0);
    out.assert_exit(3);
    let (stdout, stderr) = (out.stdout(), out.stderr());
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.contains("pg_dump") && argv.contains("kompose-dr"),
        "{argv}"
    );
    let mut repo_text = String::new();
    for entry in walk(&ws.repo) {
        repo_text.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    for s in &secrets {
        assert!(!argv.contains(s.as_str()), "secret in a child's argv");
        assert!(!stdout.contains(s.as_str()), "secret in --json output");
        assert!(!stderr.contains(s.as_str()), "secret in the logs");
        assert!(!repo_text.contains(s.as_str()), "secret in the repository");
    }
    assert!(stderr.contains("DEBUG"), "-vv logs at debug level");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn kill_9_mid_backup_leaves_no_snapshot_and_the_next_backup_works() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE grafana");
    pg.psql(
        "grafana",
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g",
    );
    let ws = Workspace::new();
    // A pg_dump that has written its dump and then hangs before exiting.
    let (bin, marker) = support::pg_dump_then(&ws, "exec sleep 15");
    let section = Workspace::pg_section(&pg, &["grafana"]);
    ws.configure(&Workspace::pg_section_bin(&pg, &["grafana"], &bin));
    ws.init();
    let mut child = ws
        .kdr()
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the dump never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The archive is being written: its temporary file has bytes.
    support::wait_until("the archive's temporary file", 30, || {
        walk(&ws.repo).iter().any(|p| {
            let name = p.to_string_lossy();
            name.contains(".dump.zst.age.")
                && name.ends_with(".tmp")
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();

    assert!(ws.manifests().is_empty(), "no snapshot after kill -9");
    assert!(
        walk(&ws.repo)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".dump.zst.age")),
        "no finished-looking archive either"
    );

    ws.configure(&section);
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    assert_eq!(ws.manifests().len(), 1);
}
