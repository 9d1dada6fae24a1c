//! A whole cluster, recovered to a point in time, put back into the
//! server's container (`restore --source postgres/cluster --replace`).
//!
//! 1. The cluster is recovered in a private directory here (a scratch
//!    container or local binaries, `[scratch] runtime`) and shut down
//!    cleanly: production is untouched until then.
//! 2. The server's container is stopped.
//! 3. A helper container from its image mounts its volumes
//!    (`--volumes-from`) and the recovered directory (read-only): the
//!    entries of the data directory are moved aside to
//!    `.kompose-dr-replaced-<time>/` inside it (PGDATA is the volume's root
//!    in the official image, so the old data stays in the volume, beside
//!    the new), the recovered ones are copied in and given the owner of the
//!    data directory.
//! 4. The container is started and the restore waits until the server
//!    accepts connections.
//!
//! A failure after the stop (the copy, the start, a server that does not
//! come up) puts the old entries back and starts the container again.

use std::path::Path;
use std::time::Duration;

use crate::engine::scratch::ScratchSpec;
use crate::engine::{Engine, ExecSpec};
use crate::model::config::{ContainerRef, PostgresConfig};
use crate::restore::helper::{HelperSwapError, swap_through_helper};
use crate::restore::plan::Recovery;
use crate::restore::{RestoreContext, RestoreError, Target};

/// How long the server gets to stop, and to accept connections after
/// starting.
const GRACE: Duration = Duration::from_secs(120);

/// How long the recovered server gets to shut down cleanly.
const SHUTDOWN: Duration = Duration::from_secs(600);

/// Where the helper sees the recovered data directory.
const RECOVERED: &str = "/kompose-dr-recovered";

/// The official image's `PGDATA`.
const DEFAULT_PGDATA: &str = "/var/lib/postgresql/data";

/// Copies the recovered entries (`$2`) into the data directory `$1`, gives
/// them its owner, and flushes them to disk.
const FILL: &str = "cd \"$1\" && cp -a \"$2\"/. . && owner=$(stat -c %u:%g .) && \
    for f in * .[!.]* ..?*; do case \"$f\" in '*'|'.[!.]*'|'..?*'|.kompose-dr-*) ;; *) chown -R \"$owner\" -- \"$f\" ;; esac; done && sync";

fn configured<'a>(
    ctx: &'a RestoreContext<'_>,
) -> Result<(&'a PostgresConfig, &'a ContainerRef), RestoreError> {
    ctx.targets
        .postgres
        .as_ref()
        .and_then(|p| p.container.as_ref().map(|c| (p, c)))
        .ok_or_else(|| {
            RestoreError::Refused(format!(
                "--replace puts the recovered cluster into the server's container, but {} names none \
                 ([postgres] container): set it, or recover into a new directory with --to DIR",
                ctx.targets.config_path.display()
            ))
        })
}

/// The target of `--replace`: the container must exist and keep its data
/// directory (`PGDATA`, else the official image's) on a volume.
pub async fn preflight(ctx: &RestoreContext<'_>) -> Result<(Target, bool), RestoreError> {
    let (_, c) = configured(ctx)?;
    let engine = Engine::connect(c.engine.as_deref())?;
    let info = engine.inspect(&c.name).await?;
    let dir = info.env("PGDATA").unwrap_or(DEFAULT_PGDATA).to_owned();
    let on_volume = info.mounts.iter().any(|m| {
        let d = m.destination.trim_end_matches('/');
        dir == d || dir.starts_with(&format!("{d}/"))
    });
    if !on_volume {
        return Err(RestoreError::Refused(format!(
            "the data directory {dir} of container {} is on no volume or bind mount: the restored cluster \
             would be lost with the container; recover into a new directory with --to DIR",
            c.name
        )));
    }
    Ok((
        Target::ClusterContainer {
            container: c.name.clone(),
            dir,
            running: info.running,
        },
        true,
    ))
}

/// Recovers the cluster and puts it into the container's data directory
/// `dir` (see the module documentation for the steps).
pub async fn restore(
    ctx: &RestoreContext<'_>,
    recovery: &Recovery,
    dir: &str,
) -> Result<(u64, String), RestoreError> {
    let (cfg, c) = configured(ctx)?;
    let engine = Engine::connect(c.engine.as_deref())?;
    let unchanged = format!("container {}", c.name);
    // 1. Recover here, before production is touched.
    let work = crate::process::private::tempdir().map_err(RestoreError::io(
        "cannot create a private temporary directory ($TMPDIR)",
    ))?;
    let data = work.path().join("data");
    std::fs::create_dir(&data).map_err(RestoreError::io(format!(
        "cannot create {}",
        data.display()
    )))?;
    let (server, bytes) = super::pitr::recover(ctx, recovery, Some(&data))
        .await
        .map_err(|e| e.unchanged(&unchanged))?;
    server
        .shut_down(SHUTDOWN)
        .await
        .map_err(|e| RestoreError::from(e).unchanged(&unchanged))?;
    // The recovery's command line: nothing production should start with.
    let _ = std::fs::remove_file(data.join("postmaster.opts"));
    if ctx.cancel.is_cancelled() {
        return Err(RestoreError::Failed("interrupted".into()).unchanged(&unchanged));
    }

    // 2. Stop.
    let info = engine.inspect(&c.name).await?;
    tracing::info!(container = %c.name, "stopping the server to put the recovered cluster in");
    engine
        .stop(&c.name, GRACE)
        .await
        .map_err(|e| RestoreError::from(e).unchanged(&unchanged))?;
    // 3 and 4: swap, start, wait; on failure the old files are back.
    let swapped = swap(&engine, &info.image_id, cfg, c, dir, &data).await;
    let kept = match swapped {
        Ok(kept) => kept,
        Err(e) => {
            let started = engine.start(&c.name).await;
            return Err(match started {
                Ok(()) => match wait_ready(&engine, cfg, c).await {
                    Ok(()) => e,
                    Err(w) => RestoreError::Failed(format!(
                        "{e}; the previous data is back, but the server did not come up again: {w}"
                    )),
                },
                Err(s) => RestoreError::Failed(format!(
                    "{e}; the previous data is back, but container {} did not start again: {s}",
                    c.name
                )),
            });
        }
    };
    Ok((
        bytes,
        format!(
            "the cluster recovered to {} from base backup {} and {} WAL file(s) is the data directory {dir} of \
             container {name}, which accepts connections; the previous data directory is in {dir}/{kept}/ — \
             every base backup carries it until it is dropped: `docker exec {name} rm -rf {dir}/{kept}`",
            recovery
                .target
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "the base backup's end".into()),
            recovery.base_snapshot,
            recovery.wal_files,
            name = c.name,
        ),
    ))
}

/// Steps 3 and 4 in a helper on the container's volumes: moves the data
/// directory's entries aside, copies the recovered ones in, starts the
/// container and waits for the server; a failure stops it again and puts
/// the old entries back. Returns the directory, inside `dir`, that holds
/// the old entries.
async fn swap(
    engine: &Engine,
    image: &str,
    cfg: &PostgresConfig,
    c: &ContainerRef,
    dir: &str,
    recovered: &Path,
) -> Result<String, RestoreError> {
    let spec = ScratchSpec {
        image: image.to_owned(),
        name: "kompose-dr-restore-postgres".into(),
        entrypoint: Some(vec!["sleep".into()]),
        cmd: Some(vec!["3600".into()]),
        volumes_from: vec![c.name.clone()],
        binds: vec![format!("{}:{RECOVERED}:ro", recovered.display())],
        ..ScratchSpec::default()
    };
    let fill = |helper: String| async move {
        engine
            .output(
                &helper,
                ExecSpec::new(["sh", "-c", FILL, "sh", dir, RECOVERED]),
            )
            .await
            .map_err(RestoreError::from)?;
        // The helper is done with the volume before the server starts.
        engine.start(&c.name).await.map_err(RestoreError::from)?;
        if let Err(e) = wait_ready(engine, cfg, c).await {
            let _ = engine.stop(&c.name, GRACE).await;
            return Err(e);
        }
        Ok(())
    };
    let unchanged = format!("container {}", c.name);
    swap_through_helper(engine, spec, dir, fill)
        .await
        .map_err(|e| match e {
            HelperSwapError::Start(e) => RestoreError::from(e).unchanged(unchanged),
            HelperSwapError::Aside(e) => RestoreError::from(e).unchanged(unchanged),
            HelperSwapError::Fill(e) => e.unchanged(unchanged),
            HelperSwapError::PutBack {
                fill,
                put_back,
                aside,
            } => RestoreError::Failed(format!(
                "{fill}; putting the previous data directory back failed too ({put_back}): it is in {dir}/{aside}/ \
                 of the container's volume"
            )),
        })
}

/// Waits until the server in `c` accepts connections, at most [`GRACE`].
async fn wait_ready(
    engine: &Engine,
    cfg: &PostgresConfig,
    c: &ContainerRef,
) -> Result<(), RestoreError> {
    let deadline = tokio::time::Instant::now() + GRACE;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match crate::clients::postgres::resolve(cfg).await {
            Ok(cfg) => {
                match crate::clients::postgres::connect(&cfg, &cfg.endpoint.maintenance_db).await {
                    Ok(client) => match client.query_one("SELECT 1", &[]).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if !engine.inspect(&c.name).await.is_ok_and(|i| i.running) {
            return Err(RestoreError::Failed(format!(
                "container {} exited after the start ({last}); its log: {}",
                c.name,
                engine.log_tail(&c.name, 5).await
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(RestoreError::Failed(format!(
        "the server in container {} did not accept connections within {}s: {last}",
        c.name,
        GRACE.as_secs()
    )))
}
