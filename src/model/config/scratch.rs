//! `[scratch]`: how the throw-away servers that verify and drills restore
//! into are run.
//!
//! `process` runs local server binaries; `docker` runs throw-away
//! containers from the production container's own image (or `image`), with
//! no network and data on tmpfs (docs/DESIGN.md §9).

use serde::Deserialize;
use toml::Spanned;

use super::docker::DockerConfig;
use super::{ConfigError, Cx};

/// `[scratch]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScratch {
    runtime: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    postgres_bin: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    redis_image: Option<Spanned<String>>,
}

/// Where scratch servers run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ScratchRuntimeKind {
    /// Local server binaries, as the scratch user.
    #[default]
    Process,
    /// Throw-away containers on the engine.
    Docker,
}

/// How scratch instances for verify and drills run (`[scratch]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchConfig {
    /// The user scratch servers run as when kompose-dr runs as root.
    pub user: String,
    /// Where PostgreSQL server binaries live: `{major}` is replaced
    /// (default `/usr/lib/postgresql/{major}/bin`).
    pub postgres_bin: String,
    /// `process` or `docker` (`scratch.runtime`).
    pub runtime: ScratchRuntimeKind,
    /// The scratch PostgreSQL image (`scratch.image`); default: the image
    /// of `[postgres] container`.
    pub image: Option<String>,
    /// The scratch Redis image (`scratch.redis_image`); default: the image
    /// of `[redis] container`.
    pub redis_image: Option<String>,
    /// The engine's address from `[docker] host`, if set.
    pub engine: Option<String>,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            user: "postgres".into(),
            postgres_bin: "/usr/lib/postgresql/{major}/bin".into(),
            runtime: ScratchRuntimeKind::Process,
            image: None,
            redis_image: None,
            engine: None,
        }
    }
}

impl Cx<'_> {
    /// Validates `[scratch]`; the defaults when the section is absent.
    pub(super) fn scratch(
        &self,
        raw: Option<&RawScratch>,
        docker: &DockerConfig,
    ) -> Result<ScratchConfig, ConfigError> {
        let mut scratch = ScratchConfig {
            engine: docker.host.clone(),
            ..ScratchConfig::default()
        };
        let Some(sc) = raw else {
            return Ok(scratch);
        };
        if let Some(r) = &sc.runtime {
            scratch.runtime = match self.string(r, "scratch.runtime")?.as_str() {
                "process" => ScratchRuntimeKind::Process,
                "docker" => ScratchRuntimeKind::Docker,
                v => {
                    return Err(self.err(
                        r.span(),
                        "scratch.runtime",
                        format!("runtime `{v}` is unknown: use \"process\" or \"docker\""),
                    ));
                }
            };
        }
        for (raw, key, slot) in [
            (&sc.image, "scratch.image", &mut scratch.image),
            (
                &sc.redis_image,
                "scratch.redis_image",
                &mut scratch.redis_image,
            ),
        ] {
            if let Some(i) = raw {
                let v = self.string(i, key)?;
                if v.is_empty() || v.starts_with('-') || v.chars().any(char::is_whitespace) {
                    return Err(self.err(i.span(), key, format!("`{v}` is not an image name")));
                }
                *slot = Some(v);
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
