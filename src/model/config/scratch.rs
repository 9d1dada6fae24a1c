//! `[scratch]`: how the throw-away servers that verify and drills restore
//! into are run.
//!
//! Only the `process` runtime exists in this version; the key is accepted
//! so that configurations can say so explicitly, and any other value is
//! refused rather than silently ignored.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[scratch]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScratch {
    runtime: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    postgres_bin: Option<Spanned<String>>,
}

/// How scratch instances for verify and drills run (`[scratch]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchConfig {
    /// The user scratch servers run as when kompose-dr runs as root.
    pub user: String,
    /// Where PostgreSQL server binaries live: `{major}` is replaced
    /// (default `/usr/lib/postgresql/{major}/bin`).
    pub postgres_bin: String,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            user: "postgres".into(),
            postgres_bin: "/usr/lib/postgresql/{major}/bin".into(),
        }
    }
}

impl Cx<'_> {
    /// Validates `[scratch]`; the defaults when the section is absent.
    pub(super) fn scratch(&self, raw: Option<&RawScratch>) -> Result<ScratchConfig, ConfigError> {
        let mut scratch = ScratchConfig::default();
        let Some(sc) = raw else {
            return Ok(scratch);
        };
        if let Some(r) = &sc.runtime {
            let v = self.string(r, "scratch.runtime")?;
            if v != "process" {
                return Err(self.err(
                    r.span(),
                    "scratch.runtime",
                    format!("runtime `{v}` is not available in this version: use \"process\""),
                ));
            }
        }
        if let Some(u) = &sc.user {
            scratch.user = self.string(u, "scratch.user")?;
        }
        if let Some(b) = &sc.postgres_bin {
            scratch.postgres_bin = self.string(b, "scratch.postgres_bin")?;
        }
        Ok(scratch)
    }
}
