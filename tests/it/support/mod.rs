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

/// A TCP port on 127.0.0.1 that was free a moment ago: another process
/// may take it before the caller binds it, so only [`on_free_ports`] uses
/// it, and tries again when that happens.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many times [`on_free_ports`] chooses ports before it gives up.
const PORT_ATTEMPTS: usize = 5;

/// Starts a server on `N` ports chosen just before it binds them: `start`
/// returns `None` when the server found one of them taken (see
/// [`port_taken`]), and fresh ports are tried. A port is only free when it
/// is chosen; the server's own bind is what holds it.
#[track_caller]
pub fn on_free_ports<const N: usize, T>(
    what: &str,
    mut start: impl FnMut([u16; N]) -> Option<T>,
) -> T {
    for _ in 0..PORT_ATTEMPTS {
        if let Some(server) = start(std::array::from_fn(|_| free_port())) {
            return server;
        }
        eprintln!("{what}: a port was taken before the server bound it; trying others");
    }
    panic!("{what}: the ports chosen were taken {PORT_ATTEMPTS} times running");
}

/// Whether the server log at `log` says a port it was given is taken
/// (`EADDRINUSE`, which PostgreSQL, Redis, Mosquitto and Garage all print
/// as the C library words it).
pub fn port_taken(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(PORT_TAKEN))
}

/// How `strerror(EADDRINUSE)` reads.
const PORT_TAKEN: &str = "Address already in use";

/// Waits until the log at `log` of the server `child` says `ready`
/// (`true`), or says its port is taken (`false`: the caller stops it and
/// tries other ports); fails the test if the server exits otherwise or
/// takes more than `secs` seconds.
#[track_caller]
pub fn wait_started(
    what: &str,
    secs: u64,
    child: &mut std::process::Child,
    log: &Path,
    ready: &[&str],
) -> bool {
    let mut taken = false;
    wait_until(what, secs, || {
        // Whether it exited first: the log read after holds all it wrote.
        let exited = child.try_wait().unwrap().is_some();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        taken = text.contains(PORT_TAKEN);
        if exited && !taken {
            panic!("{what} exited before it was ready:\n{text}");
        }
        taken || ready.iter().all(|r| text.contains(r))
    });
    !taken
}

/// A port on 127.0.0.1 where nothing listens, held for as long as this
/// lives: its socket is bound but not listening, so a connection is refused
/// and no other server can bind the port meanwhile.
pub struct ClosedPort {
    /// The port.
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

/// A [`ClosedPort`]: for tests of what kompose-dr says when a server is
/// unreachable.
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort {
        port,
        _socket: socket,
    }
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

#[test]
fn a_closed_port_refuses_connections_and_cannot_be_bound() {
    let closed = closed_port();
    let err = std::net::TcpStream::connect(("127.0.0.1", closed.port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = TcpListener::bind(("127.0.0.1", closed.port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}
