//! `[agent]` and the top-level `prune_schedule` and `drill_schedule`: what
//! the long-running agent serves and when it runs maintenance.
//!
//! The listen address and the schedules are parsed here, once, into a
//! [`SocketAddr`] and [`Schedule`]s, so a typo is reported at load time
//! with its line and key, and the agent never parses them again.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};
use crate::model::schedule::Schedule;

/// `[agent]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    listen: Option<Spanned<String>>,
    catch_up: Option<bool>,
}

/// Settings of the long-running agent, with every value already parsed.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// Where `/metrics` and `/healthz` are served (`127.0.0.1:9731`).
    pub listen: Option<SocketAddr>,
    /// Run a policy once at start if its last scheduled run was missed.
    pub catch_up: bool,
    /// When `prune` runs (cron with seconds).
    pub prune_schedule: Option<Schedule>,
    /// When `drill` runs (cron with seconds).
    pub drill_schedule: Option<Schedule>,
}

impl Cx<'_> {
    /// Validates `[agent]` together with the top-level schedules of the
    /// jobs it runs besides policies.
    pub(super) fn agent(
        &self,
        raw: Option<&RawAgent>,
        prune_schedule: &Option<Spanned<String>>,
        drill_schedule: &Option<Spanned<String>>,
    ) -> Result<AgentConfig, ConfigError> {
        Ok(AgentConfig {
            catch_up: raw.and_then(|a| a.catch_up).unwrap_or(false),
            prune_schedule: self.schedule(prune_schedule, "prune_schedule")?,
            drill_schedule: self.schedule(drill_schedule, "drill_schedule")?,
            listen: raw
                .and_then(|a| a.listen.as_ref())
                .map(|l| self.listen(l))
                .transpose()?,
        })
    }

    /// A cron schedule with a seconds field first.
    fn schedule(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<Schedule>, ConfigError> {
        let Some(v) = value else {
            return Ok(None);
        };
        let text = self.string(v, key)?;
        text.parse().map(Some).map_err(|e| {
            self.err(
                v.span(),
                key,
                format!(
                    "`{text}` is not a cron expression ({e}); it has a seconds field first: \"0 30 4 * * *\""
                ),
            )
        })
    }

    /// `agent.listen`: an IP address and port.
    fn listen(&self, l: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let text = self.string(l, "agent.listen")?;
        text.parse().map_err(|_| {
            self.err(
                l.span(),
                "agent.listen",
                format!("`{text}` is not an address: write 127.0.0.1:9731"),
            )
        })
    }
}
