//! Restoring a directory source into its named volume, through the engine
//! (the host may not be able to reach the volume's files).
//!
//! 1. The archive is unpacked and checked in a private directory here
//!    ([`super::unpack_tree`]): the volume is untouched until it checks out.
//! 2. The containers that use the volume and run are stopped — only those
//!    named in the entry's `stop`; any other running user refuses the
//!    restore before anything is written.
//! 3. A helper container (labelled like the scratch ones, swept if left)
//!    mounts the volume. An empty volume is filled through the engine's
//!    archive API, with the owners the tar records. With `--replace` the
//!    helper runs `sh` from the users' image: the current entries are moved
//!    to `.kompose-dr-replaced-<time>/` inside the volume first, and put
//!    back if the upload fails.
//! 4. The stopped containers are started again, whatever happened.
//!
//! A volume that does not exist (a fresh stack) is created before step 3;
//! helpers are made from the image of a container that uses the volume,
//! else of one named in `stop`, else of any container on the engine.

use std::path::Path;

use crate::engine::Engine;
use crate::engine::scratch::ScratchSpec;
use crate::model::config::DirectoryConfig;
use crate::restore::helper::{HelperSwapError, staged_tar, swap_through_helper};
use crate::restore::{ReadyItem, RestoreContext, RestoreError, Target};

/// Where the volume is mounted in the helper.
const MOUNT: &str = "/kdr-volume";

/// How long a stopped container gets to shut down.
pub(super) const GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn engine(cfg: &DirectoryConfig) -> Result<Engine, RestoreError> {
    Ok(Engine::connect(cfg.engine())?)
}

/// The image to make helpers from: that of a container using the volume.
async fn users(
    engine: &Engine,
    volume: &str,
) -> Result<Vec<crate::engine::ContainerInfo>, RestoreError> {
    Ok(engine.using_volume(volume).await?)
}

/// Whether the volume holds anything: its archive has an entry besides
/// its root (read until the second entry, then dropped).
async fn occupied(engine: &Engine, image: &str, volume: &str) -> Result<bool, RestoreError> {
    let helper = engine
        .create_scratch(ScratchSpec {
            image: image.to_owned(),
            name: "kompose-dr-volume".into(),
            cmd: Some(vec!["true".into()]),
            binds: vec![format!("{volume}:{MOUNT}:ro")],
            ..ScratchSpec::default()
        })
        .await?;
    let stream = engine.download(&helper.id, MOUNT);
    let reader = tokio_util::io::StreamReader::new(stream);
    let rt = tokio::runtime::Handle::current();
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(reader, rt);
        let mut ar = tar::Archive::new(reader);
        let mut n = 0;
        for e in ar.entries()? {
            e?;
            n += 1;
            if n > 1 {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("reading volume {volume}: {e}")))?
    .map_err(RestoreError::io(format!("reading volume {volume}")))?;
    drop(helper);
    Ok(found)
}

/// The image helpers are made from: that of a container using the volume,
/// else of a container named in `stop`, else of any container on the
/// engine (a helper that fills an empty volume is created, never started,
/// so any image will do).
async fn helper_image(
    engine: &Engine,
    cfg: &DirectoryConfig,
    users: &[crate::engine::ContainerInfo],
) -> Result<String, RestoreError> {
    if let Some(c) = users.first() {
        return Ok(c.image_id.clone());
    }
    for s in &cfg.stop {
        if let Ok(c) = engine.inspect(&s.name).await {
            return Ok(c.image_id);
        }
    }
    engine.any_image().await?.ok_or_else(|| {
        RestoreError::Refused(format!(
            "the engine has no container at all, and kompose-dr fills a volume through a helper made \
             from an existing container's image: create the stack's containers first (docker compose create), \
             or restore [[directories]] `{}` with --to DIR",
            cfg.name
        ))
    })
}

/// Creates the volume if it is missing (a fresh stack); returns the image
/// helpers are made from and whether the volume was created.
async fn volume_and_image(
    engine: &Engine,
    cfg: &DirectoryConfig,
    volume: &str,
    users: &[crate::engine::ContainerInfo],
) -> Result<(String, bool), RestoreError> {
    let created = !engine.volume_exists(volume).await?;
    if created {
        engine.create_volume(volume).await?;
        tracing::info!(volume, "created the missing volume");
    }
    Ok((helper_image(engine, cfg, users).await?, created))
}

/// The target of a restore into volume `volume`: running users must all be
/// in `stop`; a volume that holds files needs `--replace`.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    cfg: &DirectoryConfig,
    volume: &str,
) -> Result<(Target, bool), RestoreError> {
    let engine = engine(cfg)?;
    let users = users(&engine, volume).await?;
    if !engine.volume_exists(volume).await? {
        // A fresh stack: the restore creates it (nothing to replace).
        helper_image(&engine, cfg, &users).await?;
        return Ok((
            Target::Volume {
                volume: volume.to_owned(),
                stopped: Vec::new(),
            },
            false,
        ));
    }
    let image = helper_image(&engine, cfg, &users).await?;
    let running: Vec<String> = users
        .iter()
        .filter(|c| c.running)
        .map(|c| c.name.clone())
        .collect();
    let unlisted: Vec<&String> = running
        .iter()
        .filter(|n| !cfg.stop.iter().any(|s| &s.name == *n))
        .collect();
    if !unlisted.is_empty() {
        return Err(RestoreError::Refused(format!(
            "volume {volume} is in use by running container(s) {}: nothing was changed. Stop them \
             (docker stop …), or name them in stop = [...] of [[directories]] `{}` so that the restore \
             stops and starts them",
            unlisted
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.name
        )));
    }
    let full = occupied(&engine, &image, volume).await?;
    if full && !ctx.options.replace {
        return Err(RestoreError::Refused(format!(
            "volume {volume} holds files: nothing was changed. Replace them with --replace (they are \
             kept in {volume}:/.kompose-dr-replaced-<time>/), or write elsewhere with --to DIR"
        )));
    }
    Ok((
        Target::Volume {
            volume: volume.to_owned(),
            stopped: running,
        },
        full,
    ))
}

/// Restores the archive into the volume (see the module documentation).
pub async fn restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    cfg: &DirectoryConfig,
    volume: &str,
) -> Result<(u64, String), RestoreError> {
    let what = format!("volume {volume}");
    let engine = engine(cfg)?;
    // 1. Unpack and check here.
    let work = crate::process::private::tempdir().map_err(RestoreError::io(
        "cannot create a private temporary directory",
    ))?;
    let staging = work.path().join("staging");
    std::fs::create_dir(&staging).map_err(RestoreError::io("cannot create a staging directory"))?;
    let (bytes, unpacked) = super::unpack_into(ctx, item, &staging)
        .await
        .map_err(|e| e.unchanged(&what))?;
    // 2. Stop the running users (creating the volume if it is missing).
    let users = users(&engine, volume).await?;
    let (image, created) = volume_and_image(&engine, cfg, volume, &users)
        .await
        .map_err(|e| e.unchanged(&what))?;
    let mut stopped = Vec::new();
    let mut result = Ok(String::new());
    for c in users.iter().filter(|c| c.running) {
        if !cfg.stop.iter().any(|s| s.name == c.name) {
            result = Err(RestoreError::Refused(format!(
                "container {} started using volume {volume} since the plan was made",
                c.name
            ))
            .unchanged(&what));
            break;
        }
        match engine.stop(&c.name, GRACE).await {
            Ok(()) => stopped.push(c.name.clone()),
            Err(e) => {
                result = Err(RestoreError::from(e).unchanged(&what));
                break;
            }
        }
    }
    // 3. Write.
    if result.is_ok() {
        result = write(&engine, &image, volume, &staging, item.replaces).await;
    }
    // 4. Start again, whatever happened.
    for name in &stopped {
        if let Err(e) = engine.start(name).await {
            tracing::error!(container = %name, error = %e, "cannot start it again: start it by hand");
        }
    }
    let kept = result?;
    Ok((
        bytes,
        format!(
            "restored {} files ({} bytes) into volume {volume}{}{}{}",
            unpacked.files,
            unpacked.bytes,
            if created {
                " (created: it did not exist)"
            } else {
                ""
            },
            if kept.is_empty() {
                String::new()
            } else {
                format!("; the previous files are in {volume}:/{kept}/")
            },
            if stopped.is_empty() {
                String::new()
            } else {
                format!("; {} stopped and started again", stopped.join(", "))
            }
        ),
    ))
}

/// Step 3: fills the volume from `staging`; with `replace`, first moves
/// what it holds aside (returned: the directory's name; empty when nothing
/// was moved) and puts it back if the upload fails.
async fn write(
    engine: &Engine,
    image: &str,
    volume: &str,
    staging: &Path,
    replace: bool,
) -> Result<String, RestoreError> {
    let what = format!("volume {volume}");
    let tar = || staged_tar(staging.to_owned());
    if !replace {
        let helper = engine
            .create_scratch(ScratchSpec {
                image: image.to_owned(),
                name: "kompose-dr-volume".into(),
                cmd: Some(vec!["true".into()]),
                binds: vec![format!("{volume}:{MOUNT}")],
                ..ScratchSpec::default()
            })
            .await
            .map_err(|e| RestoreError::from(e).unchanged(&what))?;
        engine
            .upload(&helper.id, MOUNT, tar())
            .await
            .map_err(|e| RestoreError::from(e).unchanged(&what))?;
        return Ok(String::new());
    }
    let spec = ScratchSpec {
        image: image.to_owned(),
        name: "kompose-dr-volume".into(),
        entrypoint: Some(vec!["sh".into()]),
        cmd: Some(vec!["-c".into(), "sleep 3600".into()]),
        binds: vec![format!("{volume}:{MOUNT}")],
        ..ScratchSpec::default()
    };
    let fill = |helper: String| async move { engine.upload(&helper, MOUNT, tar()).await };
    swap_through_helper(engine, spec, MOUNT, fill)
        .await
        .map_err(|e| match e {
            HelperSwapError::Start(e) => RestoreError::Failed(format!(
                "{e}: replacing the files of a volume needs `sh` in the image of the containers that use it"
            ))
            .unchanged(&what),
            HelperSwapError::Aside(e) | HelperSwapError::Fill(e) => {
                RestoreError::from(e).unchanged(&what)
            }
            HelperSwapError::PutBack {
                fill,
                put_back,
                aside,
            } => RestoreError::Failed(format!(
                "{fill}; putting the previous files back failed too ({put_back}): they are in {volume}:/{aside}/"
            )),
        })
}
