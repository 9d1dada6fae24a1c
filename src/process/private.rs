//! Private working directories in `$TMPDIR`: 0700, named for the process
//! that made them (`kompose-dr-scratch-<pid>-…`), so that those a killed
//! kompose-dr left (a scratch server's data, a restore's plaintext spool,
//! a dump's FIFOs) are removed by the next one that makes one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The prefix of every such directory, so leftovers can be recognised.
pub const PREFIX: &str = "kompose-dr-scratch-";

/// Where they are made: `$TMPDIR`, else `/tmp`.
pub fn root() -> PathBuf {
    std::env::temp_dir()
}

/// A new private directory (0700) in [`root`], after removing those of
/// kompose-dr processes that are gone.
pub fn tempdir() -> std::io::Result<tempfile::TempDir> {
    let root = root();
    sweep_dead(&root);
    // The pid in the name says whose it is, for the next sweep.
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&root)?;
    // Whatever the umask did.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Removes the directories in `root` of kompose-dr processes that no
/// longer run.
fn sweep_dead(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = super::is_gone(pid);
        let ours = e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink());
        if gone && ours {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::info!(dir = %e.path().display(), pid, "removed the private directory of a killed kompose-dr")
                }
                Err(err) => {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove the private directory of a killed kompose-dr")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_is_0700_and_named_for_its_process() {
        let dir = tempdir().unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("{PREFIX}{}-", std::process::id())),
            "{name}"
        );
    }
}
