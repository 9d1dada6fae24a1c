//! Point-in-time recovery where the stack runs in containers (issue 24,
//! items 3 and 7): the recovery runs in a scratch container made from the
//! production image (`[scratch] runtime = "docker"`), never with server
//! binaries of the host (`[scratch] postgres_bin` points nowhere, so a
//! process-mode recovery would fail loudly), and a whole cluster goes back
//! into the server's container with `--replace`.
//!
//! The server is a container of the test engine imitating the official
//! image, with PGDATA at the root of its volume and no published port.
//! Until the WAL archiver runs in container mode, the archive is fed over
//! the engine's network (`[postgres] url` with the container's address,
//! kompose-dr inside the engine's network namespace); the restores that
//! replace the container's data name the container only.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::{Engine, engine, kdr, run};
use crate::support::{Workspace, run_ok, wait_until};

const SCRATCH_LABEL: &str = "io.kompose-dr.scratch";

/// A path with no PostgreSQL server binaries.
const NO_SERVER_BINARIES: &str = "/nonexistent/kompose-dr-test/{major}/bin";

fn random() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

/// A production PostgreSQL container: superuser `kompose` with a password,
/// PGDATA at the root of a named volume (or, given `small_mb`, of a host
/// directory on a tmpfs that small: a file system that fills up, which a
/// tmpfs *volume* cannot give, as the engine empties it whenever its
/// container stops), on a network of its own, replication allowed from
/// it. Removed when dropped.
struct Server {
    engine: &'static Engine,
    name: String,
    network: String,
    volume: String,
    small: Option<std::path::PathBuf>,
    password: String,
}

impl Server {
    fn start(engine: &'static Engine, small_mb: Option<u32>) -> Server {
        let sfx = format!("{:08x}", random() & 0xffff_ffff);
        let mut s = Server {
            engine,
            name: format!("core-postgres-{sfx}"),
            network: engine.network(),
            volume: format!("core-pgdata-{sfx}"),
            small: None,
            password: format!("pg-{:016x}", random()),
        };
        if let Some(mb) = small_mb {
            let dir = engine.dir.join(format!("pgdata-{sfx}"));
            std::fs::create_dir_all(&dir).unwrap();
            run_ok(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={mb}m,mode=0755"))
                    .arg("tmpfs")
                    .arg(&dir),
            );
            s.volume = dir.display().to_string();
            s.small = Some(dir);
        } else {
            run_ok(
                engine
                    .docker()
                    .args(["volume", "create", "--label", "kdr-test=1", &s.volume]),
            );
        }
        run_ok(
            engine
                .docker()
                .args(["run", "-d", "--name", &s.name, "--label", "kdr-test=1"])
                .args(["--network", &s.network])
                .args(["-e", "POSTGRES_USER=kompose", "-e", "POSTGRES_PASSWORD"])
                .args(["-v", &format!("{}:/var/lib/postgresql/data", s.volume)])
                .arg(&engine.postgres_image)
                .args(["postgres", "-c", "fsync=off"])
                .env("POSTGRES_PASSWORD", &s.password),
        );
        s.wait_ready();
        // pg_receivewal and pg_basebackup connect over the network.
        s.sh("echo 'host replication all all scram-sha-256' >> \"$PGDATA/pg_hba.conf\"");
        s.psql("postgres", "select pg_reload_conf()");
        s
    }

    fn psql_raw(&self, db: &str, sql: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .engine
            .docker()
            .args(["exec", "-i", &self.name])
            .args(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", "kompose", "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    #[track_caller]
    fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_raw(db, sql);
        assert!(
            out.status.success(),
            "psql {db}: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn wait_ready(&self) {
        // Over TCP too: the entrypoint's temporary server answers on the
        // socket only, and stops a moment later.
        wait_until(&format!("container {}", self.name), 60, || {
            self.psql_raw("kompose", "select 1").status.success()
                && self
                    .engine
                    .docker()
                    .args(["exec", &self.name, "pg_isready", "-q", "-h", "127.0.0.1"])
                    .status()
                    .is_ok_and(|s| s.success())
        });
    }

    /// `sh -c SCRIPT` in the container, as root; its output.
    #[track_caller]
    fn sh(&self, script: &str) -> String {
        run_ok(
            self.engine
                .docker()
                .args(["exec", &self.name, "sh", "-c", script]),
        )
    }

    fn address(&self) -> String {
        self.engine.inspect(
            &self.name,
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
        )
    }

    fn now(&self) -> String {
        self.psql(
            "postgres",
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(self.engine.docker().args(["rm", "-f", "-v", &self.name]));
        if let Some(dir) = &self.small {
            quiet(Command::new("umount").arg(dir));
            let _ = std::fs::remove_dir(dir);
        } else {
            quiet(
                self.engine
                    .docker()
                    .args(["volume", "rm", "-f", &self.volume]),
            );
        }
        quiet(self.engine.docker().args(["network", "rm", &self.network]));
    }
}

/// Archiving over the engine's network; recovery in scratch containers of
/// the production image.
fn configure_archiving(ws: &Workspace, engine: &Engine, server: &Server) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\nurl = \"postgres://kompose@{addr}:5432/kompose\"\npassword = \"{pw}\"\ndatabases = [\"shop\"]\n\n\
         [postgres.wal]\nmax_lag = \"2s\"\nslot = \"kdr_test\"\nspool_dir = \"{spool}\"\n\n\
         [scratch]\nruntime = \"docker\"\nimage = \"{image}\"\npostgres_bin = \"{NO_SERVER_BINARIES}\"\n",
        host = engine.host,
        addr = server.address(),
        pw = server.password,
        spool = ws.dir.path().join("spool").display(),
        image = engine.postgres_image,
    ));
}

/// The server named by its container only, as on the Kompose host.
fn configure_container(ws: &Workspace, engine: &Engine, server: &Server) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\ncontainer = \"{name}\"\ndatabases = [\"shop\"]\n\n\
         [scratch]\nruntime = \"docker\"\npostgres_bin = \"{NO_SERVER_BINARIES}\"\n",
        host = engine.host,
        name = server.name,
    ));
}

/// `kompose-dr wal`, killed when dropped.
struct Archiver(Child);

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_archiver(ws: &Workspace, engine: &Engine) -> Archiver {
    let log = std::fs::File::create(ws.dir.path().join("wal.log")).unwrap();
    Archiver(
        kdr(ws, engine)
            .arg("wal")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `check` says the archive covers `t`, with no gap.
fn wait_covered(ws: &Workspace, engine: &Engine, t: &str) {
    let t: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
    let start = Instant::now();
    loop {
        let c = run(ws, engine, &["check", "--json"]);
        let covered = c.code() == Some(0)
            && c.json()["wal"].as_array().is_some_and(|w| {
                !w.is_empty()
                    && w.iter().all(|x| {
                        x["gaps"].as_array().is_some_and(|g| g.is_empty())
                            && x["covered_until"]
                                .as_str()
                                .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
                                .is_some_and(|u| u >= t)
                    })
            });
        if covered {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the archive never covered {t}: {}\narchiver log:\n{}",
            c.all(),
            std::fs::read_to_string(ws.dir.path().join("wal.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A server with `shop.t` holding 1 and 2 at the returned time T, and 3
/// after it, every commit before T in the archive; the archiver stopped.
fn history(
    engine: &'static Engine,
    tmpfs_mb: Option<u32>,
    before_backup: &str,
) -> (Server, Workspace, String) {
    let server = Server::start(engine, tmpfs_mb);
    server.psql("postgres", "create database shop");
    server.psql("shop", "create table t(n int)");
    if !before_backup.is_empty() {
        server.psql("postgres", before_backup);
    }
    let ws = Workspace::new();
    configure_archiving(&ws, engine, &server);
    run(&ws, engine, &["init"]).assert_exit(0);
    let archiver = start_archiver(&ws, engine);
    run(&ws, engine, &["backup"]).assert_exit(0);
    let m = &ws.manifests()[0];
    let base = Workspace::artifact(m, "postgres/cluster");
    assert_eq!(base["status"], "ok", "{m}");
    server.psql("shop", "insert into t values (1)");
    std::thread::sleep(Duration::from_millis(1100));
    server.psql("shop", "insert into t values (2)");
    std::thread::sleep(Duration::from_millis(600));
    let t = server.now();
    std::thread::sleep(Duration::from_millis(600));
    server.psql("shop", "insert into t values (3)");
    let after = server.now();
    wait_covered(&ws, engine, &after);
    drop(archiver);
    (server, ws, t)
}

/// The scratch containers left of this workspace's runs: those that mount
/// a directory of it (tests run side by side on one engine).
fn scratch_containers(engine: &Engine, ws: &Workspace) -> Vec<String> {
    let ours = ws.dir.path().display().to_string();
    engine
        .containers_with_label(SCRATCH_LABEL)
        .into_iter()
        .filter(|name| {
            engine
                .docker()
                .args([
                    "inspect",
                    "--format",
                    "{{range .Mounts}}{{.Source}} {{end}}",
                    name,
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&ours))
        })
        .collect()
}

#[test]
fn one_database_goes_back_to_a_second_through_a_recovery_container() {
    let engine = engine();
    let (server, ws, t) = history(engine, None, "");
    let started = Instant::now();
    let restored = run(
        &ws,
        engine,
        &[
            "restore",
            "--yes",
            "--point-in-time",
            &t,
            "--source",
            "postgres/shop",
            "--as",
            "shop_t",
        ],
    );
    restored.assert_exit(0);
    eprintln!("restore of one database to T: {:?}", started.elapsed());
    assert!(
        !restored.all().contains("server binaries are missing"),
        "{}",
        restored.all()
    );
    assert_eq!(server.psql("shop_t", "select n from t order by n"), "1\n2");
    assert_eq!(server.psql("shop", "select n from t order by n"), "1\n2\n3");
    assert!(
        scratch_containers(engine, &ws).is_empty(),
        "scratch containers left: {:?}",
        scratch_containers(engine, &ws)
    );
}

#[test]
fn the_whole_cluster_goes_back_into_its_container_with_the_old_data_kept_aside() {
    let engine = engine();
    let (server, ws, t) = history(engine, None, "");
    configure_container(&ws, engine, &server);
    let cluster = [
        "restore",
        "--yes",
        "--point-in-time",
        &t,
        "--source",
        "postgres/cluster",
    ];

    // Neither --to nor --replace: the refusal names both.
    let refused = run(&ws, engine, &cluster);
    assert_ne!(refused.code(), Some(0), "{}", refused.all());
    assert!(
        refused.all().contains("--to DIR") && refused.all().contains("--replace"),
        "{}",
        refused.all()
    );

    // --to DIR stays: the data directory recovered in a container, shut
    // down cleanly, owned by the server's uid.
    let to = ws.dir.path().join("recovered");
    let mut into_dir = cluster.to_vec();
    into_dir.extend(["--to", to.to_str().unwrap()]);
    run(&ws, engine, &into_dir).assert_exit(0);
    let version = std::fs::metadata(to.join("PG_VERSION")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&version), 999);
    assert!(!to.join("postmaster.pid").exists());
    assert!(!to.join("recovery.signal").exists());

    // The plan shows each step.
    let mut dry = cluster.to_vec();
    dry.extend(["--replace", "--dry-run"]);
    run(&ws, engine, &dry)
        .assert_exit(0)
        .assert_stdout_contains(&format!("stop {}", server.name))
        .assert_stdout_contains(".kompose-dr-replaced-")
        .assert_stdout_contains("wait until it accepts connections");

    let mut replace = cluster.to_vec();
    replace.push("--replace");
    let started = Instant::now();
    let done = run(&ws, engine, &replace);
    done.assert_exit(0);
    eprintln!(
        "whole cluster to T into the container: {:?}",
        started.elapsed()
    );
    assert!(
        done.all().contains(".kompose-dr-replaced-"),
        "{}",
        done.all()
    );

    // The server runs on the cluster as it was at T.
    assert_eq!(server.psql("shop", "select n from t order by n"), "1\n2");
    let info = engine.inspect(&server.name, "{{.State.Running}}");
    assert_eq!(info, "true");
    // The old data directory is kept aside inside the volume, whole.
    let aside = server.sh("ls -d \"$PGDATA\"/.kompose-dr-replaced-*");
    assert_eq!(aside.lines().count(), 1, "{aside}");
    server.sh(&format!("test -s {}/PG_VERSION", aside.trim()));
    // Owned by the server's user, as the rest.
    assert_eq!(
        server
            .sh("stat -c %u \"$PGDATA/base\" \"$PGDATA/PG_VERSION\"")
            .trim(),
        "999\n999"
    );
    assert!(
        scratch_containers(engine, &ws).is_empty(),
        "scratch containers left: {:?}",
        scratch_containers(engine, &ws)
    );
}

#[test]
fn a_replace_that_fails_puts_the_old_data_back_and_the_server_runs() {
    let engine = engine();
    let (server, ws, t) = history(engine, Some(256), "");
    configure_container(&ws, engine, &server);
    // The volume fills up: the recovered cluster cannot be copied in. The
    // ballast's name is kompose-dr's own, so the swap leaves it be.
    server.sh(
        "free=$(df -Pm \"$PGDATA\" | awk 'NR==2{print $4}'); \
         dd if=/dev/zero of=\"$PGDATA/.kompose-dr-ballast\" bs=1M count=$((free - 12)) 2>/dev/null; true",
    );
    let failed = run(
        &ws,
        engine,
        &[
            "restore",
            "--yes",
            "--point-in-time",
            &t,
            "--source",
            "postgres/cluster",
            "--replace",
        ],
    );
    assert_ne!(failed.code(), Some(0), "{}", failed.all());
    eprintln!("{}", failed.all());
    assert!(failed.all().contains("is unchanged"), "{}", failed.all());
    // The old data is back and served; nothing is left aside.
    server.wait_ready();
    assert_eq!(server.psql("shop", "select n from t order by n"), "1\n2\n3");
    assert_eq!(
        server.sh("ls -d \"$PGDATA\"/.kompose-dr-replaced-* 2>/dev/null; true"),
        ""
    );
    assert!(
        scratch_containers(engine, &ws).is_empty(),
        "scratch containers left: {:?}",
        scratch_containers(engine, &ws)
    );
}

#[test]
fn a_recovered_cluster_that_does_not_come_up_is_replaced_by_the_old_data_again() {
    let engine = engine();
    // The base backup carries a configuration the server cannot start
    // with (a recovery overrides it; a normal start does not); production
    // took it back before it ever restarted.
    let (server, ws, t) = history(
        engine,
        None,
        "alter system set listen_addresses = 'kdr-no-such-host.invalid'",
    );
    server.psql("postgres", "alter system reset listen_addresses");
    configure_container(&ws, engine, &server);
    let failed = run(
        &ws,
        engine,
        &[
            "restore",
            "--yes",
            "--point-in-time",
            &t,
            "--source",
            "postgres/cluster",
            "--replace",
        ],
    );
    assert_ne!(failed.code(), Some(0), "{}", failed.all());
    assert!(failed.all().contains("is unchanged"), "{}", failed.all());
    assert!(
        failed.all().contains("exited after the start"),
        "{}",
        failed.all()
    );
    server.wait_ready();
    assert_eq!(server.psql("shop", "select n from t order by n"), "1\n2\n3");
    assert_eq!(
        server.sh("ls -d \"$PGDATA\"/.kompose-dr-replaced-* 2>/dev/null; true"),
        ""
    );
}
