//! Directories and named volumes as sources (`[[directories]]`): a tree
//! with modes, a symlink and old mtimes, and a SQLite database under
//! constant writes, backed up, opened with the stock tools, restored with
//! `--to` and `--replace`, and verified; a forged archive that tries to
//! escape, and a forged corrupt database; and in container mode, a named
//! volume read through the private engine while its container is stopped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{Workspace, run_ok};

/// 2001-09-09: an mtime well in the past.
const PAST: u64 = 1_000_000_000;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn set_past(p: &Path) {
    std::fs::File::open(p)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(PAST))
        .unwrap();
}

/// Vaultwarden-like data: attachments (0600, old mtime), a script (0755),
/// a directory 0750, a symlink, a cache to leave out.
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("attachments/a1")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("cache")).unwrap();
    let att = root.join("attachments/a1/file.bin");
    std::fs::write(&att, vec![7u8; 100_000]).unwrap();
    set_mode(&att, 0o600);
    set_past(&att);
    let script = root.join("bin/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    set_mode(&script, 0o755);
    std::fs::write(root.join("rsa_key.pem"), "not a real key\n").unwrap();
    set_mode(&root.join("rsa_key.pem"), 0o600);
    std::fs::write(root.join("cache/junk"), "left out").unwrap();
    std::os::unix::fs::symlink("attachments/a1/file.bin", root.join("latest")).unwrap();
    set_mode(&root.join("attachments"), 0o750);
    set_past(&root.join("attachments/a1"));
}

/// A SQLite database in WAL mode, and a thread inserting one row per
/// transaction (ids 1, 2, 3…) until stopped; `committed` is the last id
/// committed.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Path) -> Writer {
        let con = rusqlite::Connection::open(db).unwrap();
        con.pragma_update(None, "journal_mode", "WAL").unwrap();
        con.execute_batch(
            "CREATE TABLE cipher (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
             CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1), (2);",
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), committed.clone());
        let thread = std::thread::spawn(move || {
            con.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                con.execute(
                    "INSERT INTO cipher (id, data) VALUES (?1, ?2)",
                    rusqlite::params![i as i64, "x".repeat(200)],
                )
                .unwrap();
                c.store(i, Ordering::SeqCst);
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Writer {
            stop,
            committed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.committed.load(Ordering::SeqCst)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The restored database: integrity_check, and the cipher rows (which
/// must be ids 1..=n without a gap).
fn check_db(db: &Path) -> u64 {
    let con = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let ok: String = con
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let (n, max): (i64, Option<i64>) = con
        .query_row("SELECT count(*), max(id) FROM cipher", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(max.unwrap_or(0), n, "rows missing in the middle");
    n as u64
}

fn configure(ws: &Workspace, root: &Path) {
    ws.configure(&format!(
        "[[directories]]\nname = \"vw\"\npath = \"{}\"\nsqlite = [\"db.sqlite3\"]\nexclude = [\"cache/**\"]\n",
        root.display()
    ));
}

fn check_tree(root: &Path) {
    let att = root.join("attachments/a1/file.bin");
    assert_eq!(std::fs::read(&att).unwrap(), vec![7u8; 100_000]);
    assert_eq!(mode(&att), 0o600);
    assert_eq!(std::fs::metadata(&att).unwrap().mtime() as u64, PAST);
    assert_eq!(
        std::fs::metadata(root.join("attachments/a1"))
            .unwrap()
            .mtime() as u64,
        PAST
    );
    assert_eq!(mode(&root.join("bin/run.sh")), 0o755);
    assert_eq!(mode(&root.join("attachments")), 0o750);
    assert_eq!(mode(&root.join("rsa_key.pem")), 0o600);
    assert_eq!(
        std::fs::read_link(root.join("latest")).unwrap(),
        Path::new("attachments/a1/file.bin")
    );
    assert!(
        !root.join("cache/junk").exists(),
        "the excluded cache came back"
    );
    for side in ["db.sqlite3-wal", "db.sqlite3-shm"] {
        assert!(!root.join(side).exists(), "{side} was stored");
    }
}

#[test]
fn a_directory_with_a_live_sqlite_round_trips_and_verifies() {
    let ws = Workspace::new();
    let root = ws.dir.path().join("vaultwarden");
    tree(&root);
    let writer = Writer::start(&root.join("db.sqlite3"));
    crate::support::wait_until("the writer's first commits", 30, || {
        writer.committed.load(Ordering::SeqCst) > 0
    });
    let before = writer.committed.load(Ordering::SeqCst);
    configure(&ws, &root);
    ws.init();
    let out = ws.run(&["--json", "backup"]);
    out.assert_exit(0);
    let during = writer.committed.load(Ordering::SeqCst);
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, "directories/vw");
    assert_eq!(a["kind"], "directory");
    assert!(
        a["path"]
            .as_str()
            .unwrap()
            .ends_with("/directories/vw.tar.zst.age"),
        "{a}"
    );
    assert_eq!(a["file"]["path"], root.display().to_string());

    // The stock tools open it: age -d | zstd -d | tar -x.
    let by_hand = ws.dir.path().join("by-hand");
    std::fs::create_dir(&by_hand).unwrap();
    let tar = ws.dir.path().join("vw.tar");
    std::fs::write(&tar, ws.stock_decrypt(&ws.archive(a))).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xpf")
            .arg(&tar)
            .arg("-C")
            .arg(&by_hand),
    );
    check_tree(&by_hand);
    let n = check_db(&by_hand.join("db.sqlite3"));
    assert!(
        n >= before && n <= during,
        "{n} rows: not a state the writer committed between {before} and {during}"
    );

    // The facts: files, bytes, and the database's row counts.
    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let facts: serde_json::Value = serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    let f = &facts["sources"]["directories/vw"];
    assert_eq!(f["kind"], "directory");
    assert_eq!(f["files"], 4, "{f}");
    assert_eq!(f["sqlite"]["db.sqlite3"]["integrity"], "ok");
    assert_eq!(f["sqlite"]["db.sqlite3"]["tables"]["cipher"], n);
    assert_eq!(f["sqlite"]["db.sqlite3"]["tables"]["users"], 2);
    let total = writer.finish();
    assert!(total >= during);

    // --to: a new directory.
    let to = ws.dir.path().join("restored");
    ws.run(&[
        "restore",
        "--source",
        "directories/vw",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    check_tree(&to);
    assert_eq!(check_db(&to.join("db.sqlite3")), n);

    // The configured path holds data: refused, then --replace.
    let out = ws.run(&["restore", "--source", "directories/vw", "--yes"]);
    out.assert_failed();
    assert!(out.all().contains("not empty"), "{}", out.all());
    std::fs::write(root.join("new-since"), "x").unwrap();
    ws.run(&[
        "restore",
        "--source",
        "directories/vw",
        "--replace",
        "--yes",
    ])
    .assert_exit(0);
    check_tree(&root);
    assert!(!root.join("new-since").exists());
    assert_eq!(check_db(&root.join("db.sqlite3")), n);
    let kept: Vec<PathBuf> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vaultwarden.kompose-dr-replaced-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("new-since").is_file());
    // No staging directory left behind.
    assert!(
        !std::fs::read_dir(ws.dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
    );

    // verify: restored in scratch, files and the database as recorded.
    let out = ws.run(&["--json", "verify"]);
    out.assert_exit(0);
    let v = out.json();
    let checks = v["sources"][0]["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "sqlite db.sqlite3" && c["ok"] == true),
        "{v:#}"
    );

    // doctor checks the entry.
    let out = ws.run(&["doctor"]);
    out.assert_exit(0);
    assert!(out.all().contains("directories/vw"), "{}", out.all());

    // A drill's min_files check on the restored tree.
    let drills = ws.dir.path().join("drills");
    std::fs::create_dir(&drills).unwrap();
    std::fs::write(
        drills.join("vw.toml"),
        "name = \"vw\"\nsources = [\"directories/*\"]\n\n[[check]]\nsource = \"directories/vw\"\nmin_files = 4\n",
    )
    .unwrap();
    ws.prepend_top_level(&format!(
        "drills_dir = \"{}\"\nreports_dir = \"{}\"\n",
        drills.display(),
        ws.dir.path().join("reports").display()
    ));
    let out = ws.run(&["drill"]);
    out.assert_exit(0);
    assert!(out.all().contains("at least 4 files"), "{}", out.all());
}

/// `plain` as the stock tools would write it (`zstd | age -r`) over the
/// archive of `source`, with the manifest's figures made to match and the
/// manifest signed again, as a writer of the store could.
fn forge_archive(ws: &Workspace, source: &str, plain: &Path) {
    use sha2::Digest;
    let dir = ws.repo.join("snapshots");
    let manifest = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let a = m["artifacts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["source"] == source)
        .unwrap();
    let archive = ws.repo.join(a["path"].as_str().unwrap());
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("zstd -q -c \"$1\" | age -r \"$2\" > \"$3\"")
            .arg("sh")
            .arg(plain)
            .arg(&ws.recipient)
            .arg(&archive),
    );
    let stored = std::fs::read(&archive).unwrap();
    a["sha256"] = hex::encode(sha2::Sha256::digest(&stored)).into();
    a["stored_bytes"] = stored.len().into();
    a["plaintext_bytes"] = std::fs::metadata(plain).unwrap().len().into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    ws.sign(&manifest);
}

fn backed_up_small() -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    let root = ws.dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a"), "a").unwrap();
    let con = rusqlite::Connection::open(root.join("db.sqlite3")).unwrap();
    con.execute_batch(
        "CREATE TABLE t (x TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
         INSERT INTO t SELECT hex(randomblob(64)) FROM n;",
    )
    .unwrap();
    drop(con);
    ws.configure(&format!(
        "[[directories]]\nname = \"d\"\npath = \"{}\"\nsqlite = [\"db.sqlite3\"]\n",
        root.display()
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    (ws, root)
}

#[test]
fn a_forged_archive_that_escapes_is_refused_and_writes_nothing_outside() {
    let (ws, _root) = backed_up_small();
    // tar -P keeps `../evil` and absolute names, as an attacker would.
    let forge = ws.dir.path().join("forge/inner");
    std::fs::create_dir_all(&forge).unwrap();
    std::fs::write(ws.dir.path().join("forge/evil"), "pwned").unwrap();
    std::fs::write(forge.join("ok"), "fine").unwrap();
    let absolute = ws.dir.path().join("forge/abs-evil");
    std::fs::write(&absolute, "pwned").unwrap();
    for (what, member) in [
        ("dotdot", "../evil".to_owned()),
        ("absolute", absolute.display().to_string()),
    ] {
        let tar = ws.dir.path().join(format!("{what}.tar"));
        run_ok(
            Command::new("tar")
                .arg("-P")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&forge)
                .args(["ok", &member]),
        );
        let listing = run_ok(Command::new("tar").arg("-Ptf").arg(&tar));
        assert!(listing.contains(&member), "{listing}");
        forge_archive(&ws, "directories/d", &tar);
        std::fs::remove_file(&absolute).unwrap();
        std::fs::remove_file(ws.dir.path().join("forge/evil")).unwrap();
        let to = ws.dir.path().join(format!("out-{what}"));
        let out = ws.run(&[
            "restore",
            "--source",
            "directories/d",
            "--to",
            to.to_str().unwrap(),
            "--yes",
        ]);
        out.assert_failed();
        assert!(out.all().contains("refusing the archive"), "{}", out.all());
        assert!(!to.exists(), "{what}: the target was created");
        assert!(
            !ws.dir.path().join("evil").exists(),
            "{what}: ../evil written"
        );
        assert!(!absolute.exists(), "{what}: the absolute path was written");
        let leftovers: Vec<String> = std::fs::read_dir(ws.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::write(&absolute, "pwned").unwrap();
        std::fs::write(ws.dir.path().join("forge/evil"), "pwned").unwrap();
    }
}

#[test]
fn a_forged_corrupt_sqlite_database_fails_verify() {
    let (ws, root) = backed_up_small();
    ws.run(&["verify"]).assert_exit(0);
    // The same tree, with the database's pages overwritten in the middle
    // (same size: the file count and bytes still match), tarred by hand.
    let copy = ws.dir.path().join("copy");
    run_ok(Command::new("cp").arg("-a").arg(&root).arg(&copy));
    let db = copy.join("db.sqlite3");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 3 * 4096);
    for b in &mut bytes[4096 + 100..3 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let tar = ws.dir.path().join("corrupt.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&copy)
            .arg("."),
    );
    forge_archive(&ws, "directories/d", &tar);
    let out = ws.run(&["--json", "verify"]);
    out.assert_failed();
    let v = out.json();
    let checks = v["sources"][0]["checks"].as_array().unwrap();
    let c = checks
        .iter()
        .find(|c| c["name"] == "sqlite db.sqlite3")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(c["ok"], false, "{v:#}");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "files" && c["ok"] == true),
        "{v:#}"
    );
}

/// Container mode: a named volume used by a running `app` container
/// (which writes into it every 100 ms), backed up through the engine with
/// `stop = [app]`: stopped for the copy, running again after — also when
/// the backup fails after the stop; the archive restores and verifies; no
/// helper container is left.
#[test]
fn a_named_volume_is_copied_through_the_engine_with_its_container_stopped() {
    use crate::support::docker::engine;
    let engine = engine();
    let suffix = format!(
        "{:08x}",
        std::process::id()
            ^ (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos())
    );
    let volume = format!("kdr-vol-{suffix}");
    let app = format!("kdr-app-{suffix}");
    run_ok(engine.docker().args(["volume", "create", &volume]));
    let data = engine.volume_path(&volume);
    tree(&data);
    {
        let con = rusqlite::Connection::open(data.join("db.sqlite3")).unwrap();
        con.execute_batch(
            "CREATE TABLE cipher (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
             INSERT INTO cipher (id, data) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        )
        .unwrap();
    }
    run_ok(
        engine
            .docker()
            .args(["run", "-d", "--name", &app, "--entrypoint", "sh"])
            .args(["-v", &format!("{volume}:/data")])
            .arg(&engine.redis_image)
            .args(["-c", "while :; do date > /data/tick; sleep 0.1; done"]),
    );
    let running = |c: &str| engine.inspect(c, "{{.State.Running}}") == "true";
    let started_at = |c: &str| engine.inspect(c, "{{.State.StartedAt}}");
    assert!(running(&app));
    let first_start = started_at(&app);

    let ws = Workspace::new();
    let section = |sqlite: &str| {
        format!(
            "[docker]\nhost = \"{}\"\n\n[[directories]]\nname = \"vault\"\nvolume = \"{volume}\"\nstop = [\"{app}\"]\nsqlite = [{sqlite}]\nexclude = [\"cache\"]\n",
            engine.host
        )
    };
    ws.configure(&section("\"db.sqlite3\""));
    ws.init();
    let kdr =
        |args: &[&str]| crate::support::Ran::of(ws.kdr().env_remove("DOCKER_HOST").args(args));
    let out = kdr(&["--json", "backup"]);
    out.assert_exit(0);
    let report = out.json();
    let a = &report["artifacts"][0];
    assert_eq!(a["downtime"]["mode"], "stop", "{report:#}");
    assert_eq!(a["downtime"]["containers"][0], app.as_str(), "{report:#}");
    assert!(a["downtime"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(running(&app), "the container was not started again");
    assert_ne!(
        started_at(&app),
        first_start,
        "the container was not stopped"
    );
    let m = &ws.manifests()[0];
    let art = Workspace::artifact(m, "directories/vault");
    assert_eq!(art["downtime"]["containers"][0], app.as_str());
    assert_eq!(art["file"]["path"], format!("volume:{volume}"));

    // Restore to a directory, and verify.
    let to = ws.dir.path().join("restored");
    kdr(&[
        "restore",
        "--source",
        "directories/vault",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    check_tree(&to);
    assert_eq!(check_db(&to.join("db.sqlite3")), 3);
    assert!(to.join("tick").is_file());
    kdr(&["verify"]).assert_exit(0);

    // Back into the volume: it holds files, so --replace; the container
    // (in stop) is stopped for it and started again.
    std::fs::write(data.join("new-since"), "x").unwrap();
    let out = kdr(&["restore", "--source", "directories/vault", "--yes"]);
    out.assert_failed();
    assert!(out.all().contains("holds files"), "{}", out.all());
    let before_restore = started_at(&app);
    kdr(&[
        "restore",
        "--source",
        "directories/vault",
        "--replace",
        "--yes",
    ])
    .assert_exit(0);
    assert!(running(&app));
    assert_ne!(
        started_at(&app),
        before_restore,
        "not stopped for the restore"
    );
    check_tree(&data);
    assert_eq!(check_db(&data.join("db.sqlite3")), 3);
    assert!(!data.join("new-since").exists());
    let aside: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".kompose-dr-replaced-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].join("new-since").is_file());

    // pause = true: paused for the copy, unpaused after (not restarted).
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[[directories]]\nname = \"vault\"\nvolume = \"{volume}\"\nstop = [\"{app}\"]\npause = true\nsqlite = [\"db.sqlite3\"]\n",
        engine.host
    ));
    let unpaused = started_at(&app);
    let out = kdr(&["--json", "backup"]);
    out.assert_exit(0);
    let report = out.json();
    assert_eq!(
        report["artifacts"][0]["downtime"]["mode"], "pause",
        "{report:#}"
    );
    assert_eq!(engine.inspect(&app, "{{.State.Status}}"), "running");
    assert_eq!(started_at(&app), unpaused, "paused, not restarted");

    // A backup that fails after the stop still starts the container.
    let second_start = started_at(&app);
    ws.configure(&section("\"db.sqlite3\", \"missing.db\""));
    let out = kdr(&["backup"]);
    out.assert_failed();
    assert!(out.all().contains("missing.db"), "{}", out.all());
    assert!(
        running(&app),
        "the container was left stopped after a failure"
    );
    assert_ne!(started_at(&app), second_start);

    // Without stop, a running container's volume with SQLite is refused.
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[[directories]]\nname = \"vault\"\nvolume = \"{volume}\"\nsqlite = [\"db.sqlite3\"]\n",
        engine.host
    ));
    let out = kdr(&["backup"]);
    out.assert_failed();
    assert!(
        out.all().contains("cannot be copied consistently"),
        "{}",
        out.all()
    );

    assert!(
        engine
            .containers_with_label("io.kompose-dr.scratch")
            .is_empty(),
        "a helper container was left"
    );
    run_ok(engine.docker().args(["rm", "-f", &app]));
    run_ok(engine.docker().args(["volume", "rm", &volume]));
}

/// A backup terminated (SIGTERM) while its `stop` container is stopped —
/// the copy waits on a SQLite database another process holds locked —
/// starts the container again before the process exits, and commits
/// nothing.
#[test]
fn a_backup_terminated_while_its_container_is_stopped_starts_it_again() {
    use crate::support::docker::engine;
    let engine = engine();
    let app = format!(
        "kdr-app-{:08x}",
        std::process::id()
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
    );
    run_ok(
        engine
            .docker()
            .args(["run", "-d", "--name", &app, "--entrypoint", "sh"])
            .arg(&engine.redis_image)
            .args(["-c", "while :; do sleep 0.1; done"]),
    );
    let running = |c: &str| engine.inspect(c, "{{.State.Running}}") == "true";
    let ws = Workspace::new();
    let root = ws.dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    let db = root.join("db.sqlite3");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker
        .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[[directories]]\nname = \"d\"\npath = \"{}\"\nstop = [\"{app}\"]\nsqlite = [\"db.sqlite3\"]\n",
        engine.host,
        root.display()
    ));
    ws.init();
    let mut child = ws
        .kdr()
        .env_remove("DOCKER_HOST")
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_until("the container stopped for the copy", 60, || !running(&app));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The run is dropped once its guard has started the container again;
    // the copy's thread may finish after that.
    crate::support::wait_until("the container started again after SIGTERM", 60, || {
        running(&app)
    });
    locker.execute_batch("ROLLBACK").unwrap();
    let status = crate::support::wait_child(&mut child, Duration::from_secs(90))
        .expect("kompose-dr did not exit after SIGTERM");
    assert!(!status.success());
    assert!(
        running(&app),
        "the container was left stopped after SIGTERM"
    );
    assert!(ws.manifests().is_empty());

    // Once the lock is gone the backup goes through; a --replace restore
    // into the configured path stops the container for the swap too.
    drop(locker);
    ws.run(&["backup"]).assert_exit(0);
    let before = engine.inspect(&app, "{{.State.StartedAt}}");
    let out = ws.run(&["restore", "--source", "directories/d", "--replace", "--yes"]);
    out.assert_exit(0);
    assert!(
        out.all().contains("stopped and started again"),
        "{}",
        out.all()
    );
    assert!(running(&app));
    assert_ne!(engine.inspect(&app, "{{.State.StartedAt}}"), before);

    // A stop container the engine does not know is a configuration error
    // (exit 2) before anything is stopped or written.
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[[directories]]\nname = \"d\"\npath = \"{}\"\nstop = [\"{app}-typo\"]\n",
        engine.host,
        root.display()
    ));
    let out = ws.run(&["backup"]);
    out.assert_exit(2);
    assert!(out.all().contains(&format!("{app}-typo")), "{}", out.all());
    assert!(running(&app));
    run_ok(engine.docker().args(["rm", "-f", &app]));
}
