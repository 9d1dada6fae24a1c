//! A throw-away PostgreSQL 15 server per test, started by
//! `scripts/throwaway-pg` (the script the benchmarks use too), which runs
//! PostgreSQL as the `postgres` user when the tests run as root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{
    Ran, Workspace, on_free_ports, port_taken, rand_u64, require, run_ok, script, wait_until,
};

/// The PostgreSQL 15 binaries the tests use (never the system instance).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The one script that starts and stops a throw-away server.
const THROWAWAY_PG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/throwaway-pg");

/// A throw-away PostgreSQL 15 server with password authentication,
/// listening on 127.0.0.1; stopped when dropped.
pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Pg {
    /// Starts a new cluster (superuser `kompose`, scram-sha-256) on a free port.
    pub fn start() -> Pg {
        require("psql");
        if !Path::new(PG_BIN).join("initdb").is_file() {
            panic!(
                "PostgreSQL 15 is not installed at {PG_BIN}: run scripts/setup (it installs postgresql-15)"
            );
        }
        let pg = on_free_ports("postgres", |[port]| Self::launch(port));
        wait_until("postgres", 30, || {
            pg.psql_raw("postgres", "select 1").status.success()
        });
        pg
    }

    /// A new cluster in a new directory, started on `port`; `None` if the
    /// port is taken.
    fn launch(port: u16) -> Option<Pg> {
        let dir = tempfile::Builder::new()
            .prefix("kdr-pg-")
            .tempdir()
            .unwrap();
        let password = format!("pw-{:016x}", rand_u64());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        let started = Ran::of(
            Command::new(THROWAWAY_PG)
                .arg("start")
                .arg(dir.path())
                .args(["--port", &port.to_string(), "--user", "kompose"])
                .arg("--pwfile")
                .arg(&pwfile)
                .args(["-c", "max_connections=50"])
                .env("PGBIN", PG_BIN),
        );
        if started.code() != Some(0) && port_taken(&dir.path().join("postgres.log")) {
            return None;
        }
        started.assert_exit(0);
        Some(Pg {
            dir,
            port,
            user: "kompose".into(),
            password,
        })
    }

    /// `postgres://kompose@127.0.0.1:PORT/postgres` (no password in it).
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/postgres", self.user, self.port)
    }

    fn psql_raw(&self, db: &str, sql: &str) -> Output {
        self.client("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(db)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(sql.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap()
    }

    /// Runs SQL in `db`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_raw(db, sql);
        if !out.status.success() {
            panic!("psql {db}: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// A command with this server's connection settings in its environment.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(Path::new(PG_BIN).join(program));
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password);
        c
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new(THROWAWAY_PG)
            .arg("stop")
            .arg(self.dir.path())
            .env("PGBIN", PG_BIN)
            .stdout(Stdio::null())
            .status();
    }
}

/// A `bin_dir` whose pg_dump is the real one followed by `then` (a shell
/// command such as `sleep 2`), touching the returned marker file once the
/// dump is written: kompose-dr is then waiting for the child, with the
/// archive written but not committed. Returns (bin_dir, marker).
pub fn pg_dump_then(ws: &Workspace, then: &str) -> (PathBuf, PathBuf) {
    let bin = ws.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = ws.dir.path().join("dumped");
    script(
        &bin.join("pg_dump"),
        &format!(
            "#!/bin/sh\n{PG_BIN}/pg_dump \"$@\"\ntouch {}\n{then}\n",
            marker.display()
        ),
    );
    script(
        &bin.join("pg_dumpall"),
        &format!("#!/bin/sh\nexec {PG_BIN}/pg_dumpall \"$@\"\n"),
    );
    (bin, marker)
}

impl Pg {
    /// Stops the server hard (`immediate`: no checkpoint, as a power cut
    /// or kill -9 would).
    pub fn stop_immediately(&self) {
        run_ok(
            Command::new(THROWAWAY_PG)
                .arg("stop")
                .arg(self.dir.path())
                .arg("--immediate")
                .env("PGBIN", PG_BIN),
        );
    }

    /// Moves the server to a new timeline, as a failover does: stopped,
    /// started as a standby of nothing (it replays its own log), promoted.
    pub fn promote_to_new_timeline(&self) {
        run_ok(
            Command::new(THROWAWAY_PG)
                .arg("stop")
                .arg(self.dir.path())
                .env("PGBIN", PG_BIN),
        );
        let data = self.dir.path().join("data");
        let as_pg = |args: &[&str]| {
            let mut c = if nix::unistd::geteuid().is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c
            } else {
                Command::new("env")
            };
            c.args(args);
            c
        };
        run_ok(&mut as_pg(&[
            "touch",
            data.join("standby.signal").to_str().unwrap(),
        ]));
        let log = self.dir.path().join("postgres.log");
        run_ok(&mut as_pg(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "start",
        ]));
        run_ok(&mut as_pg(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "promote",
        ]));
    }

    /// Runs SQL in `db` like [`Pg::psql`], but returns psql's error
    /// instead of failing the test: for checks that report what they find.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self.psql_raw(db, sql);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

#[test]
fn postgres_on_a_taken_port_is_tried_again() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(Pg::launch(port).is_none());
}
