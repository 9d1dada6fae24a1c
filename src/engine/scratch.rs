//! Throw-away containers: created with a label naming kompose-dr and the
//! process that made them, no network, data on tmpfs; removed when their
//! guard drops — on success, failure, panic and cancellation — and swept
//! at the next start if this process was killed before it could.

use std::collections::HashMap;

use super::{Engine, EngineError};

/// The label every scratch container carries.
pub const LABEL: &str = "io.kompose-dr.scratch";
/// The label naming the host and process that made it: `HOST/PID`.
pub const OWNER_LABEL: &str = "io.kompose-dr.owner";

/// What to run.
#[derive(Clone, Default)]
pub struct ScratchSpec {
    /// The image.
    pub image: String,
    /// A name prefix (`kompose-dr-scratch-postgres`); a random suffix follows.
    pub name: String,
    /// The command, if not the image's default.
    pub cmd: Option<Vec<String>>,
    /// Environment (may hold the scratch server's password).
    pub env: Vec<(String, String)>,
    /// tmpfs mounts: path inside → mount options (`mode=1777,size=…`).
    pub tmpfs: Vec<(String, String)>,
    /// The user the main process runs as; default the image's.
    pub user: Option<String>,
    /// The entrypoint, if not the image's.
    pub entrypoint: Option<Vec<String>>,
    /// Containers whose volumes it mounts at the same places
    /// (`--volumes-from`).
    pub volumes_from: Vec<String>,
    /// Volumes or paths mounted (`vault_data:/kdr-volume:ro`).
    pub binds: Vec<String>,
    /// Host directories mounted read-only at the same path. Unlike a path
    /// in `binds`, one the engine does not see is refused, never created
    /// empty on the engine's side (a `$TMPDIR` under systemd's
    /// `PrivateTmp`).
    pub host_dirs: Vec<String>,
    /// The network mode: `none` (no network) when not set;
    /// `container:<id>` shares that container's network namespace (a
    /// sidecar reaching the server on its loopback).
    pub network_mode: Option<String>,
    /// The label saying what it is, in place of [`LABEL`]: a container
    /// with its own label (the WAL archiver's sidecar) is not scratch, and
    /// [`Engine::sweep`] leaves it to its own sweep.
    pub label: Option<(String, String)>,
}

/// A scratch container; removed (with its tmpfs) when dropped.
pub struct ScratchContainer {
    engine: Engine,
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether it is ours to remove: not while the engine refused to create
    /// it.
    armed: bool,
    /// Whether the create request was sent but not answered (this future
    /// was dropped meanwhile): the engine may still be creating it, so the
    /// removal by name is repeated for a moment.
    pending: bool,
}

fn owner() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{host}/{}", std::process::id())
}

impl Engine {
    /// Creates and starts a scratch container: `--network none` (unless the
    /// spec says otherwise), labelled, never restarted.
    pub async fn run_scratch(&self, spec: ScratchSpec) -> Result<ScratchContainer, EngineError> {
        let guard = self.create_scratch(spec).await?;
        self.start(&guard.id).await?;
        Ok(guard)
    }

    /// Creates a scratch container without starting it (its volumes can be
    /// read and written through the archive API): labelled like the
    /// others, removed when the guard drops, swept if left behind.
    pub async fn create_scratch(&self, spec: ScratchSpec) -> Result<ScratchContainer, EngineError> {
        let name = format!("{}-{:08x}", spec.name, rand::random::<u32>());
        let network_mode = spec.network_mode.clone().unwrap_or_else(|| "none".into());
        let network_disabled = network_mode == "none";
        let (kind, value) = spec
            .label
            .clone()
            .unwrap_or_else(|| (LABEL.to_owned(), "1".to_owned()));
        let host_config = bollard::models::HostConfig {
            network_mode: Some(network_mode),
            tmpfs: Some(spec.tmpfs.iter().cloned().collect::<HashMap<_, _>>()),
            auto_remove: Some(false),
            volumes_from: (!spec.volumes_from.is_empty()).then(|| spec.volumes_from.clone()),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            mounts: (!spec.host_dirs.is_empty()).then(|| {
                spec.host_dirs
                    .iter()
                    .map(|dir| bollard::models::Mount {
                        target: Some(dir.clone()),
                        source: Some(dir.clone()),
                        typ: Some(bollard::models::MountType::BIND),
                        read_only: Some(true),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let body = bollard::models::ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: spec.user.clone(),
            labels: Some(HashMap::from([
                (kind, value),
                (OWNER_LABEL.to_owned(), owner()),
            ])),
            network_disabled: Some(network_disabled),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let doing = format!("creating a scratch container from image `{}`", spec.image);
        // Armed before the request: a signal that drops this future while
        // the engine creates the container still removes it (by name).
        let mut guard = ScratchContainer {
            engine: self.clone(),
            id: name.clone(),
            name,
            armed: true,
            pending: true,
        };
        let created = match self
            .control(&doing, self.docker().create_container(Some(opts), body))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                guard.armed = false;
                return Err(e);
            }
        };
        guard.id = created.id;
        guard.pending = false;
        Ok(guard)
    }

    /// Removes scratch containers left by kompose-dr processes of this host
    /// that no longer run (killed before they could clean up). Containers
    /// of a process still running, or of another host, stay. Returns how
    /// many went.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let list = self.list(Some(LABEL)).await?;
        let mut removed = 0;
        for c in list {
            let owner = c
                .labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL))
                .cloned()
                .unwrap_or_default();
            if !super::network::owner_is_gone(&owner, c.created) {
                continue;
            }
            if let Some(id) = c.id {
                tracing::info!(container = %id, owner = %owner, "removing a leftover scratch container");
                self.remove(&id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl ScratchContainer {
    /// The engine it runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for ScratchContainer {
    /// Removes the container before returning, even while the runtime
    /// shuts down (Ctrl-C): on a thread of its own with its own client.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let endpoint = self.engine.endpoint().to_owned();
        let id = self.id.clone();
        let tries = if self.pending { 10 } else { 1 };
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async {
                let Ok(engine) = Engine::connect(Some(&endpoint)) else {
                    return;
                };
                for attempt in 1..=tries {
                    if let Err(e) = engine.remove(&id).await {
                        tracing::warn!(container = %id, error = %e, "cannot remove a scratch container; the next run removes it");
                        return;
                    }
                    if attempt < tries {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            });
        });
        let _ = done.join();
    }
}
