//! Point-in-time recovery in a scratch container made from the production
//! image, for hosts with Docker and no PostgreSQL server binaries.
//!
//! The private host directory is filled exactly as for a local recovery
//! (the base backup unpacked into `data`, the WAL files into `wal`), then
//! given to the uid that owns the base backup's files (the production
//! server's, kept from the archive's headers). A scratch container (no
//! network, labelled, removed when dropped, swept after a kill -9) mounts
//! that directory — and a data directory kept elsewhere (`--to DIR`) — at
//! the same path, so every path of the recovery settings holds inside it,
//! and runs `postgres` as that uid with the same settings as a local
//! recovery, but listening on the container's own loopback with an access
//! file that admits `local` and `host 127.0.0.1/32` only. Its log is
//! written into the directory. Clients reach it through the engine, as any
//! docker scratch server: pg_dump of the recovered cluster runs inside the
//! container, never on the host.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DockerRuntime;
use crate::engine::scratch::{ScratchContainer, ScratchSpec};
use crate::engine::{Engine, ExecSpec};
use crate::model::config::{PgEndpoint, PostgresConfig};
use crate::scratch::ScratchError;
use crate::scratch::process::{
    RecoveryDir, RecoveryFiles, RecoveryRequest, chown_tree, log_tail, recovery_failed,
    recovery_log, recovery_settings,
};

/// The access rules of a recovery in a container: its socket and its own
/// loopback (the engine's bridge arrives there).
const CONTAINER_ONLY: &[u8] = b"local all all trust\nhost all all 127.0.0.1/32 trust\n";

/// What PostgreSQL logs last on a clean shutdown.
const SHUT_DOWN: &str = "database system is shut down";

/// What the container says when the engine does not see the directory.
const NOT_VISIBLE: &str = "is not visible to the container engine";

/// The container's command: checks that the engine sees the directory
/// (`$1`, the access file: a private /tmp, as systemd's `PrivateTmp=`
/// makes one, is not the engine's), then runs the server (`$3…`) with its
/// output appended to the log (`$2`).
const SCRIPT: &str = "if [ ! -f \"$1\" ]; then echo \"kompose-dr: $1 is not visible to the container engine\" >&2; exit 97; fi; \
    log=$2; shift 2; exec \"$@\" >>\"$log\" 2>&1";

impl DockerRuntime {
    /// A private directory for a recovery; it is given to the server's uid
    /// once filled.
    pub fn recovery_dir(&self) -> Result<RecoveryDir, ScratchError> {
        RecoveryDir::create(None)
    }

    /// Starts the production image's PostgreSQL on `request.data` (filled
    /// by the caller; `dir.data` unless another directory is named) in
    /// archive recovery, in a scratch container; waits until it is
    /// promoted, at most `request.limit`, or until `cancel`. Fails as
    /// [`ProcessRuntime::recover`](crate::scratch::process::ProcessRuntime::recover)
    /// does.
    pub async fn recover(
        &self,
        dir: RecoveryDir,
        request: RecoveryRequest<'_>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<DockerRecovered, ScratchError> {
        let keep = request.data.is_some();
        let data = request
            .data
            .map(Path::to_owned)
            .unwrap_or_else(|| dir.data.clone());
        // The engine mounts absolute paths only (`--to DIR` may be relative).
        let data = std::fs::canonicalize(&data)
            .map_err(ScratchError::io(format!("cannot find {}", data.display())))?;
        let owner = data_owner(&data)?;
        let files = RecoveryFiles::prepare(&dir, &data, CONTAINER_ONLY, Some(owner))?;
        chown_tree(dir.path(), owner).map_err(ScratchError::io(format!(
            "cannot give {} to uid {}",
            dir.path().display(),
            owner.0
        )))?;
        let mut command: Vec<String> = vec!["postgres".into(), "-D".into(), path(&data)];
        command.extend(["-p".into(), "5432".into()]);
        for (k, v) in recovery_settings(&files, &dir.wal, keep, request.target) {
            let v = if k == "listen_addresses" {
                "127.0.0.1".into()
            } else {
                v
            };
            command.extend(["-c".into(), format!("{k}={v}")]);
        }
        let mut binds = vec![same_path(dir.path())];
        if !data.starts_with(dir.path()) {
            binds.push(same_path(&data));
        }
        let engine = self.engine().await?;
        let image = self
            .image(
                &engine,
                &self.postgres_image,
                &self.postgres_container,
                "postgres",
                "image",
            )
            .await?;
        let mut entrypoint: Vec<String> = vec!["sh".into(), "-c".into(), SCRIPT.into()];
        entrypoint.extend(["sh".into(), path(&files.hba), path(&files.log)]);
        tracing::debug!(%image, uid = owner.0, "starting a recovery container");
        let container = engine
            .run_scratch(ScratchSpec {
                image,
                name: "kompose-dr-scratch-recovery".into(),
                entrypoint: Some(entrypoint),
                cmd: Some(command),
                user: Some(format!("{}:{}", owner.0, owner.1)),
                binds,
                ..ScratchSpec::default()
            })
            .await?;
        let server = DockerRecovered {
            container,
            _dir: dir.dir,
            log: files.log.clone(),
            user: request.user.to_owned(),
            major: request.major,
        };
        server.wait_promoted(request.limit, cancel).await?;
        Ok(server)
    }
}

/// The uid and gid that own the base backup's files (the archive's own,
/// kept when it was unpacked): the production server's.
fn data_owner(data: &Path) -> Result<(u32, u32), ScratchError> {
    let version = data.join("PG_VERSION");
    let meta = std::fs::metadata(&version).map_err(ScratchError::io(format!(
        "cannot read {} (the base backup's)",
        version.display()
    )))?;
    if meta.uid() == 0 {
        return Err(ScratchError::User(format!(
            "the base backup's files are owned by root here ({}): a recovery in a container runs the server as \
             the uid that owns them in the base backup, which kompose-dr keeps only when it runs as root; \
             run the restore as root",
            version.display()
        )));
    }
    Ok((meta.uid(), meta.gid()))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A bind mount of `p` at the same path inside the container.
fn same_path(p: &Path) -> String {
    format!("{0}:{0}", p.display())
}

/// A cluster recovered in a scratch container and promoted; the container
/// and the recovery directory go when it is dropped.
pub struct DockerRecovered {
    container: ScratchContainer,
    _dir: tempfile::TempDir,
    log: PathBuf,
    user: String,
    major: u32,
}

impl DockerRecovered {
    /// Connection settings for it: through the engine, inside its
    /// container, as the configured role (trust on its loopback).
    pub fn connection(&self) -> PostgresConfig {
        let endpoint = PgEndpoint {
            host: "127.0.0.1".into(),
            port: 5432,
            user: self.user.clone(),
            maintenance_db: "postgres".into(),
        };
        super::container_connection(&self.container, endpoint, None)
    }

    /// Its major version.
    pub fn major(&self) -> u32 {
        self.major
    }

    fn engine(&self) -> &Engine {
        self.container.engine()
    }

    async fn running(&self) -> bool {
        self.engine()
            .inspect(&self.container.id)
            .await
            .is_ok_and(|c| c.running)
    }

    /// Why the server stopped: its log's words, else the container's
    /// output (a directory the engine could not see).
    async fn said(&self) -> String {
        let words = recovery_log(&self.log);
        if !words.is_empty() {
            return words;
        }
        let output = self.engine().log_tail(&self.container.id, 5).await;
        if output.contains(NOT_VISIBLE) {
            format!(
                "{output} (kompose-dr runs with a /tmp of its own, as systemd's PrivateTmp= gives, or the engine \
                 runs elsewhere: set TMPDIR to a directory of this host that the engine mounts, such as one under \
                 /var/lib/kompose-dr)"
            )
        } else {
            output
        }
    }

    /// Waits until the server is out of recovery, at most `limit`.
    async fn wait_promoted(
        &self,
        limit: Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ScratchError> {
        let cfg = self.connection();
        let start = Instant::now();
        loop {
            if let Ok(c) = crate::clients::postgres::connect(&cfg, "postgres").await
                && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                return Ok(());
            }
            if !self.running().await {
                let message = format!(
                    "the recovery in container {} failed: {}",
                    self.container.name,
                    self.said().await
                );
                return Err(recovery_failed(message));
            }
            if start.elapsed() > limit {
                return Err(ScratchError::DidNotStart(format!(
                    "the recovery did not finish within {}s: {}",
                    limit.as_secs(),
                    log_tail(&self.log)
                )));
            }
            if cancel.is_cancelled() {
                return Err(ScratchError::DidNotStart(
                    "interrupted during the recovery".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the server with a fast shutdown (SIGINT to the container's
    /// first process, the server) and waits for it, at most `limit`; the
    /// container is then removed.
    pub async fn shut_down(self, limit: Duration) -> Result<(), ScratchError> {
        let engine = self.engine().clone();
        engine
            .output(
                &self.container.id,
                ExecSpec::new(["sh", "-c", "kill -INT 1"]),
            )
            .await?;
        let start = Instant::now();
        while self.running().await {
            if start.elapsed() > limit {
                return Err(ScratchError::DidNotStart(format!(
                    "the recovered PostgreSQL did not shut down within {}s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !log_tail(&self.log).contains(SHUT_DOWN) {
            return Err(ScratchError::DidNotStart(format!(
                "the recovered PostgreSQL did not shut down cleanly: {}",
                self.said().await
            )));
        }
        Ok(())
    }
}
