//! The container engine: the Docker API, spoken through `bollard`, for the
//! stack as it really runs — every service in a container on a bridge
//! network, nothing published but Traefik's ports.
//!
//! kompose-dr never runs or parses the `docker` CLI. It asks the engine
//! (`[docker] host`, else `DOCKER_HOST`, else the local socket) to inspect
//! a container by name, to run a process inside it with its stdin and
//! stdout attached ([`Engine::exec`]), to stop and start it, to read and
//! write files in it as tar ([`Engine::download`], [`Engine::upload`]), and
//! to run throw-away scratch containers ([`scratch`]).
//!
//! Access to the engine is root-equivalent on the host: whoever may talk to
//! it can start a privileged container. The systemd units grant it on
//! purpose (README, "Security").

pub mod clone;
mod exec;
mod network;
pub mod scratch;
mod sidecar;
mod volume;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::{Class, Classify};

pub use exec::{ExecSpec, ExecStream, bridge_command, bridge_said};

/// The engine's address when neither `[docker] host` nor `DOCKER_HOST`
/// names one.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long a control call (inspect, list, start) may take before the
/// engine counts as unresponsive. Streams (exec output, archives) are not
/// bounded by it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine address is not one kompose-dr can use.
    #[error(
        "container engine address `{0}` is not usable: write unix:///var/run/docker.sock \
         (a socket) or tcp://HOST:2375 in [docker] host or DOCKER_HOST"
    )]
    BadEndpoint(String),
    /// Nothing answered at the engine's address.
    #[error(
        "cannot reach the container engine at {endpoint}: {detail}; is dockerd running and may \
         this user use it? ([docker] host or DOCKER_HOST say where it listens)"
    )]
    Unreachable {
        /// The engine's address.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// No container has this name.
    #[error("{}", no_such_container(.name, .close))]
    NoSuchContainer {
        /// The configured name.
        name: String,
        /// Names of existing containers close to it.
        close: Vec<String>,
    },
    /// The container exists but is not running.
    #[error(
        "container `{name}` is {state}, not running: start it (docker start {name}) and run this again"
    )]
    NotRunning {
        /// The container's name.
        name: String,
        /// Its state as the engine says (`exited`, `paused`, …).
        state: String,
    },
    /// The engine answered a request with an error.
    #[error("container engine: {doing}: {detail}")]
    Api {
        /// What was asked, naming the container.
        doing: String,
        /// The engine's message.
        detail: String,
    },
}

fn no_such_container(name: &str, close: &[String]) -> String {
    let mut s = format!("no container named `{name}` on the container engine");
    match close {
        [] => s.push_str(": check the name with `docker ps -a`"),
        [one] => s.push_str(&format!(": did you mean `{one}`?")),
        many => s.push_str(&format!(
            ": did you mean one of {}?",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    s
}

impl Classify for EngineError {
    /// A wrong name or address is the configuration's fault (exit 2); an
    /// engine that is down or refuses is a failure of the run.
    fn class(&self) -> Class {
        match self {
            EngineError::BadEndpoint(_) | EngineError::NoSuchContainer { .. } => Class::Usage,
            _ => Class::Failure,
        }
    }
}

impl EngineError {
    fn api(doing: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> EngineError {
        let doing = doing.into();
        move |e| EngineError::Api {
            doing,
            detail: api_detail(&e),
        }
    }
}

/// The engine's own message for an error it answered, else the error.
fn api_detail(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A client of one container engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The engine address to use: the configured one, else `DOCKER_HOST`,
/// else [`DEFAULT_HOST`].
pub fn endpoint(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

impl Engine {
    /// A client for the engine at `configured` (`[docker] host`), else
    /// `DOCKER_HOST`, else the local socket. Nothing is sent yet.
    pub fn connect(configured: Option<&str>) -> Result<Engine, EngineError> {
        let endpoint = endpoint(configured);
        // Requests that stream a body (an upload of a whole Redis data
        // directory) count against bollard's timeout until the engine
        // answers: give them an hour, and bound control calls ourselves.
        let timeout = 3600;
        let docker = if let Some(path) = endpoint.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(EngineError::BadEndpoint(endpoint));
            }
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            Docker::connect_with_http(&endpoint, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(EngineError::BadEndpoint(endpoint));
        }
        .map_err(|e| EngineError::Unreachable {
            endpoint: endpoint.clone(),
            detail: e.to_string(),
        })?;
        Ok(Engine { docker, endpoint })
    }

    /// The engine's address, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Bounds a control call and turns a transport failure into
    /// [`EngineError::Unreachable`].
    async fn control<T>(
        &self,
        doing: &str,
        call: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(CONTROL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(doing, e)),
            Err(_) => Err(self.silent(doing)),
        }
    }

    /// An error the engine answered, or a transport failure (the engine is
    /// not there).
    fn failed(&self, doing: &str, e: bollard::errors::Error) -> EngineError {
        match e {
            e @ bollard::errors::Error::DockerResponseServerError { .. } => {
                EngineError::api(doing)(e)
            }
            e => EngineError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: e.to_string(),
            },
        }
    }

    /// The engine did not answer in time.
    fn silent(&self, doing: &str) -> EngineError {
        EngineError::Unreachable {
            endpoint: self.endpoint.clone(),
            detail: format!("no answer within {}s to {doing}", CONTROL_TIMEOUT.as_secs()),
        }
    }

    /// The engine's version (`20.10.24`), proving it answers.
    pub async fn version(&self) -> Result<String, EngineError> {
        let v = self
            .control("asking its version", self.docker.version())
            .await?;
        Ok(v.version.unwrap_or_else(|| "unknown".into()))
    }

    /// The container named `name` (or with this id), running or not. An
    /// unknown name is [`EngineError::NoSuchContainer`] naming the
    /// containers with similar names.
    pub async fn inspect(&self, name: &str) -> Result<ContainerInfo, EngineError> {
        let call = self.docker.inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        );
        let r = match tokio::time::timeout(CONTROL_TIMEOUT, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if is_not_found(&e) => {
                let close = self.close_matches(name).await.unwrap_or_default();
                return Err(EngineError::NoSuchContainer {
                    name: name.to_owned(),
                    close,
                });
            }
            Ok(Err(e)) => return Err(self.failed(&format!("inspecting container `{name}`"), e)),
            Err(_) => return Err(self.silent(&format!("inspecting container `{name}`"))),
        };
        Ok(ContainerInfo::from_inspect(name, r))
    }

    /// The container named `name`, which must be running.
    pub async fn running(&self, name: &str) -> Result<ContainerInfo, EngineError> {
        let c = self.inspect(name).await?;
        if !c.running {
            return Err(EngineError::NotRunning {
                name: c.name,
                state: c.state,
            });
        }
        Ok(c)
    }

    /// Every container, running or not; only those carrying `label` if given.
    async fn list(
        &self,
        label: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: label.map(|l| HashMap::from([("label".to_owned(), vec![l.to_owned()])])),
            ..Default::default()
        };
        self.control(
            "listing containers",
            self.docker.list_containers(Some(opts)),
        )
        .await
    }

    /// Names of every container, running or not.
    pub async fn names(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .list(None)
            .await?
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect())
    }

    /// Existing container names close to `name`: the same but for `_`/`-`
    /// and case, a prefix or suffix of it, or at most two edits away.
    pub async fn close_matches(&self, name: &str) -> Result<Vec<String>, EngineError> {
        Ok(close_matches(name, &self.names().await?))
    }

    /// Runs a call that changes a container's state within `limit`; the
    /// statuses in `fine` (304 not modified, 404 gone) count as done.
    async fn change(
        &self,
        doing: &str,
        limit: Duration,
        fine: &[u16],
        call: impl std::future::Future<Output = Result<(), bollard::errors::Error>>,
    ) -> Result<(), EngineError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code, .. }))
                if fine.contains(&status_code) =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(self.failed(doing, e)),
            Err(_) => Err(self.silent(doing)),
        }
    }

    /// Stops the container, giving it `grace` to shut down cleanly.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::StopContainerOptions {
            t: Some(grace.as_secs().min(i32::MAX as u64) as i32),
            ..Default::default()
        };
        let call = self.docker.stop_container(name, Some(opts));
        let doing = format!("stopping container `{name}`");
        self.change(&doing, grace + CONTROL_TIMEOUT, &[304], call)
            .await
    }

    /// Starts the (stopped) container.
    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        let call = self.docker.start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        );
        let doing = format!("starting container `{name}`");
        self.change(&doing, CONTROL_TIMEOUT, &[304], call).await
    }

    /// Pauses the (running) container: its processes are frozen.
    pub async fn pause(&self, name: &str) -> Result<(), EngineError> {
        let call = self.docker.pause_container(name);
        let doing = format!("pausing container `{name}`");
        self.change(&doing, CONTROL_TIMEOUT, &[], call).await
    }

    /// Unpauses the (paused) container.
    pub async fn unpause(&self, name: &str) -> Result<(), EngineError> {
        let call = self.docker.unpause_container(name);
        let doing = format!("unpausing container `{name}`");
        self.change(&doing, CONTROL_TIMEOUT, &[], call).await
    }

    /// The containers, running or not, that mount the named volume.
    pub async fn using_volume(&self, volume: &str) -> Result<Vec<ContainerInfo>, EngineError> {
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "volume".to_owned(),
                vec![volume.to_owned()],
            )])),
            ..Default::default()
        };
        let list = self
            .control(
                "listing containers",
                self.docker.list_containers(Some(opts)),
            )
            .await?;
        let mut out = Vec::new();
        for c in list {
            if let Some(id) = c.id {
                out.push(self.inspect(&id).await?);
            }
        }
        Ok(out)
    }

    /// Whether the named volume exists.
    pub async fn volume_exists(&self, volume: &str) -> Result<bool, EngineError> {
        let doing = format!("inspecting volume `{volume}`");
        match tokio::time::timeout(CONTROL_TIMEOUT, self.docker.inspect_volume(volume)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if is_not_found(&e) => Ok(false),
            Ok(Err(e)) => Err(self.failed(&doing, e)),
            Err(_) => Err(self.silent(&doing)),
        }
    }

    /// Creates the named volume (local driver; an existing one is left as
    /// it is).
    pub async fn create_volume(&self, volume: &str) -> Result<(), EngineError> {
        let req = bollard::models::VolumeCreateRequest {
            name: Some(volume.to_owned()),
            ..Default::default()
        };
        self.control(
            &format!("creating volume `{volume}`"),
            self.docker.create_volume(req),
        )
        .await
        .map(drop)
    }

    /// The image of any container on the engine (the first listed), for
    /// a helper that is created but never started.
    pub async fn any_image(&self) -> Result<Option<String>, EngineError> {
        Ok(self
            .list(None)
            .await?
            .into_iter()
            .find_map(|c| c.image_id.filter(|i| !i.is_empty())))
    }

    /// Removes the container and its anonymous volumes, running or not.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let call = self.docker.remove_container(id, Some(opts));
        let doing = format!("removing container `{id}`");
        self.change(&doing, CONTROL_TIMEOUT, &[404], call).await
    }

    /// The last `lines` lines of the container's output, joined with ` | `
    /// (for saying why a scratch server did not start); empty if the
    /// engine cannot say.
    pub async fn log_tail(&self, name: &str, lines: usize) -> String {
        let opts = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let collect = self
            .docker
            .logs(name, Some(opts))
            .filter_map(|r| async move { r.ok() })
            .map(|l| {
                String::from_utf8_lossy(&l.into_bytes())
                    .trim_end()
                    .to_owned()
            })
            .collect::<Vec<_>>();
        match tokio::time::timeout(Duration::from_secs(5), collect).await {
            Ok(v) => v.join(" | "),
            Err(_) => String::new(),
        }
    }

    /// `path` inside the container as a tar stream (the engine's archive
    /// API: works on stopped containers and on data the host cannot read).
    pub fn download(
        &self,
        name: &str,
        path: &str,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let what = format!("reading {path} from container `{name}`");
        self.docker
            .download_from_container(name, Some(opts))
            .map(move |r| {
                r.map_err(|e| std::io::Error::other(format!("{what}: {}", api_detail(&e))))
            })
    }

    /// Unpacks the tar stream `tar` into directory `dir` of the container
    /// (running or stopped), keeping the owners recorded in the tar.
    pub async fn upload<S>(&self, name: &str, dir: &str, tar: S) -> Result<(), EngineError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let opts = bollard::query_parameters::UploadToContainerOptions {
            path: dir.to_owned(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(name, Some(opts), bollard::body_try_stream(tar))
            .await
            .map_err(EngineError::api(format!(
                "writing into {dir} of container `{name}`"
            )))
    }

    /// The bollard client, for the modules beside this one.
    fn docker(&self) -> &Docker {
        &self.docker
    }
}

/// A tar archive built by `build` on a blocking thread, as the stream
/// [`Engine::upload`] takes; a failed build ends the stream with its error.
pub fn tar_stream<F>(build: F) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(&mut tar::Builder<TarSink>) -> std::io::Result<()> + Send + 'static,
{
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let rt = tokio::runtime::Handle::current();
    let built = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut b = tar::Builder::new(tokio_util::io::SyncIoBridge::new_with_handle(writer, rt));
        build(&mut b)?;
        b.finish()?;
        b.into_inner()?.shutdown()
    });
    let mut built = Some(built);
    tokio_util::io::ReaderStream::new(reader).chain(futures::stream::once(async move {
        match built.take() {
            Some(b) => match b.await {
                Ok(Ok(())) => Ok(Bytes::new()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            },
            None => Ok(Bytes::new()),
        }
    }))
}

/// Where [`tar_stream`]'s builder writes.
pub type TarSink = tokio_util::io::SyncIoBridge<tokio::io::DuplexStream>;

/// What kompose-dr needs to know of a container.
#[derive(Clone)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its name, without the engine's leading `/`.
    pub name: String,
    /// The image it was created from, as named (`postgres:16-alpine`).
    pub image: String,
    /// The image's id (`sha256:…`).
    pub image_id: String,
    /// `running`, `exited`, `paused`, …
    pub state: String,
    /// Whether it runs now.
    pub running: bool,
    /// The user its processes run as (`""` for the image's default).
    pub user: String,
    /// Its addresses, per network.
    pub addresses: Vec<(String, IpAddr)>,
    /// Its mounts: destination inside, and the volume name or host path.
    pub mounts: Vec<MountInfo>,
    env: BTreeMap<String, String>,
}

impl std::fmt::Debug for ContainerInfo {
    /// The environment holds passwords: only its names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerInfo")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("state", &self.state)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where it is inside the container.
    pub destination: String,
    /// The volume's name, for a named volume.
    pub volume: Option<String>,
    /// The host path (a bind mount's source, a volume's directory).
    pub source: Option<String>,
}

impl ContainerInfo {
    fn from_inspect(asked: &str, r: bollard::models::ContainerInspectResponse) -> ContainerInfo {
        let state = r.state.as_ref();
        let config = r.config.as_ref();
        let env = config
            .and_then(|c| c.env.as_ref())
            .map(|env| {
                env.iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let addresses = r
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| {
                let mut v: Vec<(String, IpAddr)> = nets
                    .iter()
                    .filter_map(|(net, ep)| {
                        let ip = ep.ip_address.as_deref()?.parse().ok()?;
                        Some((net.clone(), ip))
                    })
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        let mounts = r
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(MountInfo {
                    destination: m.destination?,
                    volume: m.name,
                    source: m.source,
                })
            })
            .collect();
        ContainerInfo {
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| asked.to_owned()),
            image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
            image_id: r.image.unwrap_or_default(),
            state: state
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            running: state.and_then(|s| s.running).unwrap_or(false),
            user: config.and_then(|c| c.user.clone()).unwrap_or_default(),
            addresses,
            mounts,
            env,
        }
    }

    /// A variable of the container's environment (`POSTGRES_USER`).
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The first address the container has on any network.
    pub fn address(&self) -> Option<IpAddr> {
        self.addresses.first().map(|(_, ip)| *ip)
    }
}

/// Names in `names` close to `name`: equal but for `_`/`-` and case, one a
/// prefix or suffix of the other at a `-`/`_`, or at most two edits apart.
pub fn close_matches(name: &str, names: &[String]) -> Vec<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let want = norm(name);
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() != name)
        .filter(|n| {
            let have = norm(n);
            have == want
                || (want.len() >= 4
                    && (have.starts_with(&format!("{want}-"))
                        || have.ends_with(&format!("-{want}"))
                        || want.starts_with(&format!("{have}-"))
                        || want.ends_with(&format!("-{have}"))))
                || edit_distance(&have, &want) <= 2.min(want.len() / 3)
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn underscore_and_dash_spellings_are_close() {
        let all = names(&["core-postgres", "core-redis", "proxy_app", "link_app"]);
        assert_eq!(close_matches("core_postgres", &all), ["core-postgres"]);
        assert_eq!(close_matches("core-postgre", &all), ["core-postgres"]);
        assert_eq!(close_matches("proxy-app", &all), ["proxy_app"]);
        assert!(close_matches("grafana", &all).is_empty());
    }

    #[test]
    fn a_prefixed_name_is_close() {
        let all = names(&["kompose-core-postgres-1", "core-mqtt"]);
        assert_eq!(
            close_matches("core-postgres-1", &all),
            ["kompose-core-postgres-1"]
        );
    }

    #[test]
    fn the_message_names_the_close_match() {
        let e = EngineError::NoSuchContainer {
            name: "core_postgres".into(),
            close: vec!["core-postgres".into()],
        };
        assert!(
            e.to_string().contains("did you mean `core-postgres`?"),
            "{e}"
        );
        assert_eq!(e.class(), Class::Usage);
    }

    #[test]
    fn endpoints_must_be_a_socket_or_tcp() {
        assert!(matches!(
            Engine::connect(Some("ssh://host")),
            Err(EngineError::BadEndpoint(_))
        ));
        // A socket that is not there is unreachable, not a bad address.
        assert!(matches!(
            Engine::connect(Some("unix:///nonexistent/docker.sock")),
            Err(EngineError::Unreachable { .. })
        ));
        assert!(Engine::connect(Some("tcp://127.0.0.1:2375")).is_ok());
    }
}
