//! A throw-away Redis server per test, from the machine's `redis-server`,
//! on a free port in a temporary directory; killed when dropped.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use super::{on_free_ports, require, wait_started, wait_until};

/// A throw-away Redis server.
pub struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub password: Option<String>,
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

    /// Starts redis-server on an existing data directory, on a free port.
    pub fn start_in(dir: tempfile::TempDir, aof: bool, password: Option<&str>) -> Redis {
        let mut slot = Some(dir);
        on_free_ports("redis", |[port]| {
            match Self::launch(slot.take().unwrap(), port, aof, password) {
                Ok(r) => Some(r),
                Err(dir) => {
                    slot = Some(dir);
                    None
                }
            }
        })
    }

    /// Starts redis-server on an existing data directory and a given port
    /// (one a stopped server had: nothing else takes it meanwhile).
    pub fn start_on(dir: tempfile::TempDir, port: u16, aof: bool, password: Option<&str>) -> Redis {
        Self::launch(dir, port, aof, password)
            .unwrap_or_else(|_| panic!("redis: port {port} is taken by another process"))
    }

    /// Starts redis-server on `port` and waits until it answers; gives the
    /// directory back if the port is taken.
    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        aof: bool,
        password: Option<&str>,
    ) -> Result<Redis, tempfile::TempDir> {
        let bin = require("redis-server");
        let log = dir.path().join("redis.log");
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly {}\ndaemonize no\nlogfile {}\n",
            dir.path().display(),
            if aof { "yes" } else { "no" },
            log.display()
        );
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // A log of an earlier attempt would say its port was taken.
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(bin)
            .arg(&conf_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        if !wait_started(
            "redis",
            20,
            &mut child,
            &log,
            &["Ready to accept connections"],
        ) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(dir);
        }
        let r = Redis {
            dir,
            port,
            password: password.map(str::to_owned),
            child,
        };
        wait_until("redis", 20, || {
            r.cli_raw(&["PING"])
                .map(|s| s.trim() == "PONG")
                .unwrap_or(false)
        });
        // With AOF on, wait until the initial AOF exists.
        if aof {
            wait_until("redis AOF", 20, || {
                r.cli(&["INFO", "persistence"])
                    .contains("aof_rewrite_in_progress:0")
                    && r.dir.path().join("appendonlydir").exists()
            });
        }
        Ok(r)
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
        self.pipe(&cmds);
    }

    /// Runs commands, one a line, through redis-cli --pipe.
    pub fn pipe(&self, cmds: &str) {
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

    /// Stops the server at once (SIGKILL: it saves nothing), keeping its
    /// directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[test]
fn redis_on_a_taken_port_gives_its_directory_back() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    assert!(Redis::launch(dir, port, false, None).is_err());
}
