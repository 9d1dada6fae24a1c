//! `[metrics]`: the Prometheus textfile operations record results in, for
//! node_exporter's textfile collector (and the agent's `/metrics`).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[metrics]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    textfile: Spanned<String>,
}

/// The Prometheus textfile that operations record their results in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// For node_exporter's textfile collector.
    pub textfile: PathBuf,
}

impl Cx<'_> {
    /// Validates `[metrics]`: the textfile's path.
    pub(super) fn metrics(&self, m: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
        Ok(MetricsConfig {
            textfile: self.path(&m.textfile, "metrics.textfile")?,
        })
    }
}
