//! A real Docker engine for the tests: one private `dockerd` per test
//! process, started by `scripts/docker-rig` (its own data-root, exec-root,
//! socket and network namespace, never the machine's daemon), with images
//! imitating the official `postgres:15`, `redis:7-alpine` and
//! `eclipse-mosquitto:2` built offline from the machine's packages; and
//! [`Stack`], a small production imitation (PostgreSQL, Redis and Mosquitto
//! containers on a network of their own, no published port) per test.
//!
//! Network rule: tests reach containers through `docker exec`, or from
//! inside the engine's network namespace ([`Engine::in_netns`]), where the
//! container addresses live; never through the machine's own network.
//!
//! The engine outlives every test of the process: a watchdog started with
//! it stops it and removes its directory once this process is gone.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use super::{Ran, rand_u64, require, run_ok, wait_until};

/// The script that starts, stops and cleans up the engine and builds its
/// images.
pub const DOCKER_RIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/docker-rig");

/// The private engine of this test process.
pub struct Engine {
    /// `unix:///…/docker.sock`: for `DOCKER_HOST` or the `[docker] host`
    /// setting of the code under test.
    pub host: String,
    /// The engine's API socket.
    pub socket: PathBuf,
    /// dockerd's PID; its network namespace is the containers' world.
    pub pid: u32,
    /// The engine's directory (data-root `data/`, exec-root `x/`), removed
    /// with the engine.
    pub dir: PathBuf,
    /// `kdr-test/postgres:15-HASH`, imitating the official `postgres:15`.
    pub postgres_image: String,
    /// `kdr-test/redis:7-HASH`, imitating `redis:7-alpine`.
    pub redis_image: String,
    /// `kdr-test/mosquitto:2-HASH`, imitating `eclipse-mosquitto:2`.
    pub mosquitto_image: String,
}

/// The engine of this test process, started (with its images) by the first
/// caller; the others wait for it. Panics, saying what to install, when
/// dockerd, busybox or the namespace tools are missing, and with the rig's
/// output when the engine does not come up.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::start)
}

/// Panics unless everything the rig needs is installed and the tests run
/// as root (dockerd needs it).
pub fn require_rig() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the Docker tests start a private dockerd, which needs root: run them as root");
    }
    let dockerd = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join("dockerd").is_file());
    if !dockerd {
        panic!(
            "`dockerd` is not installed: run scripts/setup (it installs docker.io, the engine the Docker tests start)"
        );
    }
    if !Path::new("/bin/busybox").is_file() {
        panic!(
            "/bin/busybox is missing: run scripts/setup (it installs busybox-static, the Docker test images' shell)"
        );
    }
    for tool in ["docker", "unshare", "nsenter", "ip"] {
        require(tool);
    }
}

/// `KEY=value` lines, as the rig prints them.
fn assignments(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Engine {
    /// Starts an engine in a new directory, watched by this process, and
    /// builds its images.
    fn start() -> Engine {
        require_rig();
        let dir = rig_dir();
        let t0 = Instant::now();
        let out = Ran::of(
            Command::new(DOCKER_RIG)
                .arg("start")
                .arg(&dir)
                .arg("--watch")
                .arg(std::process::id().to_string()),
        );
        out.assert_exit(0);
        let started = t0.elapsed();
        let vars = assignments(&out.stdout());
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("docker-rig start printed no {k}:\n{}", out.all()))
                .clone()
        };
        let socket = PathBuf::from(get("DOCKER_SOCK"));
        let host = get("DOCKER_HOST");
        let pid = get("DOCKERD_PID").parse().unwrap();
        let t1 = Instant::now();
        let images = Ran::of(Command::new(DOCKER_RIG).arg("images").arg(&socket));
        images.assert_exit(0);
        let built = t1.elapsed();
        let vars = assignments(&images.stdout());
        let image = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("docker-rig images printed no {k}:\n{}", images.all()))
                .clone()
        };
        eprintln!(
            "docker rig: engine in {} up in {started:?}, images ready in {built:?}",
            dir.display()
        );
        Engine {
            host,
            socket,
            pid,
            dir,
            postgres_image: image("POSTGRES_IMAGE"),
            redis_image: image("REDIS_IMAGE"),
            mosquitto_image: image("MOSQUITTO_IMAGE"),
        }
    }

    /// The docker CLI, pointed at this engine (and at an empty client
    /// configuration, so the machine's `~/.docker` plays no part).
    pub fn docker(&self) -> Command {
        docker_at(&self.host, &self.dir)
    }

    /// `/proc/PID/ns/net` of dockerd: the network namespace the container
    /// addresses live in.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// `program` run inside the engine's network namespace (`nsenter
    /// --net`), where it reaches container addresses as a program on a
    /// real Docker host does; its file system and everything else are the
    /// test's.
    pub fn in_netns(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Creates a user-defined bridge network with a random name and returns
    /// the name. A [`Stack`] removes its own; any other goes with the
    /// engine.
    pub fn network(&self) -> String {
        let name = format!("kdr-net-{:012x}", rand_u64() & 0xffff_ffff_ffff);
        run_ok(self.docker().args([
            "network",
            "create",
            "--driver",
            "bridge",
            "--label",
            "kdr-test=1",
            &name,
        ]));
        name
    }

    /// The names of the containers, running or not, carrying `label`
    /// (`KEY` or `KEY=VALUE`, as `docker ps --filter label=…` takes it),
    /// sorted.
    pub fn containers_with_label(&self, label: &str) -> Vec<String> {
        let out = run_ok(self.docker().args([
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}}",
        ]));
        let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// The names of the networks (`kind = "network"`) or volumes
    /// (`"volume"`) carrying `label`, sorted.
    pub fn objects_with_label(&self, kind: &str, label: &str) -> Vec<String> {
        let out = run_ok(self.docker().args([
            kind,
            "ls",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Name}}",
        ]));
        let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// Where the named volume's files are on this machine
    /// (`<data-root>/volumes/NAME/_data`).
    pub fn volume_path(&self, volume: &str) -> PathBuf {
        PathBuf::from(
            run_ok(self.docker().args([
                "volume",
                "inspect",
                "--format",
                "{{.Mountpoint}}",
                volume,
            ]))
            .trim(),
        )
    }

    /// `docker inspect --format FORMAT OBJECT`, trimmed.
    pub fn inspect(&self, object: &str, format: &str) -> String {
        run_ok(self.docker().args(["inspect", "--format", format, object]))
            .trim()
            .to_owned()
    }
}

/// The docker CLI for the engine at `host` whose directory is `dir`.
fn docker_at(host: &str, dir: &Path) -> Command {
    let mut c = Command::new("docker");
    c.arg("-H")
        .arg(host)
        .env("DOCKER_CONFIG", dir.join("cli"))
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH");
    c
}

/// A new, short (unix sockets), on-disk (overlay2) path for an engine:
/// under `KDR_DOCKER_RIG_BASE`, else /var/tmp.
fn rig_dir() -> PathBuf {
    let base = std::env::var_os("KDR_DOCKER_RIG_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join(format!(
        "kdr-dk-{}-{:06x}",
        std::process::id(),
        rand_u64() & 0xff_ffff
    ))
}

/// A production imitation for one test: `core-postgres-SFX` (superuser
/// `kompose`, a random password, PGDATA on a named volume),
/// `core-redis-SFX` (`redis-server --appendonly yes --requirepass …`, /data
/// on a named volume) and `core-mqtt-SFX` (Mosquitto, anonymous clients
/// allowed), on a network of their own, with no published port, every
/// name with a random suffix. Containers, volumes and network carry the
/// label `kdr-test.stack=SFX`. Dropping it removes them all.
pub struct Stack {
    engine: &'static Engine,
    /// The random suffix of every name.
    pub suffix: String,
    /// The stack's user-defined bridge network.
    pub network: String,
    /// The PostgreSQL container.
    pub postgres: String,
    /// The Redis container.
    pub redis: String,
    /// The Mosquitto container.
    pub mqtt: String,
    /// PostgreSQL's superuser (`kompose`; also its default database).
    pub pg_user: String,
    /// The superuser's password (`POSTGRES_PASSWORD`).
    pub pg_password: String,
    /// Redis's `requirepass`.
    pub redis_password: String,
    /// The volume at PGDATA (/var/lib/postgresql/data).
    pub pg_volume: String,
    /// The volume at Redis's /data.
    pub redis_volume: String,
}

impl Stack {
    /// Starts the three containers and waits until each answers (psql,
    /// redis-cli PING, mosquitto_pub, all through `docker exec`).
    pub fn start(engine: &'static Engine) -> Stack {
        let suffix = format!("{:08x}", rand_u64() & 0xffff_ffff);
        let network = engine.network();
        let label = format!("kdr-test.stack={suffix}");
        let s = Stack {
            engine,
            network: network.clone(),
            postgres: format!("core-postgres-{suffix}"),
            redis: format!("core-redis-{suffix}"),
            mqtt: format!("core-mqtt-{suffix}"),
            pg_user: "kompose".into(),
            pg_password: format!("pg-{:016x}", rand_u64()),
            redis_password: format!("redis-{:016x}", rand_u64()),
            pg_volume: format!("core-pgdata-{suffix}"),
            redis_volume: format!("core-redisdata-{suffix}"),
            suffix,
        };
        s.run_servers();
        run_ok(
            engine
                .docker()
                .args(["run", "-d", "--name", &s.mqtt, "--label", &label])
                .args(["--network", &network, "--network-alias", "mqtt"])
                .arg(&engine.mosquitto_image),
        );
        for c in [&s.postgres, &s.redis, &s.mqtt] {
            s.wait_ready(c);
        }
        s
    }

    /// The label every object of this stack carries.
    fn label(&self) -> String {
        format!("kdr-test.stack={}", self.suffix)
    }

    /// Creates the two data volumes and starts `core-postgres` and
    /// `core-redis` on them (fresh: the entrypoints initialise them).
    fn run_servers(&self) {
        for volume in [&self.pg_volume, &self.redis_volume] {
            run_ok(self.engine.docker().args([
                "volume",
                "create",
                "--label",
                &self.label(),
                volume,
            ]));
        }
        // The password reaches the container through the CLI's environment
        // (`-e NAME` without a value), not its command line.
        run_ok(
            self.engine
                .docker()
                .args([
                    "run",
                    "-d",
                    "--name",
                    &self.postgres,
                    "--label",
                    &self.label(),
                ])
                .args(["--network", &self.network, "--network-alias", "postgres"])
                .args(["-e", "POSTGRES_USER=kompose", "-e", "POSTGRES_PASSWORD"])
                .args([
                    "-v",
                    &format!("{}:/var/lib/postgresql/data", self.pg_volume),
                ])
                .arg(&self.engine.postgres_image)
                // Durability off: the data is thrown away anyway.
                .args(["postgres", "-c", "fsync=off"])
                .env("POSTGRES_PASSWORD", &self.pg_password),
        );
        run_ok(
            self.engine
                .docker()
                .args(["run", "-d", "--name", &self.redis, "--label", &self.label()])
                .args(["--network", &self.network, "--network-alias", "redis"])
                .args(["-v", &format!("{}:/data", self.redis_volume)])
                .arg(&self.engine.redis_image)
                .args(["redis-server", "--appendonly", "yes", "--requirepass"])
                .arg(&self.redis_password),
        );
    }

    /// The host is gone: removes `core-postgres` and `core-redis` with
    /// their volumes, then starts them again under the same names on new,
    /// empty volumes (a fresh stack from the same compose file) and waits
    /// until they answer.
    pub fn destroy_and_start_fresh(&self) {
        run_ok(
            self.engine
                .docker()
                .args(["rm", "-f", "-v", &self.postgres, &self.redis]),
        );
        run_ok(
            self.engine
                .docker()
                .args(["volume", "rm", &self.pg_volume, &self.redis_volume]),
        );
        self.run_servers();
        for c in [&self.postgres, &self.redis] {
            self.wait_ready(c);
        }
    }

    /// Waits (60 s at most) until `container`, one of the three, answers.
    pub fn wait_ready(&self, container: &str) {
        let what = format!("container {container}");
        if container == self.postgres {
            // Over TCP too: the entrypoint's temporary server (the one
            // initdb's scripts run against) answers on the socket only,
            // and stops a moment later.
            wait_until(&what, 60, || {
                self.psql_raw(&self.pg_user, "select 1").status.success()
                    && self
                        .exec(&self.postgres)
                        .args(["pg_isready", "-q", "-h", "127.0.0.1"])
                        .status()
                        .is_ok_and(|s| s.success())
            });
        } else if container == self.redis {
            wait_until(&what, 60, || {
                let out = self.redis_cli_raw(&["PING"]);
                out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "PONG"
            });
        } else if container == self.mqtt {
            wait_until(&what, 60, || {
                self.exec(container)
                    .args(["mosquitto_pub", "-h", "127.0.0.1", "-t", "kdr-test/ready"])
                    .args(["-m", "1"])
                    .stderr(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            });
        } else {
            panic!("{container} is not in this stack");
        }
    }

    /// `docker exec -i CONTAINER`, ready for the command and its arguments.
    pub fn exec(&self, container: &str) -> Command {
        let mut c = self.engine.docker();
        c.args(["exec", "-i", container]);
        c
    }

    fn psql_raw(&self, db: &str, sql: &str) -> Output {
        self.exec(&self.postgres)
            .args(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", &self.pg_user, "-d", db, "-f", "-"])
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

    /// Runs SQL in `db` with `docker exec … psql -X -qtA -v ON_ERROR_STOP=1`
    /// (the local socket, as the superuser); returns its unaligned output.
    /// Panics with psql's stderr when it fails.
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_raw(db, sql);
        if !out.status.success() {
            panic!("psql {db}: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn redis_cli_raw(&self, args: &[&str]) -> Output {
        // `-e NAME` without a value: the password goes from the CLI's
        // environment into the exec's, never onto a command line.
        let mut c = self.engine.docker();
        c.args(["exec", "-e", "REDISCLI_AUTH", &self.redis, "redis-cli"])
            .args(args)
            .env("REDISCLI_AUTH", &self.redis_password);
        c.output().unwrap()
    }

    /// Runs `redis-cli ARGS` in the Redis container, authenticated through
    /// `REDISCLI_AUTH` in the exec's environment; returns its output.
    /// Panics with its stderr when it fails.
    #[track_caller]
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = self.redis_cli_raw(args);
        if !out.status.success() {
            panic!(
                "redis-cli {args:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// The Mosquitto container's address on the stack network: reachable
    /// from inside the engine's namespace ([`Engine::in_netns`]) only.
    pub fn mqtt_address(&self) -> String {
        self.address(&self.mqtt)
    }

    /// `container`'s address on the stack network.
    pub fn address(&self, container: &str) -> String {
        let addr = self.engine.inspect(
            container,
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
        );
        assert!(
            !addr.is_empty(),
            "{container} has no address on {}",
            self.network
        );
        addr
    }

    /// `docker stop CONTAINER` (the image's stop signal, then SIGKILL after
    /// 10 s).
    pub fn stop_container(&self, container: &str) {
        run_ok(self.engine.docker().args(["stop", container]));
    }

    /// `docker start CONTAINER`, then waits until it answers.
    pub fn start_container(&self, container: &str) {
        run_ok(self.engine.docker().args(["start", container]));
        self.wait_ready(container);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(self.engine.docker().args([
            "rm",
            "-f",
            "-v",
            &self.postgres,
            &self.redis,
            &self.mqtt,
        ]));
        quiet(self.engine.docker().args([
            "volume",
            "rm",
            "-f",
            &self.pg_volume,
            &self.redis_volume,
        ]));
        quiet(self.engine.docker().args(["network", "rm", &self.network]));
    }
}

/// The binary with `ws`'s configuration, run inside `engine`'s network
/// namespace (as on a host, which routes to its bridges), its temporary
/// files and state in the workspace, the engine named by the configuration
/// (`[docker] host`), not by the environment.
pub fn kdr(ws: &crate::support::Workspace, engine: &Engine) -> Command {
    let tmp = ws.tmp();
    std::fs::create_dir_all(&tmp).unwrap();
    let mut c = engine.in_netns(env!("CARGO_BIN_EXE_kompose-dr"));
    c.arg("--config")
        .arg(&ws.config)
        .stdin(Stdio::null())
        .env("TMPDIR", tmp)
        .env("KOMPOSE_DR_STATE_DIR", ws.state_dir())
        .env_remove("DOCKER_HOST");
    c
}

/// [`kdr`] with `args`, run to its end.
pub fn run(ws: &crate::support::Workspace, engine: &Engine, args: &[&str]) -> crate::support::Ran {
    crate::support::Ran::of(kdr(ws, engine).args(args))
}
