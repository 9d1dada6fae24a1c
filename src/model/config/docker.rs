//! `[docker]`: the container engine, and the container names the sources
//! and the broker may be reached through (docs/DESIGN.md §9).
//!
//! A `container = "core-postgres"` key under `[postgres]`, `[redis]` or
//! `[mqtt]` becomes a [`ContainerRef`]: the name, and the engine it lives
//! on (`[docker] host`, else `DOCKER_HOST`, else the local socket — chosen
//! when the engine is first asked, not here).

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[docker]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    host: Option<Spanned<String>>,
}

/// The container engine (`[docker]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine's address (`unix:///var/run/docker.sock`,
    /// `tcp://127.0.0.1:2375`); `None`: `DOCKER_HOST`, else the local
    /// socket.
    pub host: Option<String>,
}

/// A container named in the configuration, on the configured engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The container's name (`core-postgres`).
    pub name: String,
    /// The engine's address from `[docker] host`, if set.
    pub engine: Option<String>,
}

impl Cx<'_> {
    /// Validates `[docker]`: `host` must be a `unix://` socket path or a
    /// `tcp://` address.
    pub(super) fn docker(&self, raw: Option<&RawDocker>) -> Result<DockerConfig, ConfigError> {
        let Some(h) = raw.and_then(|d| d.host.as_ref()) else {
            return Ok(DockerConfig::default());
        };
        let v = self.string(h, "docker.host")?;
        let ok = v
            .strip_prefix("unix://")
            .is_some_and(|p| p.starts_with('/'))
            || v.strip_prefix("tcp://").is_some_and(|a| !a.is_empty());
        if !ok {
            return Err(self.err(
                h.span(),
                "docker.host",
                format!(
                    "`{v}` is not an engine address: write unix:///var/run/docker.sock or tcp://HOST:2375"
                ),
            ));
        }
        Ok(DockerConfig { host: Some(v) })
    }

    /// A `container` key of section `section`: a name the engine could
    /// have (letters, digits, `_.-`, not starting with `-` or `.`).
    pub(super) fn container(
        &self,
        c: &Spanned<String>,
        key: &str,
        docker: &DockerConfig,
    ) -> Result<ContainerRef, ConfigError> {
        let s = self.string(c, key)?;
        let valid = !s.is_empty()
            && s.len() <= 255
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(self.err(
                c.span(),
                key,
                format!(
                    "`{s}` is not a container name: write the name `docker ps` shows, like core-postgres"
                ),
            ));
        }
        Ok(ContainerRef {
            name: s,
            engine: docker.host.clone(),
        })
    }
}
