//! Restoring files: to the path `[[files]]` configures or `--to PATH` —
//! never to a path read from the repository — atomically (temporary file,
//! fsync, rename), with the recorded permission bits but never
//! setuid/setgid/sticky (acme.json stays 0600), the replaced file's owner,
//! and the recorded mtime. `--replace` keeps the replaced file as
//! `<path>.kompose-dr-<time>.bak`. A missing directory above the
//! configured path is created ([`missing_parents`]), below an existing
//! one, with the owner and a mode from the snapshot's record of the file.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::stream::copy_archive;
use super::{ReadyItem, RestoreContext, RestoreError, Target, open_stored, progress_bar};
use crate::model::manifest::FileMeta;
use crate::restore::plan::Choice;

/// Where a file source goes: `--to`, else the path `[[files]]` configures
/// for it — never a path read from the repository. A manifest whose
/// recorded path differs from the configured one is refused (a forged
/// manifest could aim a root restore anywhere), naming both.
fn target_path(ctx: &RestoreContext<'_>, c: &Choice) -> Result<PathBuf, RestoreError> {
    let name = c.source.trim_start_matches("files/");
    let configured = ctx
        .targets
        .files
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.path.clone());
    let recorded = c.artifact.file.as_ref().map(|f| PathBuf::from(&f.path));
    if let Some(to) = &ctx.options.to {
        let file_name = configured
            .as_ref()
            .and_then(|p| p.file_name().map(ToOwned::to_owned))
            .unwrap_or_else(|| name.into());
        return Ok(if to.is_dir() {
            to.join(file_name)
        } else {
            to.clone()
        });
    }
    let Some(configured) = configured else {
        return Err(RestoreError::Refused(format!(
            "no [[files]] entry named `{name}` in {}, and a target is never taken from the \
             repository: pass --to PATH",
            ctx.targets.config_path.display()
        )));
    };
    if let Some(recorded) = recorded
        && recorded != configured
    {
        return Err(RestoreError::Refused(format!(
            "the snapshot says it came from {}, but [[files]] `{name}` is {}: refusing a target \
             taken from the repository; pass --to PATH to write it elsewhere",
            recorded.display(),
            configured.display()
        )));
    }
    Ok(configured)
}

/// Checks the target: an existing file needs `--replace`.
pub fn preflight(ctx: &RestoreContext<'_>, c: &Choice) -> Result<(Target, bool), RestoreError> {
    let path = target_path(ctx, c)?;
    let exists = path.symlink_metadata().is_ok();
    if exists && !ctx.options.replace {
        return Err(RestoreError::Refused(format!(
            "{} exists: nothing was changed. Write it elsewhere with --to PATH, or replace it with --replace \
             (the current file is kept as {}.kompose-dr-<time>.bak)",
            path.display(),
            path.display()
        )));
    }
    // A missing directory is created by the restore only on the path
    // [[files]] configures (never under --to), below an existing ancestor.
    if ctx.options.to.is_none() {
        missing_parents(&path).map_err(|e| RestoreError::Refused(format!("{}: {e}", c.source)))?;
    } else {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            return Err(RestoreError::Refused(format!(
                "{}: the directory {} does not exist: create it, or pass another --to",
                c.source,
                parent.display()
            )));
        }
    }
    Ok((Target::File { path }, exists))
}

/// Why the directories above a configured file cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The only existing ancestor is `/`: the configuration names no
    /// existing directory to create the rest below.
    #[error(
        "the directory {missing} does not exist, and neither does any of its parents but `/`: \
         kompose-dr creates missing directories only below an existing one; create {missing} \
         (with the owner and mode the service expects), then restore again"
    )]
    NoAncestor {
        /// The outermost missing directory.
        missing: String,
    },
    /// An ancestor exists but is not a directory.
    #[error("{path} is not a directory: move it away, then restore again")]
    NotADirectory {
        /// The ancestor.
        path: String,
    },
}

/// The directories missing above `path`, outermost first: those between
/// its deepest existing ancestor and it, which must not be `/` (the
/// configuration names a deeper one that exists: `/var/local/data` for
/// `/var/local/data/traefik/letsencrypt/acme.json`). Empty when the parent
/// exists.
pub fn missing_parents(path: &Path) -> Result<Vec<PathBuf>, ParentError> {
    let mut missing = Vec::new();
    let mut at = path.parent();
    while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                if !missing.is_empty() && dir.parent().is_none() {
                    return Err(ParentError::NoAncestor {
                        missing: missing
                            .last()
                            .map(|p: &PathBuf| p.display().to_string())
                            .unwrap_or_default(),
                    });
                }
                missing.reverse();
                return Ok(missing);
            }
            Ok(_) => {
                return Err(ParentError::NotADirectory {
                    path: dir.display().to_string(),
                });
            }
            Err(_) => missing.push(dir.to_owned()),
        }
        at = dir.parent();
    }
    Ok(Vec::new())
}

/// The mode of a directory made for a file of mode `file_mode`: read
/// bits get their search bit (0600 → 0700, 0644 → 0755), within
/// [`RESTORABLE_MODE`].
pub fn directory_mode(file_mode: u32) -> u32 {
    let m = file_mode & 0o777;
    (m | ((m & 0o444) >> 2)) & RESTORABLE_MODE
}

/// Creates the missing directories above `path` ([`missing_parents`]),
/// each with the mode the file's recorded mode gives ([`directory_mode`];
/// 0700 without a record) and the recorded owner (an error only as root);
/// returns what was made, for the message.
fn create_parents(path: &Path, meta: Option<&FileMeta>) -> Result<Option<String>, RestoreError> {
    let dirs = missing_parents(path).map_err(|e| RestoreError::Refused(e.to_string()))?;
    if dirs.is_empty() {
        return Ok(None);
    }
    let mode = meta.map_or(0o700, |m| directory_mode(m.mode));
    for d in &dirs {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(d)
            .map_err(RestoreError::io(format!("cannot create {}", d.display())))?;
        // The umask may have taken bits away.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).map_err(
            RestoreError::io(format!("cannot set the mode of {}", d.display())),
        )?;
        if let Some(m) = meta
            && let Err(e) = std::os::unix::fs::chown(d, Some(m.uid), Some(m.gid))
            && nix::unistd::geteuid().is_root()
        {
            return Err(RestoreError::io(format!(
                "cannot set the owner of {}",
                d.display()
            ))(e));
        }
        if let Some(up) = d.parent() {
            let _ = crate::storage::local::sync_dir(up);
        }
    }
    let owner = meta
        .map(|m| format!(", owner {}:{}", m.uid, m.gid))
        .unwrap_or_default();
    Ok(Some(format!(
        "created {} (mode {mode:04o}{owner}, from the snapshot's record of the file)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The name of a restore's temporary copy of `name`, made beside it:
/// `.NAME.kompose-dr-<pid>-<random>.tmp`. The pid in the name says whose it
/// is, for the sweep of a later restore ([`sweep_temporaries`]).
pub(super) fn staging_name(name: &str) -> String {
    format!(
        ".{name}.kompose-dr-{}-{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Removes the temporary files beside `path` that restores of it killed
/// before they finished (`kill -9`) left: `.NAME.kompose-dr-<pid>-<rand>.tmp`
/// whose process no longer exists.
fn sweep_temporaries(path: &Path, name: &str) {
    let Some(dir) = path.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    let prefix = format!(".{name}.kompose-dr-");
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = crate::process::is_gone(pid);
        if gone && e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed the temporary file of a killed restore")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove the temporary file of a killed restore")
                }
            }
        }
    }
}

/// Restores one file to `path`.
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
    let created = if ctx.options.to.is_none() {
        create_parents(path, item.choice.artifact.file.as_ref())?
    } else {
        None
    };
    sweep_temporaries(path, &name);
    let tmp = path.with_file_name(staging_name(&name));
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let meta = item.choice.artifact.file.clone();
    // The owner is the replaced file's, never the archive's.
    let owner = std::fs::metadata(path).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid())
    });
    let (t, p) = (tmp.clone(), path.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        let bytes = write_temporary(&t, meta.as_ref(), owner, |f| {
            Ok(copy_archive(stored, &ids, f)?)
        })?;
        let bak = replace_with(&t, &p)?;
        Ok::<_, RestoreError>((bytes, bak))
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    pb.finish_and_clear();
    match result {
        Ok((bytes, bak)) => Ok((
            bytes,
            match bak {
                Some(b) => format!(
                    "restored {}; the previous file is {}",
                    path.display(),
                    b.display()
                ),
                None => format!("restored {}", path.display()),
            } + &created.map(|c| format!("; {c}")).unwrap_or_default(),
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.unchanged(path.display()))
        }
    }
}

/// The permission bits restored from an archive: setuid, setgid, sticky and
/// group/other write are never among them (a forged archive could ask for a
/// setuid root file, or a world-writable acme.json).
pub const RESTORABLE_MODE: u32 = 0o755;

/// Creates `t` (0600, new), fills it with `fill`, gives it `owner` (the
/// replaced file's; an error only as root), then the recorded permission
/// bits within [`RESTORABLE_MODE`] (after the owner, which would clear
/// special bits) and mtime, and syncs it.
fn write_temporary(
    t: &Path,
    meta: Option<&FileMeta>,
    owner: Option<(u32, u32)>,
    fill: impl FnOnce(&mut std::fs::File) -> Result<u64, RestoreError>,
) -> Result<u64, RestoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(t)
        .map_err(RestoreError::io(format!("cannot create {}", t.display())))?;
    let bytes = fill(&mut f)?;
    if let Some((uid, gid)) = owner
        && let Err(e) = std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
        && nix::unistd::geteuid().is_root()
    {
        return Err(RestoreError::io(format!(
            "cannot set the owner of {}",
            t.display()
        ))(e));
    }
    if let Some(m) = meta {
        f.set_permissions(std::fs::Permissions::from_mode(m.mode & RESTORABLE_MODE))
            .map_err(RestoreError::io(format!(
                "cannot set the mode of {}",
                t.display()
            )))?;
        f.set_modified(m.mtime.into())
            .map_err(RestoreError::io(format!(
                "cannot set the mtime of {}",
                t.display()
            )))?;
    }
    f.sync_all()
        .map_err(RestoreError::io(format!("fsync {}", t.display())))?;
    Ok(bytes)
}

/// Renames `t` over `p`, first keeping an existing `p` as a `.bak` hard
/// link (returned), then syncs the directory.
fn replace_with(t: &Path, p: &Path) -> Result<Option<PathBuf>, RestoreError> {
    let mut bak = None;
    if p.symlink_metadata().is_ok() {
        // The time names the copy; a second restore within the same second
        // (a retry right after an interrupted one) gets `-2`, `-3`…
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut n = 1;
        let b = loop {
            let b = PathBuf::from(match n {
                1 => format!("{}.kompose-dr-{stamp}.bak", p.display()),
                n => format!("{}.kompose-dr-{stamp}-{n}.bak", p.display()),
            });
            match std::fs::hard_link(p, &b) {
                Ok(()) => break b,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => {
                    return Err(RestoreError::io(format!(
                        "cannot keep {} as {}",
                        p.display(),
                        b.display()
                    ))(e));
                }
            }
        };
        bak = Some(b);
    }
    std::fs::rename(t, p).map_err(RestoreError::io(format!(
        "cannot move the restored file into {}",
        p.display()
    )))?;
    if let Some(dir) = p.parent() {
        let _ = crate::storage::local::sync_dir(dir);
    }
    Ok(bak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_get_search_bits_where_the_file_is_readable() {
        assert_eq!(directory_mode(0o600), 0o700);
        assert_eq!(directory_mode(0o644), 0o755);
        assert_eq!(directory_mode(0o640), 0o750);
        // Never group/other write, never special bits.
        assert_eq!(directory_mode(0o4666), 0o755);
    }

    #[test]
    fn missing_parents_stop_at_an_existing_ancestor_and_never_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/acme.json");
        assert_eq!(
            missing_parents(&file).unwrap(),
            vec![dir.path().join("a"), dir.path().join("a/b")]
        );
        assert!(
            missing_parents(&dir.path().join("acme.json"))
                .unwrap()
                .is_empty()
        );
        let e = missing_parents(Path::new("/kdr-no-such-top-dir/x/acme.json")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/kdr-no-such-top-dir does not exist"),
            "{e}"
        );
        std::fs::write(dir.path().join("f"), "").unwrap();
        let e = missing_parents(&dir.path().join("f/x/acme.json")).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
