//! What this host committed to each repository, kept on the host
//! (`state_dir/repositories/<hash of the location>.json`, 0600 in a 0700
//! directory), not in the store: whoever can write to the store can
//! delete its newest snapshot, and no later snapshot names that one. The
//! host's record does: `check` and `snapshots` name a newest snapshot that
//! vanished, and a repository whose newest snapshot is older than the one
//! this host wrote. It also remembers that this host signs there, so that
//! a marker stripped of its signature is never read as one written before
//! signing.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::Repository;
use crate::model::manifest::Manifest;

/// The host's record of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The repository's configured name, for people reading the file.
    pub repository: String,
    /// Where it is (the record's file is named after it).
    pub location: String,
    /// The stack of the newest snapshot.
    pub stack: Option<String>,
    /// The newest snapshot this host committed there.
    pub newest: String,
    /// When that snapshot started (ids of one second do not sort by time).
    #[serde(default)]
    pub newest_started_at: Option<DateTime<Utc>>,
    /// When it was committed.
    pub committed_at: DateTime<Utc>,
    /// Whether this host signed it.
    pub signed: bool,
}

/// The record's file for the repository at `location`.
fn file(dir: &Path, location: &str) -> PathBuf {
    let digest = hex::encode(sha2::Sha256::digest(location.as_bytes()));
    dir.join(format!("{}.json", &digest[..32]))
}

/// Reads the record of `location`; `None` when there is none or it cannot
/// be read (said in the log: the record only adds checks).
pub fn read(dir: &Path, location: &str) -> Option<Seen> {
    let path = file(dir, location);
    let body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read this host's record of the repository");
            return None;
        }
    };
    match serde_json::from_slice::<Seen>(&body) {
        Ok(s) if s.location == location => Some(s),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "this host's record of the repository is damaged: it is rewritten at the next backup");
            None
        }
    }
}

/// Writes `seen` (atomically: a temporary file, fsync, rename).
pub fn write(dir: &Path, seen: &Seen) -> std::io::Result<()> {
    crate::storage::local::create_dir_private(dir)?;
    let path = file(dir, &seen.location);
    let tmp = path.with_extension(format!("{:08x}.tmp", rand::random::<u32>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(seen).expect("a record serialises"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::storage::local::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Repository {
    /// This host's record of the repository, if it keeps one.
    pub fn seen(&self) -> Option<Seen> {
        let dir = self.trust.seen_dir.as_ref()?;
        read(dir, &self.location())
    }

    /// Records `manifest`, just committed here (by a backup, or by a copy),
    /// as the newest this host wrote here, unless the record names a newer
    /// one (by start time: ids of one second do not sort by time). A
    /// failure is logged: the snapshot is committed all the same.
    pub fn remember(&self, manifest: &Manifest) {
        let Some(dir) = &self.trust.seen_dir else {
            return;
        };
        let location = self.location();
        if let Some(seen) = read(dir, &location)
            && let Some(at) = seen.newest_started_at
            && (at, seen.newest.as_str()) > (manifest.started_at, manifest.id.as_str())
        {
            return;
        }
        let seen = Seen {
            repository: self.name.clone(),
            location,
            stack: manifest.stack.clone(),
            newest: manifest.id.clone(),
            newest_started_at: Some(manifest.started_at),
            committed_at: Utc::now(),
            signed: self.trust.signing_key.is_some(),
        };
        if let Err(e) = write(dir, &seen) {
            tracing::warn!(
                repository = %self.name,
                dir = %dir.display(),
                error = %e,
                "cannot record the newest snapshot in the state directory: a deleted newest snapshot will not show; \
                 make state_dir writable"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_private_and_keyed_by_location() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state/repositories");
        let seen = Seen {
            repository: "local".into(),
            location: "/srv/repo".into(),
            stack: None,
            newest: "20261201T030000Z-abcdef".into(),
            newest_started_at: None,
            committed_at: Utc::now(),
            signed: true,
        };
        write(&d, &seen).unwrap();
        assert_eq!(read(&d, "/srv/repo"), Some(seen));
        assert_eq!(read(&d, "/srv/other"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&file(&d, "/srv/repo")), 0o600);
    }
}
