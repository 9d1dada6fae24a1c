//! A client container beside a server that runs in a container: made from
//! the server container's own image (so its client programs match the
//! server), in the server's network namespace (`container:<id>`: the
//! server is on its loopback, no published port needed), with one host
//! directory bind-mounted read-only at the same path, running as this
//! process's uid:gid. A restore runs `pg_restore --jobs` in it on the
//! verified spool, which pg_restore inside the server's container cannot
//! read.
//!
//! It only keeps alive; programs are exec'd in it through
//! [`Launch::Container`], with the password in the exec's environment
//! only (never in the container's configuration, what `docker inspect`
//! shows). It is a labelled scratch container: removed when its guard
//! drops, and one left by a killed process is swept by the next scratch
//! user ([`Engine::sweep`]).

use std::path::Path;

use crate::clients::launch::Launch;
use crate::engine::scratch::{ScratchContainer, ScratchSpec};
use crate::engine::{Engine, EngineError, ExecSpec};
use crate::model::config::{ContainerRef, PostgresConfig};

/// The container's main process: it only keeps the container alive.
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// A running client container; removed when dropped.
pub struct Beside {
    /// Where programs are exec'd.
    target: ContainerRef,
    /// The container; its guard removes it.
    _container: ScratchContainer,
}

/// Why no client container could be used; the caller goes another way.
#[derive(Debug, thiserror::Error)]
pub enum BesideError {
    /// The server is not in a container on an engine of this host, or
    /// the directory cannot be bind-mounted.
    #[error("{0}")]
    Unsuitable(String),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The container cannot see the directory or reach the server.
    #[error("{0}")]
    Unreachable(String),
}

/// `path` as the engine takes it in a bind (`SRC:DST`): UTF-8, without
/// `:` or `,`.
fn bind_path(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| !s.contains([':', ',']))
}

/// Whether the engine runs on this host (a unix socket): only then is a
/// host directory what a bind mount shows.
fn engine_is_local(container: &ContainerRef) -> bool {
    crate::engine::endpoint(container.engine.as_deref()).starts_with("unix://")
}

/// Starts a client container beside `cfg`'s server with `dir` mounted
/// read-only, and checks that it sees `probe` (a file in `dir`) and
/// that `psql` in it logs in to the server.
pub async fn start(
    cfg: &PostgresConfig,
    image: Option<&str>,
    dir: &Path,
    probe: &Path,
) -> Result<Beside, BesideError> {
    let server = cfg
        .container
        .as_ref()
        .filter(|c| engine_is_local(c))
        .ok_or_else(|| {
            BesideError::Unsuitable("the server is not in a container of this host's engine".into())
        })?;
    let mount = bind_path(dir).ok_or_else(|| {
        BesideError::Unsuitable(format!("{} cannot be bind-mounted", dir.display()))
    })?;
    let engine = Engine::connect(server.engine.as_deref())?;
    // What a killed process left (its owner is gone) goes first.
    let _ = engine.sweep().await;
    let info = engine.running(&server.name).await?;
    let uid = nix::unistd::Uid::effective();
    let gid = nix::unistd::Gid::effective();
    let spec = ScratchSpec {
        image: image.map_or_else(|| info.image_id.clone(), str::to_owned),
        name: "kompose-dr-client".into(),
        entrypoint: Some(vec!["sh".into(), "-c".into(), KEEP_ALIVE.into()]),
        cmd: Some(Vec::new()),
        user: Some(format!("{uid}:{gid}")),
        host_dirs: vec![mount.to_owned()],
        network_mode: Some(format!("container:{}", info.id)),
        ..ScratchSpec::default()
    };
    let container = engine.run_scratch(spec).await?;
    let beside = Beside {
        target: ContainerRef {
            name: container.id.clone(),
            engine: server.engine.clone(),
        },
        _container: container,
    };
    beside.check(&engine, cfg, probe).await?;
    Ok(beside)
}

impl Beside {
    /// Fails unless the container sees `probe` (a host directory the
    /// engine cannot see, under systemd's PrivateTmp, shows up empty) and
    /// psql logs in to the server from it.
    async fn check(
        &self,
        engine: &Engine,
        cfg: &PostgresConfig,
        probe: &Path,
    ) -> Result<(), BesideError> {
        let seen = engine
            .output(
                &self.target.name,
                ExecSpec::new(["test", "-r", &probe.to_string_lossy()]),
            )
            .await;
        if seen.is_err() {
            return Err(BesideError::Unreachable(format!(
                "the engine does not show {} to a container (a private /tmp? set TMPDIR to a host directory)",
                probe.display()
            )));
        }
        let Launch::Container { spec, .. } = self.launch(cfg, "psql", &cfg.endpoint.maintenance_db)
        else {
            unreachable!("a client container runs programs in it")
        };
        engine
            .output(&self.target.name, spec.args(["-Atc", "SELECT 1"]))
            .await
            .map_err(|e| {
                BesideError::Unreachable(format!("psql beside the server cannot log in: {e}"))
            })?;
        Ok(())
    }

    /// `program` in the container, connecting to the server on the shared
    /// loopback as the configured user, to `database`.
    pub fn launch(&self, cfg: &PostgresConfig, program: &str, database: &str) -> Launch {
        let password = cfg
            .password
            .as_ref()
            .map(|pw| ("PGPASSWORD", pw.expose().to_owned()));
        on_loopback(&self.target, cfg, program, database, password)
    }
}

/// `program` exec'd in `target`, a container in the server's network
/// namespace, connecting to the server on the shared loopback as the
/// configured user, to `database`; `password` is the environment variable
/// (`PGPASSWORD` or `PGPASSFILE`) that gives the password, if any.
pub fn on_loopback(
    target: &ContainerRef,
    cfg: &PostgresConfig,
    program: &str,
    database: &str,
    password: Option<(&str, String)>,
) -> Launch {
    let mut spec = ExecSpec::new([program])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cfg.endpoint.port.to_string())
        .env("PGUSER", &cfg.endpoint.user)
        .env("PGDATABASE", database)
        .env("PGAPPNAME", "kompose-dr");
    if let Some((name, value)) = password {
        spec = spec.env(name, value);
    }
    Launch::Container {
        container: target.clone(),
        spec: spec.args(["--no-password"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_engine_and_a_plain_path_will_do() {
        let c = |engine: Option<&str>| ContainerRef {
            name: "core-postgres".into(),
            engine: engine.map(str::to_owned),
        };
        assert!(engine_is_local(&c(Some("unix:///run/docker.sock"))));
        assert!(!engine_is_local(&c(Some("tcp://10.0.0.2:2375"))));
        assert_eq!(bind_path(Path::new("/tmp/a")), Some("/tmp/a"));
        assert_eq!(bind_path(Path::new("/tmp/a:b")), None);
        assert_eq!(bind_path(Path::new("/tmp/a,b")), None);
    }
}
