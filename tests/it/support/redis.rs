//! A throw-away Redis server per test, from the machine's `redis-server`,
//! on a free port in a temporary directory; killed when dropped.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use super::{free_port, require, wait_until};

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

    /// Starts redis-server on an existing data directory.
    pub fn start_in(dir: tempfile::TempDir, aof: bool, password: Option<&str>) -> Redis {
        Self::start_on(dir, free_port(), aof, password)
    }

    /// Starts redis-server on an existing data directory and a given port.
    pub fn start_on(dir: tempfile::TempDir, port: u16, aof: bool, password: Option<&str>) -> Redis {
        let bin = require("redis-server");
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
