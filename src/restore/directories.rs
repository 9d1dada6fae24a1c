//! Restoring a directory source (`directories/<name>`): into the path
//! `[[directories]]` configures, or `--to DIR`.
//!
//! The archive is unpacked into a staging directory beside the target
//! (`.<name>.kompose-dr-<pid>-<rand>.tmp`, same file system, 0700 while it
//! fills) and put in place with renames only once every byte was read and
//! checked. A target that holds anything is refused unless `--replace`;
//! then the old tree is kept as `<path>.kompose-dr-replaced-<time>`. An
//! empty (or missing) target is simply filled.
//!
//! The archive is untrusted ([`unpack_tree`]): only directories, regular
//! files and symlinks with plain relative names; nothing written through a
//! symlink; no hard links or devices; permission bits without setuid,
//! setgid, sticky or world-write; owners kept only when running as root.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub mod volume;

use super::stream::copy_archive;
use super::{ReadyItem, RestoreContext, RestoreError, Target, open_stored, progress_bar};
use crate::engine::Engine;
use crate::model::config::{DirectoryConfig, DirectoryLocation};
pub use crate::pipeline::tar::Unpacked;
use crate::pipeline::tar::{EntryPolicy, Owners, unpack_checked};
use crate::restore::plan::Choice;

/// Permission bits never restored from an archive: world-write (the
/// setuid, setgid and sticky bits are dropped too).
pub const MASK: u32 = 0o002;

/// Where a directory source goes.
enum Place {
    /// A directory of this host.
    Dir(PathBuf),
    /// A named volume, through the engine.
    Volume(DirectoryConfig, String),
}

/// Where a directory source goes: `--to`, else the configured path or
/// volume — never a path read from the repository.
fn target_of(ctx: &RestoreContext<'_>, c: &Choice) -> Result<Place, RestoreError> {
    let name = c.source.trim_start_matches("directories/");
    if let Some(to) = &ctx.options.to {
        return Ok(Place::Dir(to.clone()));
    }
    let Some(cfg) = ctx.targets.directories.iter().find(|d| d.name == name) else {
        return Err(RestoreError::Refused(format!(
            "no [[directories]] entry named `{name}` in {}, and a target is never taken from the \
             repository: pass --to DIR",
            ctx.targets.config_path.display()
        )));
    };
    let recorded = c.artifact.file.as_ref().map(|f| f.path.clone());
    let configured = match &cfg.location {
        DirectoryLocation::Path(p) => p.display().to_string(),
        DirectoryLocation::Volume { name, .. } => format!("volume:{name}"),
    };
    if let Some(recorded) = recorded
        && recorded != configured
    {
        return Err(RestoreError::Refused(format!(
            "the snapshot says it came from {recorded}, but [[directories]] `{name}` is {configured}: \
             refusing a target taken from the repository; pass --to DIR to write it elsewhere"
        )));
    }
    Ok(match &cfg.location {
        DirectoryLocation::Path(p) => Place::Dir(p.clone()),
        DirectoryLocation::Volume { name, .. } => Place::Volume(cfg.clone(), name.clone()),
    })
}

/// Whether `dir` holds any entry.
fn occupied(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some())
}

/// Checks the target: a directory that holds anything needs `--replace`;
/// its parent must exist.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    c: &Choice,
) -> Result<(Target, bool), RestoreError> {
    let path = match target_of(ctx, c)? {
        Place::Dir(p) => p,
        Place::Volume(cfg, volume) => return volume::preflight(ctx, &cfg, &volume).await,
    };
    let full = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => occupied(&path),
        Ok(_) => {
            return Err(RestoreError::Refused(format!(
                "{} exists and is not a directory (a symlink is not followed): nothing was changed",
                path.display()
            )));
        }
        Err(_) => false,
    };
    if full && !ctx.options.replace {
        return Err(RestoreError::Refused(format!(
            "{} is not empty: nothing was changed. Write it elsewhere with --to DIR, or replace it with \
             --replace (the current tree is kept as {}.kompose-dr-replaced-<time>)",
            path.display(),
            path.display()
        )));
    }
    let parent = parent_of(&path);
    if !parent.is_dir() {
        return Err(RestoreError::Refused(format!(
            "{}: the directory {} does not exist",
            c.source,
            parent.display()
        )));
    }
    Ok((Target::Directory { path }, full))
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Restores the archive into `path` (see the module documentation).
pub async fn restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    path: &Path,
) -> Result<(u64, String), RestoreError> {
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let staging = parent_of(path).join(super::files::staging_name(&name));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(RestoreError::io(format!(
            "cannot create {}",
            staging.display()
        )))?;
    let result = fill_and_swap(ctx, item, path, &staging).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map_err(|e| e.unchanged(path.display()))
}

/// Streams the archive through [`unpack_tree`] into `staging`, then gives
/// `staging` the root's recorded mode and mtime (and owner, as root).
/// Returns the plaintext bytes and what was unpacked.
async fn unpack_into(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    staging: &Path,
) -> Result<(u64, Unpacked), RestoreError> {
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let st = staging.to_owned();
    let as_root = nix::unistd::geteuid().is_root();
    let (bytes, unpacked) = tokio::task::spawn_blocking(move || -> Result<_, RestoreError> {
        let (reader, mut writer) = std::io::pipe().map_err(RestoreError::io("pipe"))?;
        let unpacker = std::thread::spawn(move || -> std::io::Result<Unpacked> {
            let mut reader = reader;
            let r = unpack_tree(&mut reader, &st, as_root);
            // Read to the end so the writer never sees a broken pipe.
            std::io::copy(&mut reader, &mut std::io::sink())?;
            r
        });
        let copied = copy_archive(stored, &ids, &mut writer);
        drop(writer);
        let unpacked = unpacker
            .join()
            .map_err(|_| RestoreError::Failed("tar unpacker panicked".to_owned()))?;
        let bytes = copied?;
        let unpacked = unpacked.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            RestoreError::Failed(format!("cannot unpack the directory archive: {e}{cause}"))
        })?;
        Ok((bytes, unpacked))
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))??;
    pb.finish_and_clear();
    if let Some(m) = &item.choice.artifact.file {
        std::fs::set_permissions(
            staging,
            std::fs::Permissions::from_mode(m.mode & 0o777 & !MASK),
        )
        .map_err(RestoreError::io(format!(
            "cannot set the mode of {}",
            staging.display()
        )))?;
        if as_root {
            std::os::unix::fs::lchown(staging, Some(m.uid), Some(m.gid)).map_err(
                RestoreError::io(format!("cannot set the owner of {}", staging.display())),
            )?;
        }
        set_mtime(staging, m.mtime.into())?;
    }
    Ok((bytes, unpacked))
}

async fn fill_and_swap(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    path: &Path,
    staging: &Path,
) -> Result<(u64, String), RestoreError> {
    let (bytes, unpacked) = unpack_into(ctx, item, staging).await?;
    // Into the configured path: the entry's `stop` containers that run are
    // stopped for the swap (they would keep writing into the old tree) and
    // started again after it, whatever happened.
    let name = item.choice.source.trim_start_matches("directories/");
    let cfg = ctx
        .options
        .to
        .is_none()
        .then(|| ctx.targets.directories.iter().find(|d| d.name == name))
        .flatten();
    let mut stopped = Vec::new();
    let mut engine = None;
    if let Some(cfg) = cfg.filter(|c| !c.stop.is_empty()) {
        let e = Engine::connect(cfg.engine())?;
        for c in &cfg.stop {
            if e.inspect(&c.name).await?.running {
                stopped.push(c.name.clone());
                if let Err(err) = e.stop(&c.name, volume::GRACE).await {
                    start_again(&e, &stopped).await;
                    return Err(err.into());
                }
            }
        }
        engine = Some(e);
    }
    let swapped = swap(item, path, staging);
    if let Some(e) = &engine {
        start_again(e, &stopped).await;
    }
    let kept = swapped?;
    let _ = crate::storage::local::sync_dir(&parent_of(path));
    let what = format!(
        "restored {} files ({} bytes) into {}{}",
        unpacked.files,
        unpacked.bytes,
        path.display(),
        if stopped.is_empty() {
            String::new()
        } else {
            format!(" ({} stopped and started again)", stopped.join(", "))
        }
    );
    Ok((
        bytes,
        match kept {
            Some(a) => format!("{what}; the previous tree is {}", a.display()),
            None => what,
        },
    ))
}

/// Starts the containers `names` again, logging those that do not start.
async fn start_again(engine: &Engine, names: &[String]) {
    for n in names {
        if let Err(e) = engine.start(n).await {
            tracing::error!(container = %n, error = %e, "cannot start it again: start it by hand");
        }
    }
}

/// Puts `staging` in place of `path` with renames; an occupied `path` is
/// kept as `<path>.kompose-dr-replaced-<time>` (returned).
fn swap(item: &ReadyItem, path: &Path, staging: &Path) -> Result<Option<PathBuf>, RestoreError> {
    // Without a recorded root, the replaced directory's mode.
    let previous = std::fs::metadata(path).ok();
    if item.choice.artifact.file.is_none()
        && let Some(prev) = &previous
    {
        std::fs::set_permissions(staging, prev.permissions()).map_err(RestoreError::io(
            format!("cannot set the mode of {}", staging.display()),
        ))?;
    }
    // The swap: renames only.
    let mut kept = None;
    match &previous {
        None => {}
        Some(_) if !occupied(path) => {
            std::fs::remove_dir(path).map_err(RestoreError::io(format!(
                "cannot replace {}",
                path.display()
            )))?;
        }
        Some(_) => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            let mut n = 1;
            let aside = loop {
                let a = PathBuf::from(match n {
                    1 => format!("{}.kompose-dr-replaced-{stamp}", path.display()),
                    n => format!("{}.kompose-dr-replaced-{stamp}-{n}", path.display()),
                });
                if a.symlink_metadata().is_err() || n >= 100 {
                    break a;
                }
                n += 1;
            };
            std::fs::rename(path, &aside).map_err(RestoreError::io(format!(
                "cannot move {} aside to {}",
                path.display(),
                aside.display()
            )))?;
            kept = Some(aside);
        }
    }
    if let Err(e) = std::fs::rename(staging, path) {
        if let Some(a) = &kept {
            let _ = std::fs::rename(a, path);
        }
        return Err(RestoreError::io(format!(
            "cannot move the restored tree into {}",
            path.display()
        ))(e));
    }
    Ok(kept)
}

fn set_mtime(path: &Path, t: std::time::SystemTime) -> Result<(), RestoreError> {
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(RestoreError::io(format!(
            "cannot set the mtime of {}",
            path.display()
        )))
}

/// Unpacks a directory tar into `dst`, trusting nothing in it
/// ([`unpack_checked`]): every name plain and relative (no absolute
/// path or `..`; `./` prefixes are dropped and the `./` entry itself
/// skipped), each at most once; only directories, regular files and
/// symlinks (hard links, devices and FIFOs refuse the archive); nothing
/// written through a symlink (tar checks each parent resolves inside
/// `dst`); permission bits without setuid/setgid/sticky or world-write;
/// mtimes kept (for directories, set again after their content); owners
/// only as root.
pub fn unpack_tree(
    reader: &mut dyn std::io::Read,
    dst: &Path,
    as_root: bool,
) -> std::io::Result<Unpacked> {
    let policy = EntryPolicy {
        symlinks: true,
        skip_root: true,
        unique: true,
        mask: MASK,
        owners: if as_root {
            Owners::Archive
        } else {
            Owners::Ours
        },
        defer_dirs: true,
        place: "the target",
        outside_suffix: ": refusing the archive",
    };
    unpack_checked(reader, dst, &policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, len: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(len);
        h.set_mode(mode);
        h.set_mtime(1_000_000_000);
        h
    }

    fn unpack(archive: &[u8]) -> (tempfile::TempDir, std::io::Result<Unpacked>) {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("t");
        std::fs::create_dir(&dst).unwrap();
        let r = unpack_tree(&mut &archive[..], &dst, false);
        (dir, r)
    }

    #[test]
    fn a_tree_unpacks_with_modes_mtimes_and_links() {
        let archive = tar_of(|b| {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0, 0o750),
                "d",
                std::io::empty(),
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 2, 0o4755),
                "d/x",
                &b"hi"[..],
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 1, 0o666),
                "y",
                &b"!"[..],
            )
            .unwrap();
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0, 0o777),
                "l",
                "/etc/passwd",
            )
            .unwrap();
        });
        let (dir, r) = unpack(&archive);
        assert_eq!(r.unwrap(), Unpacked { files: 2, bytes: 3 });
        let t = dir.path().join("t");
        let mode = |p: &str| {
            std::fs::symlink_metadata(t.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("d"), 0o750);
        assert_eq!(mode("d/x"), 0o755);
        assert_eq!(mode("y"), 0o664);
        assert_eq!(
            std::fs::read_link(t.join("l")).unwrap(),
            Path::new("/etc/passwd")
        );
        let mtime = std::fs::metadata(t.join("d")).unwrap().modified().unwrap();
        assert_eq!(
            mtime,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000)
        );
    }

    #[test]
    fn escapes_links_through_symlinks_and_devices_are_refused() {
        let through = tar_of(|b| {
            b.append_link(&mut header(tar::EntryType::Symlink, 0, 0o777), "l", "..")
                .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 1, 0o644),
                "l/evil",
                &b"!"[..],
            )
            .unwrap();
        });
        let hard = tar_of(|b| {
            b.append_link(&mut header(tar::EntryType::Link, 0, 0o644), "h", "x")
                .unwrap();
        });
        let fifo = tar_of(|b| {
            b.append_data(
                &mut header(tar::EntryType::Fifo, 0, 0o644),
                "f",
                std::io::empty(),
            )
            .unwrap();
        });
        let dotdot = tar_of(|b| {
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            h.as_old_mut().name[..8].copy_from_slice(b"../evil\0");
            h.set_cksum();
            b.append(&h, &b"!"[..]).unwrap();
        });
        let absolute = tar_of(|b| {
            let mut h = header(tar::EntryType::Regular, 1, 0o644);
            h.as_old_mut().name[..10].copy_from_slice(b"/tmp/evil\0");
            h.set_cksum();
            b.append(&h, &b"!"[..]).unwrap();
        });
        let twice = tar_of(|b| {
            for _ in 0..2 {
                b.append_data(
                    &mut header(tar::EntryType::Regular, 1, 0o644),
                    "a",
                    &b"!"[..],
                )
                .unwrap();
            }
        });
        for (what, archive) in [
            ("through", through),
            ("hard", hard),
            ("fifo", fifo),
            ("dotdot", dotdot),
            ("absolute", absolute),
            ("twice", twice),
        ] {
            let (dir, r) = unpack(&archive);
            assert!(r.is_err(), "{what}");
            assert!(!dir.path().join("evil").exists(), "{what}");
        }
    }
}
