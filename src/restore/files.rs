//! Restoring files: to the original path or `--to PATH`, atomically
//! (temporary file, fsync, rename), with the recorded mode (acme.json stays
//! 0600), owner where permitted, and mtime. `--replace` keeps the replaced
//! file as `<path>.kompose-dr-<time>.bak`.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use super::stream::copy_archive;
use super::{PlanItem, RestoreContext, Target, open_stored, progress_bar};
use crate::restore::plan::Choice;

fn target_path(ctx: &RestoreContext<'_>, c: &Choice) -> Result<PathBuf, String> {
    let original = c
        .artifact
        .file
        .as_ref()
        .map(|f| PathBuf::from(&f.path))
        .or_else(|| {
            let name = c.source.trim_start_matches("files/");
            ctx.config
                .files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.path.clone())
        })
        .ok_or_else(|| format!("{}: the manifest records no path: pass --to PATH", c.source))?;
    Ok(match &ctx.options.to {
        Some(to) if to.is_dir() => to.join(original.file_name().unwrap_or_default()),
        Some(to) => to.clone(),
        None => original,
    })
}

/// Checks the target: an existing file needs `--replace`.
pub fn preflight(ctx: &RestoreContext<'_>, c: &Choice) -> Result<(Target, bool), String> {
    let path = target_path(ctx, c)?;
    let exists = path.symlink_metadata().is_ok();
    if exists && !ctx.options.replace {
        return Err(format!(
            "{} exists: nothing was changed. Write it elsewhere with --to PATH, or replace it with --replace \
             (the current file is kept as {}.kompose-dr-<time>.bak)",
            path.display(),
            path.display()
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        return Err(format!(
            "{}: the directory {} does not exist",
            c.source,
            parent.display()
        ));
    }
    Ok((Target::File { path }, exists))
}

/// Restores one file.
pub async fn restore(ctx: &RestoreContext<'_>, item: &PlanItem) -> Result<(u64, String), String> {
    let Target::File { path } = item.target() else {
        unreachable!("file item")
    };
    let path = path.clone();
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(
        ".{name}.kompose-dr-{:08x}.tmp",
        rand::random::<u32>()
    ));
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let meta = item.choice.artifact.file.clone();
    let (t, p) = (tmp.clone(), path.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<(u64, Option<PathBuf>), String> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&t)
            .map_err(|e| format!("cannot create {}: {e}", t.display()))?;
        let bytes = copy_archive(stored, &ids, &mut f).map_err(|e| e.to_string())?;
        if let Some(m) = &meta {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode))
                .map_err(|e| format!("cannot set the mode of {}: {e}", t.display()))?;
            if let Err(e) = std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid))
                && nix::unistd::geteuid().is_root()
            {
                return Err(format!("cannot set the owner of {}: {e}", t.display()));
            }
            f.set_modified(m.mtime.into())
                .map_err(|e| format!("cannot set the mtime of {}: {e}", t.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", t.display()))?;
        drop(f);
        let mut bak = None;
        if p.symlink_metadata().is_ok() {
            let b = PathBuf::from(format!(
                "{}.kompose-dr-{}.bak",
                p.display(),
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ));
            std::fs::hard_link(&p, &b)
                .map_err(|e| format!("cannot keep {} as {}: {e}", p.display(), b.display()))?;
            bak = Some(b);
        }
        std::fs::rename(&t, &p)
            .map_err(|e| format!("cannot move the restored file into {}: {e}", p.display()))?;
        if let Some(dir) = p.parent() {
            let _ = crate::storage::local::sync_dir(dir);
        }
        Ok((bytes, bak))
    })
    .await
    .map_err(|e| format!("restore thread failed: {e}"))?;
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
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!("{e}; {} is unchanged", path.display()))
        }
    }
}
