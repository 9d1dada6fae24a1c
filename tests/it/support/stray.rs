//! Processes a `kompose-dr` run left behind.
//!
//! [`Workspace::kdr`](super::Workspace::kdr) runs the binary with `TMPDIR`
//! set to the workspace's own `tmp/`, and every child inherits it: a
//! scratch `postgres` or `redis-server`, a `pg_dump`, a `pg_restore`. So a
//! process whose environment names that `TMPDIR` — or whose command line or
//! working directory lies under it — was started by a run in this
//! workspace, and once every run has exited it is a leftover. Found through
//! `/proc` (the tests run as root, so every process's environment is
//! readable).

use std::path::Path;
use std::time::{Duration, Instant};

/// A live process started by a run in the workspace.
#[derive(Debug, Clone)]
pub struct Stray {
    /// Its process id.
    pub pid: i32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl std::fmt::Display for Stray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} `{}`", self.pid, self.cmdline)
    }
}

/// Every live (not zombie) process other than this one whose `TMPDIR`,
/// command line or working directory is `tmp` or under it.
pub fn strays(tmp: &Path) -> Vec<Stray> {
    let me = std::process::id() as i32;
    let tmp_text = tmp.display().to_string();
    let env_entry = format!("TMPDIR={tmp_text}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = e.path();
        // Field 3 of stat, after the parenthesised name: Z is a zombie.
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            continue;
        }
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        let cmdline: String = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let cwd = std::fs::read_link(dir.join("cwd")).ok();
        let ours = environ
            .split(|b| *b == 0)
            .any(|v| v == env_entry.as_bytes())
            || cmdline.contains(&tmp_text)
            || cwd.is_some_and(|c| c.starts_with(tmp));
        if ours && !cmdline.is_empty() {
            found.push(Stray { pid, cmdline });
        }
    }
    found
}

/// The strays that are still there after waiting up to `grace` for them
/// to exit by themselves (a child notices its parent's death at its next
/// read or write).
pub fn strays_after(tmp: &Path, grace: Duration) -> Vec<Stray> {
    let start = Instant::now();
    loop {
        let left = strays(tmp);
        if left.is_empty() || start.elapsed() >= grace {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills every stray with SIGKILL and waits (up to 10 s) until none is
/// left: the test's own cleanup after a leftover was recorded.
pub fn kill_strays(tmp: &Path) {
    let start = Instant::now();
    loop {
        let left = strays(tmp);
        if left.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return;
        }
        for s in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
