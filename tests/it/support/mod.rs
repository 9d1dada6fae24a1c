//! Shared test harness: throw-away PostgreSQL and Redis servers on free
//! ports in temporary directories, the stock tools, and a helper that runs
//! the real `kompose-dr` binary against a generated configuration.
//!
//! Servers are started from the machine's binaries (PostgreSQL 15 under
//! `/usr/lib/postgresql/15/bin`, `redis-server`), never the system
//! instances, and stopped when dropped. PostgreSQL refuses to run as root:
//! when the tests run as root its binaries run as the `postgres` user.
//! A missing tool fails the test loudly with what to install.
#![allow(dead_code)]

pub mod s3;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Panics with an install hint if `tool` is not on PATH.
pub fn require(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|c| c.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: run scripts/setup (it installs every tool the tests need)"
        )
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn postgres_user() -> Option<nix::unistd::User> {
    if is_root() {
        Some(
            nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("the `postgres` user must exist (install postgresql-15)"),
        )
    } else {
        None
    }
}

/// A command that runs as the `postgres` user when we are root.
pub fn pg_command(program: &str) -> Command {
    let mut c = Command::new(Path::new(PG_BIN).join(program));
    if let Some(u) = postgres_user() {
        use std::os::unix::process::CommandExt;
        c.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        c.env("HOME", &u.dir);
    }
    c
}

fn give_to_postgres(path: &Path) {
    if let Some(u) = postgres_user() {
        std::os::unix::fs::chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > timeout {
            panic!("{what} did not become ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throw-away PostgreSQL 15 server with password authentication.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    pub password: String,
    child: Child,
}

impl Pg {
    /// Starts a new cluster (superuser `kompose`, scram-sha-256) on a free port.
    pub fn start() -> Pg {
        require("psql");
        let dir = tempfile::Builder::new()
            .prefix("kdr-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        give_to_postgres(dir.path());
        let password = format!("pw-{:016x}", rand_u64());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        give_to_postgres(&pwfile);
        let data = dir.path().join("data");
        run_ok(
            pg_command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "kompose",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        give_to_postgres(&sock);
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        give_to_postgres(&dir.path().join("postgres.log"));
        let port = free_port();
        let child = pg_command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_connections=50",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start postgres");
        let pg = Pg {
            dir,
            port,
            user: "kompose".into(),
            password,
            child,
        };
        wait_for("postgres", Duration::from_secs(30), || {
            pg.psql_raw("postgres", "select 1").status.success()
        });
        pg
    }

    /// `postgres://kompose@127.0.0.1:PORT/postgres` (no password in it).
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/postgres", self.user, self.port)
    }

    fn psql_raw(&self, db: &str, sql: &str) -> Output {
        Command::new(Path::new(PG_BIN).join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.user)
            .arg("-d")
            .arg(db)
            .args(["-f", "-"])
            .env("PGPASSWORD", &self.password)
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
        // SIGINT: fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A throw-away Redis server.
pub struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub password: Option<String>,
    pub aof: bool,
    child: Child,
}

impl Redis {
    /// Starts redis-server with AOF on or off, optionally with a password.
    pub fn start(aof: bool, password: Option<&str>) -> Redis {
        Self::start_in(
            tempfile::Builder::new()
                .prefix("kdr-redis-")
                .tempdir()
                .unwrap(),
            aof,
            password,
        )
    }

    /// Starts redis-server on an existing data directory.
    pub fn start_in(dir: tempfile::TempDir, aof: bool, password: Option<&str>) -> Redis {
        let bin = require("redis-server");
        let port = free_port();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly {}\ndaemonize no\nlogfile {}\n",
            dir.path().display(),
            if aof { "yes" } else { "no" },
            dir.path().join("redis.log").display()
        );
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg(&conf_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis {
            dir,
            port,
            password: password.map(str::to_owned),
            aof,
            child,
        };
        wait_for("redis", Duration::from_secs(20), || {
            r.cli_raw(&["PING"])
                .map(|s| s.trim() == "PONG")
                .unwrap_or(false)
        });
        // With AOF on, wait until the initial AOF exists.
        if aof {
            wait_for("redis AOF", Duration::from_secs(20), || {
                r.cli(&["INFO", "persistence"])
                    .contains("aof_rewrite_in_progress:0")
                    && r.dir.path().join("appendonlydir").exists()
            });
        }
        r
    }

    fn cli_raw(&self, args: &[&str]) -> Option<String> {
        let mut c = Command::new("redis-cli");
        c.arg("-p").arg(self.port.to_string()).arg("--no-raw");
        if let Some(p) = &self.password {
            c.env("REDISCLI_AUTH", p);
        }
        let out = c.args(args).stdin(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a redis-cli command.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_raw(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Loads `n` keys of several types through redis-cli --pipe.
    pub fn fill(&self, n: usize) {
        let mut cmds = String::new();
        for i in 0..n {
            match i % 3 {
                0 => cmds.push_str(&format!("SET key:{i} value-{i}\n")),
                1 => cmds.push_str(&format!("HSET hash:{i} field {i} other x\n")),
                _ => cmds.push_str(&format!("RPUSH list:{i} a b c\n")),
            }
        }
        let mut c = Command::new("redis-cli");
        c.arg("-p").arg(self.port.to_string()).arg("--pipe");
        if let Some(p) = &self.password {
            c.env("REDISCLI_AUTH", p);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cmds.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> u64 {
        self.cli(&["DBSIZE"])
            .trim()
            .trim_start_matches("(integer) ")
            .parse()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test workspace: an age identity, a local repository path, and a
/// configuration file for the real binary.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub identity: PathBuf,
    pub recipient: String,
    pub repo: PathBuf,
    pub config: PathBuf,
}

impl Workspace {
    /// A workspace with a fresh identity (generated by `age-keygen`, the
    /// stock tool) and no configuration yet.
    pub fn new() -> Workspace {
        require("age-keygen");
        let dir = tempfile::Builder::new()
            .prefix("kdr-ws-")
            .tempdir()
            .unwrap();
        let identity = dir.path().join("identity.txt");
        run_ok(Command::new("age-keygen").arg("-o").arg(&identity));
        let recipient = run_ok(Command::new("age-keygen").arg("-y").arg(&identity))
            .trim()
            .to_owned();
        let repo = dir.path().join("repo");
        let config = dir.path().join("kompose-dr.toml");
        Workspace {
            dir,
            identity,
            recipient,
            repo,
            config,
        }
    }

    /// Writes the configuration: one local repository and the encryption
    /// section, then `body`.
    pub fn configure(&self, body: &str) {
        let text = format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n\n{body}",
            self.repo.display(),
            self.recipient,
            self.identity.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Writes the configuration with the given `[[repository]]` sections
    /// (instead of the local one), the encryption section, then `body`.
    pub fn configure_repositories(&self, repositories: &str, body: &str) {
        let text = format!(
            "{repositories}\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n\n{body}",
            self.recipient,
            self.identity.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Puts top-level settings (`policies_dir = "…"`) at the head of the
    /// configuration, before its first table, where TOML wants them.
    pub fn prepend_top_level(&self, lines: &str) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{lines}\n{cfg}")).unwrap();
    }

    /// The configuration text for a PostgreSQL server.
    pub fn pg_section(pg: &Pg, databases: &[&str]) -> String {
        let dbs: Vec<String> = databases.iter().map(|d| format!("\"{d}\"")).collect();
        format!(
            "[postgres]\nurl = \"{}\"\npassword = \"{}\"\ndatabases = [{}]\nglobals = true\n\n",
            pg.url(),
            pg.password,
            dbs.join(", ")
        )
    }

    /// [`Workspace::pg_section`] with the client tools taken from `bin`.
    pub fn pg_section_bin(pg: &Pg, databases: &[&str], bin: &Path) -> String {
        format!(
            "{}\nbin_dir = \"{}\"\n",
            Self::pg_section(pg, databases).trim_end(),
            bin.display()
        )
    }

    /// The configuration text for a Redis server.
    pub fn redis_section(r: &Redis) -> String {
        let mut s = format!("[redis]\nurl = \"redis://127.0.0.1:{}\"\n", r.port);
        if let Some(p) = &r.password {
            s.push_str(&format!("password = \"{p}\"\n"));
        }
        s.push('\n');
        s
    }

    /// The real binary with `--config`, and `TMPDIR` set to this
    /// workspace's own `tmp/` (so scratch directories can be counted).
    pub fn kdr(&self) -> Command {
        let tmp = self.tmp();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_kompose-dr"));
        c.arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .env("TMPDIR", tmp);
        c
    }

    /// The binary's `TMPDIR`.
    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// Runs the binary with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.kdr().args(args).output().unwrap()
    }

    /// `kompose-dr init` (must succeed).
    pub fn init(&self) {
        let out = self.run(&["init"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every committed manifest, newest first.
    pub fn manifests(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["--json", "snapshots"]);
        assert!(
            out.status.success(),
            "snapshots failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["snapshots"].as_array().unwrap().clone()
    }

    /// The artifact of `source` in a manifest.
    pub fn artifact<'a>(manifest: &'a serde_json::Value, source: &str) -> &'a serde_json::Value {
        manifest["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["source"] == source)
            .unwrap_or_else(|| panic!("no artifact {source} in {manifest:#}"))
    }

    /// The path of an artifact's archive.
    pub fn archive(&self, artifact: &serde_json::Value) -> PathBuf {
        self.repo
            .join(artifact["path"].as_str().expect("artifact has a path"))
    }

    /// `age -d -i IDENTITY FILE | zstd -d` with the stock tools.
    pub fn stock_decrypt(&self, archive: &Path) -> Vec<u8> {
        require("age");
        require("zstd");
        let out = Command::new("sh")
            .arg("-c")
            .arg("age -d -i \"$1\" \"$2\" | zstd -d -q")
            .arg("sh")
            .arg(&self.identity)
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stock decrypt failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// stdout and stderr of an output, for assertions.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes an executable script.
pub fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A throw-away Mosquitto broker on a free port.
pub struct Mosquitto {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Mosquitto {
    /// Starts a broker; with `credentials`, anonymous clients are refused.
    pub fn start(credentials: Option<(&str, &str)>) -> Mosquitto {
        let bin = require("mosquitto");
        let dir = tempfile::Builder::new()
            .prefix("kdr-mqtt-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut conf = format!("listener {port} 127.0.0.1\npersistence false\nuser root\n");
        match credentials {
            None => conf.push_str("allow_anonymous true\n"),
            Some((user, pass)) => {
                require("mosquitto_passwd");
                let pwfile = dir.path().join("passwd");
                run_ok(
                    Command::new("mosquitto_passwd")
                        .args(["-c", "-b"])
                        .arg(&pwfile)
                        .args([user, pass]),
                );
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    pwfile.display()
                ));
            }
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = Mosquitto { dir, port, child };
        wait_for("mosquitto", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        m
    }

    /// Subscribes to `topic` (with `mosquitto_sub`) and returns once the
    /// subscription is live; the subscriber collects `topic payload` lines.
    pub fn subscribe(&self, topic: &str, credentials: Option<(&str, &str)>) -> Subscriber {
        require("mosquitto_sub");
        let out = self.dir.path().join(format!("sub-{}.log", rand_u64()));
        let mut c = Command::new("mosquitto_sub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-q",
            "1",
            "-v",
            "-t",
            topic,
            "-t",
            "probe/#",
        ]);
        if let Some((u, p)) = credentials {
            c.args(["-u", u, "-P", p]);
        }
        let child = c
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sub = Subscriber { child, out };
        wait_for("the MQTT subscription", Duration::from_secs(10), || {
            let mut p = Command::new("mosquitto_pub");
            p.args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "probe/x",
                "-m",
                "probe",
            ]);
            if let Some((u, pw)) = credentials {
                p.args(["-u", u, "-P", pw]);
            }
            let _ = p.output();
            std::fs::read_to_string(&sub.out)
                .unwrap_or_default()
                .contains("probe/x")
        });
        sub
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mosquitto_sub`.
pub struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    /// The messages received on topics other than the probe: (topic, JSON).
    pub fn messages(&self) -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("probe/"))
            .filter_map(|l| {
                let (topic, payload) = l.split_once(' ')?;
                Some((topic.to_owned(), serde_json::from_str(payload).ok()?))
            })
            .collect()
    }

    /// Waits until `n` messages arrived (at most 10 s).
    pub fn wait_for(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        wait_for("MQTT messages", Duration::from_secs(10), || {
            self.messages().len() >= n
        });
        self.messages()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Waits until `f` holds, failing the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(secs), f)
}

/// A self-signed certificate for `names`, base64 PEM as Traefik stores it.
pub fn certificate(dir: &Path, names: &[&str], days: u32) -> String {
    require("openssl");
    let key = dir.join("k.pem");
    let crt = dir.join("c.pem");
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                &days.to_string(),
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args([
                "-subj",
                &format!("/CN={}", names[0]),
                "-addext",
                &format!("subjectAltName={san}"),
            ])
            .stderr(std::process::Stdio::null()),
    );
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(&crt).unwrap())
}
