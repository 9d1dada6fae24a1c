//! Clones of production containers for a stack drill: what a production
//! container runs (image, environment, command, entrypoint, user,
//! healthcheck, mounts, network aliases), a labelled container made from
//! it on a scratch network, its health as the engine reports it, and
//! [`ScratchObjects`], the guard that removes every container, network and
//! volume of a drill — containers first — when it drops.
//!
//! Production is only inspected: nothing here starts, stops or writes a
//! container, volume or network that is not labelled as scratch.

use std::collections::HashMap;
use std::time::Duration;

use super::{Engine, EngineError};

/// One mount of a production container, as the clone must remap it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A named volume.
    Volume {
        /// Its name.
        name: String,
        /// Where it is inside.
        destination: String,
        /// Mounted read-write.
        rw: bool,
    },
    /// A host path.
    Bind {
        /// The host path.
        source: String,
        /// Where it is inside.
        destination: String,
        /// Mounted read-write.
        rw: bool,
    },
}

/// What a production container runs: everything its clone needs.
#[derive(Clone)]
pub struct Production {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The image as named (`postgres:16-alpine`).
    pub image: String,
    /// The environment, `NAME=value` (holds passwords: never logged).
    pub env: Vec<String>,
    /// Its command.
    pub cmd: Option<Vec<String>>,
    /// Its entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Its user (`""` for the image's).
    pub user: String,
    /// Its working directory.
    pub working_dir: Option<String>,
    /// Its healthcheck, if it has one.
    pub healthcheck: Option<bollard::models::HealthConfig>,
    /// Its aliases on every network (its short id left out).
    pub aliases: Vec<String>,
    /// Its volumes and binds.
    pub mounts: Vec<Mount>,
}

impl std::fmt::Debug for Production {
    /// The environment holds passwords: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Production")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("aliases", &self.aliases)
            .field("mounts", &self.mounts)
            .finish()
    }
}

/// A clone to create: a production container's process, on a scratch
/// network, with its mounts already remapped.
#[derive(Clone)]
pub struct CloneSpec {
    /// The clone's name (register it in a [`ScratchObjects`] first).
    pub name: String,
    /// What it is cloned from.
    pub from: Production,
    /// The scratch network.
    pub network: String,
    /// Its aliases there.
    pub aliases: Vec<String>,
    /// Its mounts, `SOURCE:DEST[:ro]` (volumes by name, binds by path).
    pub binds: Vec<String>,
}

/// The state of a container as a health wait needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether it runs.
    pub running: bool,
    /// `healthy`, `unhealthy`, `starting`; `None` without a healthcheck.
    pub status: Option<String>,
    /// Its exit code once it stopped.
    pub exit_code: Option<i64>,
    /// What the last healthcheck printed, trimmed.
    pub last_check: Option<String>,
}

impl Engine {
    /// What the production container `name` runs; it is only inspected.
    pub async fn production(&self, name: &str) -> Result<Production, EngineError> {
        // The same lookup (and the same "did you mean" when missing).
        let id = self.inspect(name).await?.id;
        let doing = format!("inspecting container `{name}`");
        let r = self
            .control(
                &doing,
                self.docker().inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                ),
            )
            .await?;
        let config = r.config.unwrap_or_default();
        let short = id.get(..12).unwrap_or(&id).to_owned();
        let mut aliases: Vec<String> = r
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_values()
            .flat_map(|ep| ep.aliases.unwrap_or_default())
            .filter(|a| *a != short && *a != id)
            .collect();
        aliases.sort();
        aliases.dedup();
        let mounts = r
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let destination = m.destination?;
                let rw = m.rw.unwrap_or(true);
                match m.typ.as_deref() {
                    Some("volume") => Some(Mount::Volume {
                        name: m.name?,
                        destination,
                        rw,
                    }),
                    Some("bind") => Some(Mount::Bind {
                        source: m.source?,
                        destination,
                        rw,
                    }),
                    _ => None,
                }
            })
            .collect();
        Ok(Production {
            name: r
                .name
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| name.to_owned()),
            id,
            image: config.image.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            user: config.user.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            healthcheck: config.healthcheck,
            aliases,
            mounts,
        })
    }

    /// Creates and starts a clone: labelled, on the scratch network only,
    /// with its aliases, never restarted, nothing published; the
    /// production labels (a proxy's routing rules) are not copied.
    pub async fn run_clone(&self, spec: &CloneSpec) -> Result<(), EngineError> {
        let host_config = bollard::models::HostConfig {
            network_mode: Some(spec.network.clone()),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            auto_remove: Some(false),
            ..Default::default()
        };
        let endpoint = bollard::models::EndpointSettings {
            aliases: Some(spec.aliases.clone()),
            ..Default::default()
        };
        let p = &spec.from;
        let body = bollard::models::ContainerCreateBody {
            image: Some(p.image.clone()),
            env: Some(p.env.clone()),
            cmd: p.cmd.clone(),
            entrypoint: p.entrypoint.clone(),
            user: (!p.user.is_empty()).then(|| p.user.clone()),
            working_dir: p.working_dir.clone(),
            healthcheck: p.healthcheck.clone(),
            labels: Some(super::network::labels()),
            host_config: Some(host_config),
            networking_config: Some(bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let doing = format!("creating the clone `{}` of `{}`", spec.name, p.name);
        self.control(&doing, self.docker().create_container(Some(opts), body))
            .await?;
        self.start(&spec.name).await
    }

    /// Whether the container runs and what its healthcheck says.
    pub async fn health(&self, name: &str) -> Result<Health, EngineError> {
        let doing = format!("inspecting container `{name}`");
        let r = self
            .control(
                &doing,
                self.docker().inspect_container(
                    name,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                ),
            )
            .await?;
        let state = r.state.unwrap_or_default();
        let last_check = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|l| l.last())
            .and_then(|r| r.output.as_deref())
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty());
        Ok(Health {
            last_check,
            running: state.running.unwrap_or(false),
            status: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            exit_code: state.exit_code,
        })
    }
}

/// Every scratch object of one drill, removed when this drops — on
/// success, failure, panic and cancellation (SIGTERM drops the drill's
/// future): containers first, then networks, then volumes. Names are
/// registered before the engine is asked to create them, so an object
/// whose creation was interrupted is removed too (by name; a name the
/// engine never created counts as removed).
pub struct ScratchObjects {
    engine: Engine,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl ScratchObjects {
    /// An empty set on `engine`.
    pub fn new(engine: Engine) -> ScratchObjects {
        ScratchObjects {
            engine,
            containers: Vec::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// A fresh name `PREFIX-XXXXXXXX`.
    pub fn name(prefix: &str) -> String {
        format!("{prefix}-{:08x}", rand::random::<u32>())
    }

    /// Registers and creates an internal network.
    pub async fn network(&mut self, name: &str) -> Result<(), EngineError> {
        self.networks.push(name.to_owned());
        self.engine.create_internal_network(name).await
    }

    /// Registers and creates an empty volume.
    pub async fn volume(&mut self, name: &str) -> Result<(), EngineError> {
        self.volumes.push(name.to_owned());
        self.engine.create_scratch_volume(name).await
    }

    /// Registers, creates and starts a clone.
    pub async fn clone_container(&mut self, spec: &CloneSpec) -> Result<(), EngineError> {
        self.containers.push(spec.name.clone());
        self.engine.run_clone(spec).await
    }

    /// Removes everything now; what cannot be removed is logged (the next
    /// run's sweep removes it).
    async fn remove_all(
        engine: &Engine,
        containers: &[String],
        networks: &[String],
        volumes: &[String],
    ) {
        for c in containers {
            // A create interrupted mid-request may land a moment later.
            for attempt in 0..3 {
                if let Err(e) = engine.remove(c).await {
                    tracing::warn!(container = %c, error = %e, "cannot remove a drill container; the next run removes it");
                }
                if attempt < 2 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        for n in networks {
            if let Err(e) = engine.remove_network(n).await {
                tracing::warn!(network = %n, error = %e, "cannot remove a drill network; the next run removes it");
            }
        }
        for v in volumes {
            if let Err(e) = engine.remove_volume(v).await {
                tracing::warn!(volume = %v, error = %e, "cannot remove a drill volume; the next run removes it");
            }
        }
    }
}

impl Drop for ScratchObjects {
    /// Removes everything before returning, even while the runtime shuts
    /// down: on a thread of its own with its own client.
    fn drop(&mut self) {
        if self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty() {
            return;
        }
        let endpoint = self.engine.endpoint().to_owned();
        let (c, n, v) = (
            std::mem::take(&mut self.containers),
            std::mem::take(&mut self.networks),
            std::mem::take(&mut self.volumes),
        );
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(engine) = Engine::connect(Some(&endpoint)) {
                    ScratchObjects::remove_all(&engine, &c, &n, &v).await;
                }
            });
        });
        let _ = done.join();
    }
}
