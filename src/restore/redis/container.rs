//! Restoring Redis into its container: the data directory lives in a
//! volume the host may not be able to read, so every step goes through the
//! engine.
//!
//! 1. The archive is unpacked and checked in a private directory here, as
//!    for a directory restore: production is untouched until it checks out.
//! 2. The container is stopped (Redis writes its files when it shuts down,
//!    so they must not be replaced under a running server).
//! 3. A helper container from the same image mounts the same volumes
//!    (`--volumes-from`, no network): the current files are moved aside to
//!    `.kompose-dr-replaced-<time>/`, the restored ones are unpacked in, and
//!    given the owner of the data directory.
//! 4. The container is started again, and the restore waits until Redis
//!    answers and reports its key count.
//!
//! Any failure after the stop puts the previous files back (if they were
//! moved) and starts the container again.

use std::path::Path;
use std::time::Duration;

use super::{check_staged, fresh, unpack};
use crate::engine::scratch::ScratchSpec;
use crate::engine::{Engine, ExecSpec};
use crate::model::config::{ContainerRef, RedisConfig};
use crate::model::manifest::ArtifactKind;
use crate::restore::helper::{HelperSwapError, staged_tar, swap_through_helper};
use crate::restore::{ReadyItem, RestoreContext, RestoreError, Target};

/// How long Redis gets to shut down, and to answer after starting.
const GRACE: Duration = Duration::from_secs(60);

fn engine(c: &ContainerRef) -> Result<Engine, RestoreError> {
    Ok(Engine::connect(c.engine.as_deref())?)
}

/// The target of a restore into `[redis] container`: the container must
/// exist; its data directory is Redis' own `dir` (asked while it runs, else
/// `/data`); one that holds files needs `--replace`.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    cfg: &RedisConfig,
    c: &ContainerRef,
) -> Result<(Target, bool), RestoreError> {
    let engine = engine(c)?;
    let info = engine.inspect(&c.name).await?;
    let mut dir = "/data".to_owned();
    let held = if info.running {
        let mut con = crate::clients::redis::connect(cfg)
            .await
            .map_err(RestoreError::from_source)?;
        dir = crate::clients::redis::config_get(&mut con, "dir")
            .await
            .map_err(RestoreError::from_source)?;
        let keyspace = crate::clients::redis::info(&mut con, "keyspace")
            .await
            .map_err(RestoreError::from_source)?;
        let keys: u64 = crate::clients::redis::parse_keyspace(&keyspace)
            .values()
            .sum();
        let listing = engine
            .output(
                &c.name,
                ExecSpec::new(["sh", "-c", fresh::LIST_SCRIPT, "sh"]).args([dir.as_str()]),
            )
            .await?;
        let fresh = fresh::parse_listing(&listing).is_some_and(|e| fresh::is_fresh(&e));
        match (keys, fresh) {
            (0, true) => None,
            (0, false) => Some(format!(
                "Redis in container {} has no key, but {dir} holds files a fresh Redis does not write \
                 (more than an empty appendonlydir/ and dump.rdb)",
                c.name
            )),
            (n, _) => Some(format!(
                "Redis in container {} holds {n} key(s) in {dir}",
                c.name
            )),
        }
    } else {
        Some(format!(
            "Redis in container {} is not running, so whether {dir} holds data cannot be checked",
            c.name
        ))
    };
    let occupied = held.is_some();
    if let Some(held) = held
        && !ctx.options.replace
    {
        return Err(RestoreError::Refused(format!(
            "{held}: nothing was changed. Start it to let the restore check, or replace its data with --replace \
             (the container is stopped, its files are kept in {dir}/.kompose-dr-replaced-<time>/, and it is started again)"
        )));
    }
    Ok((
        Target::RedisContainer {
            container: c.name.clone(),
            dir,
            running: info.running,
        },
        occupied,
    ))
}

/// Restores the archive into the container's data directory `dir` (see the
/// module documentation for the steps).
pub async fn restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    cfg: &RedisConfig,
    c: &ContainerRef,
    dir: &str,
) -> Result<(u64, String), RestoreError> {
    let engine = engine(c)?;
    let expected = match item.choice.artifact.kind {
        ArtifactKind::RedisAof => "appendonlydir",
        _ => "dump.rdb",
    };
    // 1. Unpack and check here, before production is touched.
    let work = crate::process::private::tempdir().map_err(RestoreError::io(
        "cannot create a private temporary directory",
    ))?;
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging).map_err(RestoreError::io("cannot create a staging directory"))?;
    let bytes = unpack(ctx, item, &staging)
        .await
        .map_err(|e| e.unchanged(format!("container {}", c.name)))?;
    check_staged(&staging, expected).map_err(|e| e.unchanged(format!("container {}", c.name)))?;

    // 2. Stop.
    let info = engine.inspect(&c.name).await?;
    engine
        .stop(&c.name, GRACE)
        .await
        .map_err(|e| RestoreError::from(e).unchanged(format!("container {}", c.name)))?;
    let swapped = swap(&engine, &info.image_id, c, dir, &staging).await;
    // 4. Start again, whatever happened.
    let started = engine.start(&c.name).await;
    let kept = swapped?;
    started?;
    let keys = wait_for_keys(cfg).await?;
    Ok((
        bytes,
        format!(
            "restored {expected} into {dir} of container {} ({keys} keys after the restart); \
             the previous files are in {dir}/{kept}/",
            c.name
        ),
    ))
}

/// Step 3: in a helper container on the same volumes, moves the current
/// files aside and unpacks the staged ones. Returns the name of the
/// directory the previous files went to. On failure the previous files are
/// put back.
async fn swap(
    engine: &Engine,
    image: &str,
    c: &ContainerRef,
    dir: &str,
    staging: &Path,
) -> Result<String, RestoreError> {
    let spec = ScratchSpec {
        image: image.to_owned(),
        name: "kompose-dr-restore-redis".into(),
        entrypoint: Some(vec!["sleep".into()]),
        cmd: Some(vec!["3600".into()]),
        volumes_from: vec![c.name.clone()],
        ..ScratchSpec::default()
    };
    // The restored files get the owner of the data directory.
    let fill = |helper: String| async move {
        engine
            .upload(&helper, dir, staged_tar(staging.to_owned()))
            .await?;
        let chown = ExecSpec::new([
            "sh",
            "-c",
            "cd \"$1\" && owner=$(stat -c %u:%g .) && for f in *; do chown -R \"$owner\" -- \"$f\"; done",
            "sh",
            dir,
        ]);
        engine.output(&helper, chown).await.map(drop)
    };
    let unchanged = format!("container {}", c.name);
    swap_through_helper(engine, spec, dir, fill)
        .await
        .map_err(|e| match e {
            HelperSwapError::Start(e) => RestoreError::from(e),
            HelperSwapError::Aside(e) | HelperSwapError::Fill(e) => {
                RestoreError::from(e).unchanged(unchanged)
            }
            HelperSwapError::PutBack {
                fill,
                put_back,
                aside,
            } => RestoreError::Failed(format!(
                "{fill}; putting the previous files back failed too ({put_back}): they are in {dir}/{aside}/ of the container's volume"
            )),
        })
}

/// Waits until the restarted Redis answers and has loaded its data;
/// returns its key count.
async fn wait_for_keys(cfg: &RedisConfig) -> Result<u64, RestoreError> {
    let deadline = tokio::time::Instant::now() + GRACE;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match crate::clients::redis::connect(cfg).await {
            Ok(mut con) => match crate::clients::redis::info(&mut con, "persistence").await {
                Ok(p) if p.get("loading").map(String::as_str) == Some("0") => {
                    let ks = crate::clients::redis::info(&mut con, "keyspace")
                        .await
                        .map_err(RestoreError::from_source)?;
                    return Ok(crate::clients::redis::parse_keyspace(&ks).values().sum());
                }
                Ok(_) => last = "still loading".into(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(RestoreError::Failed(format!(
        "Redis did not answer within {}s after the restart ({last}); the restored files are in place",
        GRACE.as_secs()
    )))
}
