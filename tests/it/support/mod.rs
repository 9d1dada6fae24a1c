//! Shared test harness: throw-away servers on free ports in temporary
//! directories, a workspace that runs the real `kompose-dr` binary against
//! a generated configuration, and assertions on what a command left behind.
//!
//! One file per server (`postgres`, `redis`, `mqtt`, `s3`), a private
//! Docker engine with a production imitation on it (`docker`), the workspace
//! in `workspace`, the assertions in `outcome`, what runs left behind in
//! `stray`. Servers are started from the
//! machine's binaries, never the system instances, and stopped when dropped.
//! A missing tool fails the test loudly with what to install.

pub mod docker;
mod mqtt;
mod outcome;
mod postgres;
mod redis;
pub mod s3;
pub mod stray;
mod tls;
mod workspace;

pub use mqtt::Mosquitto;
pub use outcome::Ran;
pub use postgres::{PG_BIN, Pg, pg_dump_then};
pub use redis::Redis;
pub use tls::certificate;
pub use workspace::{Workspace, signing_key};

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

/// Waits until `f` holds, failing the test after `secs` seconds.
#[track_caller]
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let timeout = Duration::from_secs(secs);
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("{what} did not become ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command that must succeed (a stock tool); returns its stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    Ran::of(cmd).assert_exit(0).stdout()
}

/// Writes an executable script.
pub fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A random-enough number for passwords and file names.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Waits up to `limit` for `child` to exit; its status, or `None` (still
/// running: the caller decides).
pub fn wait_child(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}
