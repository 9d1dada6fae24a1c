//! Private key files — the age identity and the signing key — are read
//! only while nobody but their owner can read them, as ssh refuses a
//! private key that group or others can read. The refusal names the file,
//! its mode and the `chmod` that fixes it.
//!
//! The mode is taken from the open file (`fstat`), so what is checked is
//! what is read. A signing key from a systemd credential is not a file the
//! operator keeps (systemd protects it) and is not checked.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The mode bits that must be clear on a private key file: read by group,
/// read by others.
pub const READABLE_BY_OTHERS: u32 = 0o044;

/// Why a private key file was not read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others can read it.
    #[error(
        "the {what} {} is readable by group or others (mode {mode:04o}): a private key must be readable by its owner only; run `chmod 600 {0}`",
        path.display()
    )]
    TooOpen {
        /// Which key (`identity file`, `signing key file`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It could not be opened, inspected or read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for KeyFileError {
    /// A key file to fix or to name: the operator's to change (exit 2).
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Usage
    }
}

/// Refuses `mode` (of the file at `path`) if group or others can read it.
fn check_mode(path: &Path, what: &'static str, mode: u32) -> Result<u32, KeyFileError> {
    let mode = mode & 0o7777;
    if mode & READABLE_BY_OTHERS != 0 {
        return Err(KeyFileError::TooOpen {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    Ok(mode)
}

/// The permission bits of the key file at `path` (what `what` names in
/// messages), refused if group or others can read it. Reads nothing.
pub fn check(path: &Path, what: &'static str) -> Result<u32, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    check_mode(path, what, meta.permissions().mode())
}

/// The contents of the key file at `path`, refused before they are read if
/// group or others can read it.
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, KeyFileError> {
    let failed = |source| KeyFileError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    check_mode(path, what, meta.permissions().mode())?;
    let mut body = Vec::new();
    file.read_to_end(&mut body).map_err(failed)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_key_only_its_owner_reads_is_read() {
        for mode in [0o600, 0o400, 0o700, 0o620] {
            let (_dir, path) = key(mode);
            assert_eq!(read(&path, "identity file").unwrap(), b"secret\n");
            assert_eq!(check(&path, "identity file").unwrap(), mode);
        }
    }

    #[test]
    fn a_key_group_or_others_can_read_is_refused_with_the_chmod() {
        for mode in [0o644, 0o640, 0o604, 0o444] {
            let (_dir, path) = key(mode);
            let e = read(&path, "signing key file").unwrap_err();
            assert!(
                matches!(e, KeyFileError::TooOpen { mode: m, .. } if m == mode),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("mode {mode:04o}"))
                    && text.contains(&format!("`chmod 600 {}`", path.display()))
                    && text.contains("signing key file"),
                "{text}"
            );
            assert!(matches!(
                check(&path, "signing key file"),
                Err(KeyFileError::TooOpen { .. })
            ));
        }
    }

    #[test]
    fn a_missing_key_names_the_file_and_keeps_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let e = read(&path, "identity file").unwrap_err();
        let KeyFileError::Read { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("cannot read the identity file"));
        assert_eq!(
            crate::error::Classify::class(&e),
            crate::error::Class::Usage
        );
    }
}
