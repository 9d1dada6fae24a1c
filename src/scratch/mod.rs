//! Scratch instances: throw-away servers that share nothing with
//! production, for `verify` and `drill` to restore into.
//!
//! [`ScratchRuntime`] is the seam: `process` runs local binaries (an
//! `initdb` cluster on a unix socket in a private 0700 directory, a
//! `redis-server` on a free loopback port); a Docker runtime can implement
//! the same trait later. Every instance is a guard: dropping it — on
//! success, failure, panic or cancellation (Ctrl-C/SIGTERM are turned into
//! cancellation by the CLI) — kills its process and removes its directory.

pub mod process;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::model::config::PgEndpoint;

/// A running scratch PostgreSQL.
pub trait ScratchPostgres: Send + Sync {
    /// How to reach it (a unix socket directory; no password).
    fn endpoint(&self) -> PgEndpoint;
    /// Its major version.
    fn major(&self) -> u32;
}

/// A running scratch Redis.
pub trait ScratchRedis: Send + Sync {
    /// Its TCP port on 127.0.0.1.
    fn port(&self) -> u16;
}

/// Starts scratch instances.
#[async_trait]
pub trait ScratchRuntime: Send + Sync {
    /// A PostgreSQL server of this major version.
    async fn postgres(&self, major: u32) -> Result<Box<dyn ScratchPostgres>, String>;
    /// A Redis server on the files in `data_dir` (AOF or RDB).
    async fn redis(&self, data_dir: &Path, aof: bool) -> Result<Box<dyn ScratchRedis>, String>;
    /// A private temporary directory (removed when dropped).
    fn tempdir(&self) -> Result<tempfile::TempDir, String>;
}

/// The scratch runtime `[scratch]` describes.
pub fn runtime(config: &crate::model::config::ScratchConfig) -> Box<dyn ScratchRuntime> {
    Box::new(process::ProcessRuntime::new(config))
}

/// The parent of every scratch directory: `$TMPDIR`.
pub fn scratch_root() -> PathBuf {
    std::env::temp_dir()
}

/// The prefix of every scratch directory, so leftovers can be recognised.
pub const PREFIX: &str = "kompose-dr-scratch-";
