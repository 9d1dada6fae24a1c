//! S3 repositories against a real Garage server started by the harness,
//! with a fault-injecting TCP proxy in between where the test needs one.

use std::process::Command;
use std::time::Duration;

use crate::support::s3::{FaultProxy, Garage};
use crate::support::{self, Pg, Ran, Workspace, wait_until};

fn random_file(path: &std::path::Path, mib: usize) -> String {
    support::run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c {}M /dev/urandom > '{}'",
        mib,
        path.display()
    )));
    sha256_file(path)
}

fn sha256_file(path: &std::path::Path) -> String {
    support::run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn files_section(name: &str, path: &std::path::Path) -> String {
    format!(
        "[[files]]\nname = \"{name}\"\npath = \"{}\"\n\n",
        path.display()
    )
}

/// A Garage with one bucket (bind `garage` when destructuring, or it is
/// dropped — and stopped — at once), a fault proxy in front of it, and a workspace
/// whose only repository (`offsite`, through the proxy) backs up one file
/// of random bytes.
struct Rig {
    garage: Garage,
    proxy: FaultProxy,
    ws: Workspace,
    big: std::path::PathBuf,
    sum: String,
}

/// `place` is `bucket` or `bucket/prefix`.
fn rig(place: &str, mib: usize, extra: &str) -> Rig {
    let garage = Garage::start();
    garage.bucket(place.split('/').next().unwrap());
    let proxy = FaultProxy::start(garage.port);
    let ws = Workspace::new();
    let big = ws.dir.path().join("big.bin");
    let sum = random_file(&big, mib);
    let repo = garage.repository(
        ws.dir.path(),
        "offsite",
        &format!("s3://{place}"),
        &proxy.endpoint(),
        extra,
    );
    ws.configure_repositories(&repo, &files_section("big", &big));
    ws.init();
    Rig {
        garage,
        proxy,
        ws,
        big,
        sum,
    }
}

/// `restore --source files/big --to restored.bin --yes`.
fn restore_big(ws: &Workspace) -> (Ran, std::path::PathBuf) {
    let to = ws.dir.path().join("restored.bin");
    let out = ws.run(&[
        "restore",
        "--source",
        "files/big",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ]);
    (out, to)
}

#[test]
fn a_large_stream_goes_up_in_parts_and_opens_with_the_stock_tools() {
    let Rig {
        garage,
        proxy,
        ws,
        sum,
        ..
    } = rig(
        "kdr-big/prod",
        110,
        "part_size = \"5MiB\"\nconcurrency = 3\n",
    );
    let out = ws.run(&["backup"]);
    out.assert_exit(0);

    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "files/big");
    assert!(a["stored_bytes"].as_u64().unwrap() > 110 << 20, "{a:#}");
    let parts = proxy
        .heads()
        .iter()
        .filter(|h| h.starts_with("PUT ") && h.contains("partNumber="))
        .count();
    assert!(parts >= 22, "expected 22+ parts of 5 MiB, saw {parts}");

    // The object opens with `age -d | zstd -d`, byte for byte.
    let key = format!("prod/{}", a["path"].as_str().unwrap());
    assert!(garage.keys("kdr-big").contains(&key));
    let local = ws.dir.path().join("fetched.age");
    garage.download("kdr-big", &key, &local);
    let plain = ws.stock_decrypt(&local);
    let back = ws.dir.path().join("back.bin");
    std::fs::write(&back, plain).unwrap();
    assert_eq!(sha256_file(&back), sum);
    assert!(garage.open_uploads("kdr-big").is_empty());
}

#[test]
fn one_pg_dump_feeds_a_local_and_an_s3_repository_and_s3_alone_restores() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    );
    let garage = Garage::start();
    garage.bucket("kdr-two");
    let ws = Workspace::new();
    let count = ws.dir.path().join("dumps");
    let (bin, _) = support::pg_dump_then(
        &ws,
        &format!(
            "case \"$*\" in *--version*) ;; *) echo dump >> '{}' ;; esac",
            count.display()
        ),
    );
    let repos = format!(
        "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n{}",
        ws.repo.display(),
        garage.repository(
            ws.dir.path(),
            "offsite",
            "s3://kdr-two/kompose",
            &garage.endpoint(),
            ""
        )
    );
    ws.configure_repositories(&repos, &Workspace::pg_section_bin(&pg, &["app"], &bin));
    ws.init();
    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    // One pg_dump for the database, fanned out to both repositories.
    let dumps = std::fs::read_to_string(&count).unwrap();
    assert_eq!(dumps.lines().count(), 1, "pg_dump ran {dumps:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let repos = report["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2);
    assert!(repos.iter().all(|r| r["committed"] == true), "{report:#}");

    let local = &ws.manifests()[0];
    let out = ws.run(&["--json", "snapshots", "--repository", "offsite"]);
    out.assert_exit(0);
    let v: serde_json::Value = out.json();
    let remote = &v["snapshots"][0];
    assert_eq!(remote["id"], local["id"]);
    assert_eq!(
        Workspace::artifact(remote, "postgres/app")["sha256"],
        Workspace::artifact(local, "postgres/app")["sha256"]
    );

    // Stock tools on the S3 object: age -d | zstd -d | pg_restore.
    let key = format!(
        "kompose/{}",
        Workspace::artifact(remote, "postgres/app")["path"]
            .as_str()
            .unwrap()
    );
    let fetched = ws.dir.path().join("app.dump.zst.age");
    garage.download("kdr-two", &key, &fetched);
    let dump = ws.stock_decrypt(&fetched);
    let dump_file = ws.dir.path().join("app.dump");
    std::fs::write(&dump_file, dump).unwrap();
    let listing = support::run_ok(
        Command::new(format!("{}/pg_restore", support::PG_BIN))
            .arg("-l")
            .arg(&dump_file),
    );
    assert!(listing.contains("TABLE DATA public t"), "{listing}");

    // check reads every archive back from S3 (sha256, age, zstd).
    let out = ws.run(&["check", "--repository", "offsite", "--read-data"]);
    out.assert_exit(0);

    // verify restores from S3 into a scratch server and counts the rows.
    let out = ws.run(&["--json", "verify", "--repository", "offsite"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    assert!(stdout.contains("5000 rows"), "{stdout}");

    // Restore from the S3 repository alone, with the local one gone.
    std::fs::remove_dir_all(&ws.repo).unwrap();
    let repos = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-two/kompose",
        &garage.endpoint(),
        "",
    );
    ws.configure_repositories(&repos, &Workspace::pg_section(&pg, &["app"]));
    let out = ws.run(&[
        "restore",
        "--repository",
        "offsite",
        "--source",
        "postgres/app",
        "--as",
        "app_from_s3",
        "--yes",
    ]);
    out.assert_exit(0);
    assert_eq!(
        pg.psql("app_from_s3", "SELECT count(*) FROM t").trim(),
        "5000"
    );
}

#[test]
fn uploads_survive_resets_errors_and_stalls_through_retries() {
    let Rig {
        garage,
        proxy,
        ws,
        sum,
        ..
    } = rig(
        "kdr-faults",
        40,
        "part_size = \"5MiB\"\nconcurrency = 2\ntimeout = \"3s\"\nretries = 8\n",
    );
    // Mid-upload: every connection cut, then three 503s, then (later) a
    // stall longer than the request timeout.
    proxy.reset_after_up(8 << 20, Some((503, 3)));
    proxy.stall_after_up(20 << 20, Duration::from_secs(5));
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    assert!(
        proxy.injected() >= 5,
        "faults injected: {}",
        proxy.injected()
    );

    // What was stored is intact: restore it through the proxy and compare.
    let (out, to) = restore_big(&ws);
    out.assert_exit(0);
    assert_eq!(sha256_file(&to), sum);
    assert!(garage.open_uploads("kdr-faults").is_empty());
}

#[test]
fn downloads_resume_with_ranged_requests_after_a_dropped_connection() {
    let Rig {
        garage: _garage,
        proxy,
        ws,
        sum,
        ..
    } = rig("kdr-resume", 30, "timeout = \"3s\"\n");
    let out = ws.run(&["backup"]);
    out.assert_exit(0);

    proxy.reset_after_down(12 << 20);
    let (out, to) = restore_big(&ws);
    out.assert_exit(0);
    let err = out.stderr();
    assert!(err.contains("resuming with a ranged request"), "{err}");
    assert!(
        proxy
            .heads()
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("range: bytes=")),
        "no ranged GET was sent"
    );
    assert_eq!(sha256_file(&to), sum);
}

#[test]
fn a_failed_or_terminated_upload_leaves_no_manifest_and_no_open_upload() {
    let Rig {
        garage,
        proxy,
        ws,
        big,
        ..
    } = rig(
        "kdr-fail",
        30,
        // The 500s come at once; the timeout only has to outlast a loaded
        // machine's slowest honest request.
        "part_size = \"5MiB\"\ntimeout = \"10s\"\nretries = 2\n",
    );

    // Every part upload is answered 500: the run fails after its retries.
    proxy.respond_matching("partNumber=", 500);
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(err.contains("HTTP 500"), "{err}");
    let keys = garage.keys("kdr-fail");
    assert!(
        !keys.iter().any(|k| k.starts_with("snapshots/")),
        "{keys:?}"
    );
    assert!(
        garage.open_uploads("kdr-fail").is_empty(),
        "an upload was left open"
    );

    // SIGTERM while parts are going up: no manifest, no open upload.
    let proxy2 = FaultProxy::start(garage.port);
    let repo = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-fail",
        &proxy2.endpoint(),
        "part_size = \"5MiB\"\ntimeout = \"5s\"\n",
    );
    ws.configure_repositories(&repo, &files_section("big", &big));
    proxy2.stall_after_up(12 << 20, Duration::from_secs(60));
    let child = ws
        .kdr()
        .arg("-v")
        .arg("backup")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Generous: a loaded machine (the Docker tests beside it) is slow to
    // get 12 MiB compressed, encrypted and through the proxy.
    wait_until("an upload to be open", 120, || {
        !garage.open_uploads("kdr-fail").is_empty() && proxy2.injected() > 0
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    proxy2.set_down(false);
    let out = Ran::new("kompose-dr -v backup", child.wait_with_output().unwrap());
    out.assert_failed();
    let err = out.stderr();
    let keys = garage.keys("kdr-fail");
    assert!(
        !keys.iter().any(|k| k.starts_with("snapshots/")),
        "{keys:?}"
    );
    assert!(
        garage.open_uploads("kdr-fail").is_empty(),
        "SIGTERM left an upload open: {err}"
    );
}

#[test]
fn wrong_credentials_missing_bucket_and_no_server_are_named() {
    let garage = Garage::start();
    garage.bucket("kdr-auth");
    let ws = Workspace::new();
    let dir = ws.dir.path();
    let doctor = |repo: &str| {
        ws.configure_repositories(repo, "");
        let out = ws.run(&["doctor", "--repository", "offsite"]);
        (out.code(), out.all())
    };
    // doctor exits 1 and its output names one of `any`.
    let fails = |repo: &str, any: &[&str]| {
        let (code, out) = doctor(repo);
        assert_eq!(code, Some(1), "{out}");
        assert!(any.iter().any(|a| out.contains(a)), "{out}");
        out
    };
    let repo_at = |url: &str, endpoint: &str| {
        garage.repository(
            dir,
            "offsite",
            url,
            endpoint,
            "timeout = \"2s\"\nretries = 1\n",
        )
    };
    let with_keys = |id: &std::path::Path, secret: &std::path::Path| {
        format!(
            "[[repository]]\nname = \"offsite\"\nurl = \"s3://kdr-auth\"\nendpoint = \"{}\"\nregion = \"garage\"\npath_style = true\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            garage.endpoint(),
            id.display(),
            secret.display()
        )
    };

    let good = garage.repository(dir, "offsite", "s3://kdr-auth", &garage.endpoint(), "");
    ws.configure_repositories(&good, "");
    ws.init();
    let (code, out) = doctor(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("writes permitted") || out.contains("read back and deleted"),
        "{out}"
    );

    let (id, _) = garage.credential_files(dir);
    let wrong_secret = dir.join("wrong-secret");
    std::fs::write(&wrong_secret, "0".repeat(64)).unwrap();
    let out = fails(
        &with_keys(&id, &wrong_secret),
        &["secret access key is wrong", "secret_access_key_file"],
    );
    assert!(!out.contains(&"0".repeat(64)));

    let wrong_id = dir.join("wrong-id");
    std::fs::write(&wrong_id, "GK0000000000000000000000ff").unwrap();
    fails(
        &with_keys(&wrong_id, &wrong_secret),
        &["access key id", "access_key_id_file"],
    );

    let missing = repo_at("s3://no-such-bucket", &garage.endpoint());
    fails(&missing, &["bucket `no-such-bucket` does not exist"]);

    let closed = support::closed_port();
    let port = closed.port;
    fails(
        &repo_at("s3://kdr-auth", &format!("http://127.0.0.1:{port}")),
        &["refused", "unreachable"],
    );
    // A store that cannot be reached fails verify (exit 1), never as a
    // usage error (exit 2).
    let out = ws.run(&["verify", "--repository", "offsite"]);
    assert_eq!(out.code(), Some(1), "{}", out.all());
    assert!(out.all().contains("refused"), "{}", out.all());
    fails(
        &repo_at("s3://kdr-auth", "http://kdr-no-such-host.invalid:3900"),
        &["cannot resolve the host"],
    );
    // https:// against a plain-HTTP store.
    fails(
        &repo_at(
            "s3://kdr-auth",
            &format!("https://127.0.0.1:{}", garage.port),
        ),
        &["TLS with https://127.0.0.1"],
    );

    // init against a missing bucket names it too.
    ws.configure_repositories(&missing, "");
    let out = ws.run(&["init"]);
    out.assert_failed();
    out.assert_stderr_contains("does not exist");
}

#[test]
fn a_broken_s3_repository_does_not_stop_the_local_one() {
    let garage = Garage::start();
    garage.bucket("kdr-half");
    let proxy = FaultProxy::start(garage.port);
    let ws = Workspace::new();
    let f = ws.dir.path().join("acme.json");
    std::fs::write(&f, "{}").unwrap();
    let big = ws.dir.path().join("big.bin");
    random_file(&big, 12);
    let repos = format!(
        "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n{}",
        ws.repo.display(),
        garage.repository(
            ws.dir.path(),
            "offsite",
            "s3://kdr-half",
            &proxy.endpoint(),
            "part_size = \"5MiB\"\ntimeout = \"2s\"\nretries = 1\n"
        )
    );
    ws.configure_repositories(
        &repos,
        &format!(
            "{}{}",
            files_section("acme", &f),
            files_section("big", &big)
        ),
    );
    ws.init();
    proxy.respond_matching("partNumber=", 503);
    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(3);
    let stdout = out.stdout();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let offsite = report["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "offsite")
        .unwrap()
        .clone();
    assert!(
        offsite["errors"].to_string().contains("files/big"),
        "{offsite:#}"
    );
    // The local repository holds both; the S3 manifest names only what it holds.
    let local = &ws.manifests()[0];
    assert_eq!(Workspace::artifact(local, "files/big")["status"], "ok");
    let out = ws.run(&["--json", "snapshots", "--repository", "offsite"]);
    let v: serde_json::Value = out.json();
    let remote = &v["snapshots"][0];
    assert_eq!(Workspace::artifact(remote, "files/big")["status"], "failed");
    assert_eq!(Workspace::artifact(remote, "files/acme")["status"], "ok");
    assert!(garage.open_uploads("kdr-half").is_empty());
}

/// A lease of another writer whose body says it expires in an hour (or,
/// with a negative `expires_in_minutes`, expired an hour ago) by that
/// writer's clock, and lives `ttl_seconds` after its last write.
fn lease(host: &str, pid: u32, expires_in_minutes: i64, ttl_seconds: u64) -> Vec<u8> {
    let now = chrono_like_now();
    serde_json::to_vec(&serde_json::json!({
        "host": host,
        "pid": pid,
        "command": "backup",
        "since": now.0,
        "expires_at": if expires_in_minutes >= 0 { now.1.clone() } else { now.2.clone() },
        "ttl_seconds": ttl_seconds,
    }))
    .unwrap()
}

/// Now, an hour ahead and an hour ago, as RFC 3339 (via `date`, to keep
/// the tests free of a date crate).
fn chrono_like_now() -> (String, String, String) {
    let d = |spec: &str| {
        support::run_ok(Command::new("date").args(["-u", "-d", spec, "+%Y-%m-%dT%H:%M:%SZ"]))
            .trim()
            .to_owned()
    };
    (d("now"), d("+1 hour"), d("-1 hour"))
}

/// A Garage with one bucket and a workspace whose only repository is
/// `offsite` at `url` (direct, no proxy), backing up a small acme.json,
/// with `extra` appended to the configuration; initialised.
fn direct(bucket: &str, url: &str, extra: &str) -> (Garage, Workspace, String, std::path::PathBuf) {
    let garage = Garage::start();
    garage.bucket(bucket);
    let ws = Workspace::new();
    let f = ws.dir.path().join("acme.json");
    std::fs::write(&f, "{}").unwrap();
    let repo = garage.repository(ws.dir.path(), "offsite", url, &garage.endpoint(), "");
    ws.configure_repositories(&repo, &format!("{}{extra}", files_section("acme", &f)));
    ws.init();
    (garage, ws, repo, f)
}

#[test]
fn s3_writers_hold_a_lease_that_names_its_holder_and_expires() {
    let (garage, ws, repo, f) = direct("kdr-lock", "s3://kdr-lock/p", "");

    // A live lease of another host: refused at once, with the holder named.
    garage.put(
        "kdr-lock",
        "p/locks/nas-4242-00000001.json",
        &lease("nas", 4242, 60, 300),
    );
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("`kompose-dr backup` (pid 4242 on nas"),
        "{err}"
    );
    assert!(err.contains("--lock-wait"), "{err}");
    let out = ws.run(&["prune"]);
    out.assert_failed();

    // A lease whose writer was killed: taken over once the store's clock
    // says it has not been renewed for its time to live (3 s here).
    garage.put(
        "kdr-lock",
        "p/locks/nas-4242-00000001.json",
        &lease("nas", 4242, 60, 3),
    );
    std::thread::sleep(Duration::from_secs(4));
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let err = out.stderr();
    assert!(err.contains("took over an expired lock"), "{err}");
    // Released on exit, and the stale one removed.
    let locks: Vec<String> = garage
        .keys("kdr-lock")
        .into_iter()
        .filter(|k| k.starts_with("p/locks/"))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");

    // Two real writers at once: the second is refused naming the first.
    let proxy = FaultProxy::start(garage.port);
    let slow = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-lock/p",
        &proxy.endpoint(),
        "timeout = \"30s\"\n",
    );
    let big = ws.dir.path().join("big.bin");
    random_file(&big, 8);
    let slow_config = ws.dir.path().join("slow.toml");
    ws.configure_repositories(&slow, &files_section("big", &big));
    std::fs::rename(&ws.config, &slow_config).unwrap();
    ws.configure_repositories(&repo, &files_section("acme", &f));
    proxy.stall_after_up(4 << 20, Duration::from_secs(8));
    let first = Command::new(env!("CARGO_BIN_EXE_kompose-dr"))
        .args(["--config", slow_config.to_str().unwrap(), "backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first backup to stall", 30, || proxy.injected() > 0);
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    Ran::new(
        "kompose-dr backup (the first writer)",
        first.wait_with_output().unwrap(),
    )
    .assert_exit(0);
}

/// Leases are judged by the store's clock (`LastModified`), never by the
/// `expires_at` a writer's own clock put in the body: a writer whose clock
/// runs an hour behind does not lose its lease to the next one, and one
/// whose clock runs ahead does not keep it after it stopped renewing.
#[test]
fn a_lease_of_a_writer_with_a_skewed_clock_is_judged_by_last_modified() {
    let (garage, ws, _repo, _f) = direct("kdr-skew", "s3://kdr-skew/p", "");
    let key = "p/locks/skewed-77-00000001.json";

    // Written just now by a clock running behind: its body says it expired
    // an hour ago. It is live, and the backup is refused.
    garage.put("kdr-skew", key, &lease("skewed", 77, -60, 300));
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(err.contains("(pid 77 on skewed"), "{err}");
    assert!(err.contains("by the store's clock"), "{err}");
    assert!(
        garage
            .keys("kdr-skew")
            .iter()
            .all(|k| !k.contains("/snapshots/"))
    );

    // Written by a clock running ahead: its body says it lives another
    // hour, but it lives 3 s after its LastModified, and the store saw no
    // renewal since: taken over.
    garage.put("kdr-skew", key, &lease("skewed", 77, 60, 3));
    std::thread::sleep(Duration::from_secs(4));
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    assert!(out.stderr().contains("took over an expired lock"));
    assert!(!garage.keys("kdr-skew").iter().any(|k| k == key));
}

/// Whoever can write to the bucket can plant a lease: one whose body is
/// garbage and one that asks for a billion seconds. Each counts for the
/// configured lease_ttl after its LastModified, no more: the backup is
/// refused at once naming both and when they go stale, doctor names them,
/// and a backup that waits takes over once they are stale.
#[test]
fn planted_leases_hold_writers_off_for_the_configured_ttl_only() {
    let garage = Garage::start();
    garage.bucket("kdr-plant");
    let ws = Workspace::new();
    let f = ws.dir.path().join("acme.json");
    std::fs::write(&f, "{}").unwrap();
    let repo = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-plant/p",
        &garage.endpoint(),
        "lease_ttl = \"8s\"\n",
    );
    ws.configure_repositories(&repo, &files_section("acme", &f));
    ws.init();
    let planted = std::time::Instant::now();
    garage.put("kdr-plant", "p/locks/evil.json", b"\x00 not a lease");
    garage.put(
        "kdr-plant",
        "p/locks/greedy.json",
        &lease("greedy", 666, 60, 1_000_000_000),
    );

    let doctor = ws.run(&["--json", "doctor"]);
    let lock = doctor.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "repository offsite: lock")
        .cloned()
        .unwrap_or_else(|| panic!("{}", doctor.all()));
    assert_eq!(lock["ok"], false, "{lock}");
    let m = lock["message"].as_str().unwrap();
    assert!(
        m.contains("unreadable lease locks/evil.json") && m.contains("locks/greedy.json"),
        "{m}"
    );

    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(err.contains("unreadable lease locks/evil.json"), "{err}");
    assert!(
        err.contains("lease locks/greedy.json") && err.contains("asks for 1000000000s"),
        "{err}"
    );
    assert!(
        err.contains("stale at") && err.contains("by the store's clock"),
        "{err}"
    );
    assert!(
        planted.elapsed() < Duration::from_secs(8),
        "too slow to see the leases live"
    );

    let out = ws.run(&["backup", "--lock-wait", "60s"]);
    out.assert_exit(0);
    assert!(
        out.stderr().contains("took over an expired lock"),
        "{}",
        out.all()
    );
    assert!(planted.elapsed() >= Duration::from_secs(8));
    let locks: Vec<String> = garage
        .keys("kdr-plant")
        .into_iter()
        .filter(|k| k.starts_with("p/locks/"))
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
}

/// A renewal that hangs (the proxy holds every request to `locks/`) past
/// the lease's time to live marks the lease lost at its deadline, not when
/// the request gives up: the backup stops, commits nothing and exits 1,
/// long before the stalled data upload or the renewal could have ended.
#[test]
fn a_renewal_stalled_past_the_lease_ttl_loses_the_lock_and_commits_nothing() {
    let garage = Garage::start();
    garage.bucket("kdr-lost");
    let proxy = FaultProxy::start(garage.port);
    let ws = Workspace::new();
    let f = ws.dir.path().join("acme.json");
    std::fs::write(&f, "{}").unwrap();
    let repo = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-lost/p",
        &proxy.endpoint(),
        "lease_ttl = \"4s\"\ntimeout = \"60s\"\n",
    );
    ws.configure_repositories(&repo, &files_section("acme", &f));
    ws.init();

    // The archive's upload hangs; once it does, the lease is held, and
    // its renewals hang too.
    let pause = Duration::from_secs(40);
    proxy.stall_matching("/p/data/", pause);
    let start = std::time::Instant::now();
    let mut backup = ws
        .kdr()
        .arg("backup")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each line of the log, with when it came.
    let stderr = backup.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|l| (start.elapsed(), l))
            .collect::<Vec<_>>()
    });
    wait_until("the upload to hang", 30, || proxy.injected() > 0);
    let stalled_at = start.elapsed();
    proxy.stall_matching("/p/locks/", pause);
    let status = backup.wait().unwrap();
    let log = log.join().unwrap();
    let text: String = log.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert_eq!(status.code(), Some(1), "{text}");
    let (lost_at, _) = log
        .iter()
        .find(|(_, l)| l.contains("lost the repository lock"))
        .unwrap_or_else(|| panic!("the lease was never lost: {text}"));
    // Lost within the lease's life after the renewals began to hang (4 s,
    // plus a renewal period and a loaded machine), not when the hung
    // requests ended 40 s later.
    assert!(
        *lost_at < stalled_at + Duration::from_secs(15),
        "lost at {lost_at:?}, renewals hung from {stalled_at:?}: {text}"
    );
    assert!(text.contains("nothing was committed"), "{text}");
    assert!(text.contains("the backup was stopped"), "{text}");
    let keys = garage.keys("kdr-lost");
    assert!(!keys.iter().any(|k| k.contains("/snapshots/")), "{keys:?}");
}

#[test]
fn prune_on_s3_removes_old_snapshots_unreferenced_data_and_abandoned_uploads() {
    let (garage, ws, _, _) = direct(
        "kdr-prune",
        "s3://kdr-prune/r",
        "[retention]\nkeep_last = 1\n",
    );
    for _ in 0..2 {
        let out = ws.run(&["backup"]);
        out.assert_exit(0);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let snapshots = ws.manifests();
    assert_eq!(snapshots.len(), 2);
    let (newest, oldest) = (
        snapshots[0]["id"].as_str().unwrap().to_owned(),
        snapshots[1]["id"].as_str().unwrap().to_owned(),
    );
    // What a killed run leaves: data no manifest names, an open upload.
    garage.put(
        "kdr-prune",
        "r/data/20200101T000000Z-dead00/files/acme.zst.age",
        b"x",
    );
    garage.start_upload(
        "kdr-prune",
        "r/data/20200101T000000Z-beef00/files/big.zst.age",
    );
    // An upload left open beside a snapshot that stays.
    garage.start_upload("kdr-prune", &format!("r/data/{newest}/files/stray.zst.age"));
    std::thread::sleep(Duration::from_millis(1100));

    let out = ws.run(&["--json", "prune", "--dry-run", "--grace", "0s"]);
    out.assert_exit(0);
    assert_eq!(ws.manifests().len(), 2, "a dry run removed something");
    assert_eq!(garage.open_uploads("kdr-prune").len(), 2);

    let out = ws.run(&["--json", "prune", "--grace", "0s"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let r = &report[0];
    assert!(
        r["unreferenced"]
            .to_string()
            .contains("20200101T000000Z-dead00"),
        "{r:#}"
    );
    assert!(
        r["unreferenced"]
            .to_string()
            .contains("20200101T000000Z-beef00"),
        "{r:#}"
    );
    assert!(
        r["abandoned"].to_string().contains("stray.zst.age"),
        "{r:#}"
    );
    let ids: Vec<String> = ws
        .manifests()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![newest.clone()]);
    let keys = garage.keys("kdr-prune");
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(&oldest) || k.contains("dead00")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains(&newest)), "{keys:?}");
    assert!(garage.open_uploads("kdr-prune").is_empty());
}

#[test]
fn object_lock_retention_is_requested_for_every_object_but_leases() {
    let Rig {
        garage: _garage,
        proxy,
        ws,
        ..
    } = rig(
        "kdr-worm",
        7,
        "part_size = \"5MiB\"\nobject_lock = { mode = \"governance\", days = 30 }\n",
    );
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let heads: Vec<String> = proxy
        .heads()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let writes: Vec<&String> = heads
        .iter()
        .filter(|h| {
            (h.starts_with("put ") && !h.contains("partnumber="))
                || h.starts_with("post ") && h.contains("?uploads")
        })
        .collect();
    let (leases, objects): (Vec<&&String>, Vec<&&String>) = writes
        .iter()
        .partition(|h| h.lines().next().unwrap().contains("/locks/"));
    assert!(
        objects.len() >= 4,
        "marker, multipart start, facts, manifest: {objects:?}"
    );
    for h in &objects {
        assert!(h.contains("x-amz-object-lock-mode: governance"), "{h}");
        assert!(h.contains("x-amz-object-lock-retain-until-date:"), "{h}");
    }
    assert!(!leases.is_empty());
    for h in &leases {
        assert!(!h.contains("x-amz-object-lock-mode"), "{h}");
    }
}

#[test]
fn the_agent_on_sigterm_aborts_its_s3_upload_and_exits_0() {
    let Rig {
        garage, proxy, ws, ..
    } = rig("kdr-agent", 30, "part_size = \"5MiB\"\ntimeout = \"4s\"\n");
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.toml"),
        "name = \"p\"\nschedule = \"* * * * * *\"\n",
    )
    .unwrap();
    ws.prepend_top_level(&format!("policies_dir = \"{}\"", policies.display()));
    proxy.stall_after_up(12 << 20, Duration::from_secs(120));
    let agent = ws
        .kdr()
        .arg("agent")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("an upload to hang", 30, || {
        proxy.injected() > 0 && !garage.open_uploads("kdr-agent").is_empty()
    });
    let start = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = Ran::new("kompose-dr agent", agent.wait_with_output().unwrap());
    out.assert_exit(0);
    let err = out.stderr();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let keys = garage.keys("kdr-agent");
    assert!(
        !keys.iter().any(|k| k.starts_with("snapshots/")),
        "{keys:?}"
    );
    assert!(
        garage.open_uploads("kdr-agent").is_empty(),
        "the agent left an upload open: {err}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("locks/")),
        "lease left: {keys:?}"
    );
}
