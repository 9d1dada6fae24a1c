//! `[timeouts]`, and each source's `stall_timeout`: how long a backup
//! waits for what can hang, so that one stuck server, lock or child fails
//! its source (exit 3) instead of holding the nightly run — and the
//! repository lock with it — for ever.
//!
//! ```toml
//! [timeouts]
//! stall = "10m"        # a source that moves no data this long is stopped
//! connect = "15s"      # connecting (and logging in) to PostgreSQL
//! child_exit = "1m"    # a tool whose output ended must exit within this
//!
//! [postgres]
//! stall_timeout = "30m"  # this source only (also [redis], [[files]])
//! ```
//!
//! How long a lock may be waited for is `postgres.lock_wait`; how long an
//! S3 request may take is the repository's `timeout` and `retries`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[timeouts]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    stall: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    child_exit: Option<Spanned<String>>,
}

/// The default of `[timeouts] stall`.
pub const DEFAULT_STALL: Duration = Duration::from_secs(600);
/// The default of `[timeouts] connect`.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(15);
/// The default of `[timeouts] child_exit`.
pub const DEFAULT_CHILD_EXIT: Duration = Duration::from_secs(60);

/// How long a backup waits for what can hang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// A source that moves no data for this long (its tool prints nothing,
    /// its server answers nothing, a lock is not granted) is stopped: its
    /// children are killed, its uploads aborted, and it fails.
    pub stall: Duration,
    /// Connecting to a source's server, the login included.
    pub connect: Duration,
    /// A tool (pg_dump) whose output has ended must exit within this, or
    /// it is killed and its source fails.
    pub child_exit: Duration,
    /// `stall_timeout` of a source section, by the name it applies to:
    /// `postgres` (every `postgres/…` source), `redis`, `files/<name>`.
    pub stall_by_source: BTreeMap<String, Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            stall: DEFAULT_STALL,
            connect: DEFAULT_CONNECT,
            child_exit: DEFAULT_CHILD_EXIT,
            stall_by_source: BTreeMap::new(),
        }
    }
}

impl Timeouts {
    /// The stall limit of source `source` (`postgres/app`, `redis`,
    /// `files/acme`): its section's `stall_timeout`, else `[timeouts] stall`.
    pub fn stall_for(&self, source: &str) -> Duration {
        self.stall_by_source
            .get(source)
            .or_else(|| {
                let section = source.split('/').next().unwrap_or(source);
                self.stall_by_source.get(section)
            })
            .copied()
            .unwrap_or(self.stall)
    }

    /// The key that sets the stall limit of `source`, for messages.
    pub fn stall_key(source: &str) -> String {
        match source.split_once('/') {
            Some(("files", name)) => format!("stall_timeout of [[files]] `{name}`"),
            Some(("directories", name)) => format!("stall_timeout of [[directories]] `{name}`"),
            Some((section, _)) => format!("{section}.stall_timeout"),
            None => format!("{source}.stall_timeout"),
        }
    }
}

impl Cx<'_> {
    /// A duration above zero, written like `30s` or `10m`.
    pub(super) fn timeout(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let s = self.string(v, key)?;
        humantime::parse_duration(&s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                self.err(
                    v.span(),
                    key,
                    format!("`{s}` is not a duration above zero: write 10m or 30s"),
                )
            })
    }

    /// Validates `[timeouts]` and the sources' `stall_timeout` keys (given
    /// as `(name it applies to, key, value)`).
    pub(super) fn timeouts(
        &self,
        raw: Option<&RawTimeouts>,
        per_source: &[(String, String, &Spanned<String>)],
    ) -> Result<Timeouts, ConfigError> {
        let mut t = Timeouts::default();
        if let Some(raw) = raw {
            if let Some(v) = &raw.stall {
                t.stall = self.timeout(v, "timeouts.stall")?;
            }
            if let Some(v) = &raw.connect {
                t.connect = self.timeout(v, "timeouts.connect")?;
            }
            if let Some(v) = &raw.child_exit {
                t.child_exit = self.timeout(v, "timeouts.child_exit")?;
            }
        }
        for (applies_to, key, v) in per_source {
            let d = self.timeout(v, key)?;
            t.stall_by_source.insert(applies_to.clone(), d);
        }
        Ok(t)
    }
}
