//! Redis (AOF and RDB) and file backups against real servers, opened with
//! the stock tools and loaded back into redis-server.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::support::{self, Ran, Redis, Workspace, run_ok};

/// Extracts a tar archive produced by the stock decrypt into a new directory.
fn untar(ws: &Workspace, archive: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kdr-restored-")
        .tempdir()
        .unwrap();
    let tar = ws.stock_decrypt(archive);
    let tar_path = ws.dir.path().join("redis.tar");
    std::fs::write(&tar_path, tar).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(dir.path()),
    );
    dir
}

fn round_trip(aof: bool) {
    let redis = Redis::start(aof, Some("redis-secret-pw"));
    redis.fill(3000);
    // Writes after the first rewrite land in the incremental file too.
    redis.cli(&["SET", "late", "write"]);
    let expected = redis.dbsize();
    assert_eq!(expected, 3001);

    let ws = Workspace::new();
    ws.configure(&Workspace::redis_section(&redis));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "redis");
    assert_eq!(a["kind"], if aof { "redis-aof" } else { "redis-rdb" });
    assert!(a["server_version"].as_str().unwrap().starts_with("Redis 7"));

    // The automatic rewrite setting is back where it was.
    assert!(
        redis
            .cli(&["CONFIG", "GET", "auto-aof-rewrite-percentage"])
            .contains("100")
    );

    let restored = untar(&ws, &ws.archive(a));
    if aof {
        assert!(
            restored
                .path()
                .join("appendonlydir/appendonly.aof.manifest")
                .is_file()
        );
    } else {
        assert!(restored.path().join("dump.rdb").is_file());
    }
    let copy = Redis::start_in(restored, aof, None);
    assert_eq!(copy.dbsize(), expected);
    assert_eq!(copy.cli(&["GET", "late"]).trim(), "\"write\"");

    // The facts record the key count.
    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let facts: serde_json::Value = serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    assert_eq!(facts["sources"]["redis"]["keys"]["db0"], expected);
}

#[test]
fn redis_aof_round_trip() {
    round_trip(true);
}

#[test]
fn redis_rdb_round_trip() {
    round_trip(false);
}

#[test]
fn wrong_redis_password_fails_clearly() {
    let redis = Redis::start(false, Some("right"));
    let ws = Workspace::new();
    ws.configure(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\npassword = \"wrong-pw-value\"\n",
        redis.port
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let stderr = out.stderr();
    assert!(stderr.contains("check redis.password"), "{stderr}");
    assert!(!stderr.contains("wrong-pw-value"), "{stderr}");
}

#[test]
fn acme_json_is_byte_identical_keeps_its_mode_and_records_certificates() {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    let cert = support::certificate(ws.dir.path(), &["example.org", "www.example.org"], 60);
    let body = serde_json::json!({
        "resolver": {
            "Account": { "Email": "ops@example.org" },
            "Certificates": [
                { "domain": { "main": "example.org", "sans": ["www.example.org"] }, "certificate": cert, "key": "c2VjcmV0", "Store": "default" }
            ]
        }
    });
    std::fs::write(&acme, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
    std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o600)).unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"traefik-acme\"\npath = \"{}\"\n",
        acme.display()
    ));
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "files/traefik-acme");
    assert_eq!(a["file"]["mode"], 0o600);
    assert_eq!(a["file"]["uid"], std::fs::metadata(&acme).unwrap().uid());
    assert!(
        ws.archive(a)
            .to_string_lossy()
            .ends_with("files/traefik-acme.zst.age")
    );
    assert_eq!(
        ws.stock_decrypt(&ws.archive(a)),
        std::fs::read(&acme).unwrap()
    );

    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let facts: serde_json::Value = serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    let certs = facts["sources"]["files/traefik-acme"]["certificates"]
        .as_array()
        .unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0]["resolver"], "resolver");
    assert_eq!(
        certs[0]["domains"],
        serde_json::json!(["example.org", "www.example.org"])
    );
    assert!(certs[0]["not_after"].is_string());
    let manifest_text = std::fs::read_to_string(
        ws.repo
            .join(format!("snapshots/{}.json", m["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        !manifest_text.contains("example.org"),
        "certificate domains must not be in plaintext"
    );
}

#[test]
fn nothing_succeeded_means_no_snapshot_and_exit_1() {
    let ws = Workspace::new();
    ws.configure("[[files]]\nname = \"gone\"\npath = \"/nonexistent/acme.json\"\n");
    ws.init();
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let (stdout, stderr) = (out.stdout(), out.stderr());
    assert!(stderr.contains("/nonexistent/acme.json"), "{stderr}");
    assert!(stdout.contains("no snapshot committed"), "{stdout}");
    assert!(ws.manifests().is_empty());
    // No data directory is left behind.
    let data = ws.repo.join("data");
    assert!(
        !data.exists()
            || std::fs::read_dir(&data).unwrap().all(|e| {
                std::fs::read_dir(e.unwrap().path())
                    .unwrap()
                    .next()
                    .is_none()
            })
    );
}

#[test]
fn a_backup_on_a_terminal_shows_progress_and_none_without_one() {
    support::require("script");
    let ws = Workspace::new();
    let f = ws.dir.path().join("data.bin");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("head -c 3M /dev/urandom > '{}'", f.display())),
    );
    ws.configure(&format!(
        "[[files]]\nname = \"blob\"\npath = \"{}\"\n",
        f.display()
    ));
    ws.init();
    let cmd = format!(
        "{} --config {} backup",
        env!("CARGO_BIN_EXE_kompose-dr"),
        ws.config.display()
    );
    let out = Ran::of(
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TMPDIR", ws.tmp()),
    );
    let all = out.stdout();
    out.assert_exit(0);
    // The bar names the archive and counts its bytes.
    assert!(all.contains("files/blob"), "{all}");
    assert!(all.contains("MiB"), "{all}");
    // Without a terminal (a timer, a pipe): no bar, only the summary.
    let out = ws.run(&["backup"]);
    out.assert_exit(0);
    let err = out.stderr();
    assert!(!err.contains("B/s"), "{err}");
}
