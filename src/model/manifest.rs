//! The snapshot manifest: plaintext JSON at `snapshots/<ID>.json`, written
//! last, the commit point of a snapshot (docs/DESIGN.md §4).
//!
//! It lists what each artifact is and where it is stored, with sizes and
//! the sha256 of the stored bytes, so that listing, pruning and integrity
//! checks work without a private key. Nothing derived from the data's
//! content is in it (row counts and such live in the encrypted facts
//! sidecar) and no secret ever is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Status of a whole snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Every source succeeded.
    Ok,
    /// Some source failed; the others are good.
    Partial,
}

/// Status of one artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactStatus {
    /// Stored completely and the source reported success.
    Ok,
    /// Not stored (the error says why).
    Failed,
}

/// What kind of payload an artifact holds, and so how to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// `pg_dump -Fc` of one database: `pg_restore`.
    PostgresDump,
    /// `pg_dumpall --globals-only`: `psql -f`.
    PostgresGlobals,
    /// tar of Redis' `appendonlydir/`.
    RedisAof,
    /// tar holding Redis' `dump.rdb`.
    RedisRdb,
    /// One file, as is.
    File,
    /// `pg_basebackup -F tar` of the whole server (`postgres/cluster`).
    PostgresCluster,
    /// tar of a directory tree or a named volume (`directories/<name>`):
    /// modes, owners, mtimes and symlinks kept; SQLite databases inside
    /// copied with the online backup API.
    Directory,
    /// tar of kompose-dr's own configuration (source `config`): the
    /// configuration file, its policies and drills, and the secret files
    /// it names, under their paths on the host relative to `/`; never the
    /// age identity. `kompose-dr bootstrap` writes it back.
    Config,
}

impl ArtifactKind {
    /// The file-name extension of the stored archive.
    pub fn extension(self) -> &'static str {
        match self {
            ArtifactKind::PostgresDump => "dump.zst.age",
            ArtifactKind::PostgresGlobals => "sql.zst.age",
            ArtifactKind::RedisAof
            | ArtifactKind::RedisRdb
            | ArtifactKind::PostgresCluster
            | ArtifactKind::Directory
            | ArtifactKind::Config => "tar.zst.age",
            ArtifactKind::File => "zst.age",
        }
    }
}

/// Ownership, mode and times of a backed-up file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The original path.
    pub path: String,
    /// Permission bits (`0o600` for acme.json).
    pub mode: u32,
    /// Numeric owner (uid) of the original file. Restore sets it again; failing
    /// to is an error only when running as root.
    pub uid: u32,
    /// Numeric group (gid) of the original file, restored with the owner.
    pub gid: u32,
    /// Modification time of the original file (UTC, nanoseconds kept), set
    /// again on the restored file.
    pub mtime: DateTime<Utc>,
}

/// One artifact of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// Source name: `postgres/<db>`, `postgres/globals`, `redis`, `files/<name>`.
    pub source: String,
    /// What the payload is: decides the archive's file extension and how
    /// restore and verify open it.
    pub kind: ArtifactKind,
    /// Key of the stored archive in the repository (absent when failed
    /// before anything was stored).
    pub path: Option<String>,
    /// The moment the artifact's data is consistent.
    pub captured_at: Option<DateTime<Utc>>,
    /// Bytes before compression.
    pub plaintext_bytes: u64,
    /// Size in bytes of the archive as this repository stores it (after zstd
    /// and age); 0 when the artifact failed here.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: Option<String>,
    /// Ok or failed.
    pub status: ArtifactStatus,
    /// Why it failed (secrets scrubbed).
    pub error: Option<String>,
    /// The tool that produced the payload (`pg_dump (PostgreSQL) 15.4`).
    pub tool_version: Option<String>,
    /// The server's version.
    pub server_version: Option<String>,
    /// Seconds spent on this artifact.
    pub duration_seconds: f64,
    /// File metadata, for `files/*`; for `directories/*`, the root
    /// directory's (its path, or `volume:<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileMeta>,
    /// Where a base backup (`postgres/cluster`) lies in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::model::wal::BasePosition>,
    /// The containers stopped or paused for the copy, and for how long
    /// (`directories/*` with `stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
    /// The sha256 of each piece of the stored bytes, so that a restore
    /// can check each piece before it reads it rather than the whole
    /// archive first. Absent in snapshots written before they were
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<Pieces>,
}

/// The digests of an archive's stored bytes, piece by piece: every piece
/// holds `bytes` bytes but the last, which holds the rest (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pieces {
    /// The size of a piece.
    pub bytes: u64,
    /// The sha256 of each piece in order, hex.
    pub sha256: Vec<String>,
}

impl Pieces {
    /// The smallest and largest piece size a manifest may record: a
    /// reader holds one piece in memory.
    pub const SIZES: std::ops::RangeInclusive<u64> = 4096..=64 * 1024 * 1024;

    /// The most pieces one artifact records (256 GiB of stored bytes in
    /// 16 MiB pieces, about 1 MiB of manifest): a larger archive records
    /// none and is checked whole, so that manifests stay small.
    pub const MAX: usize = 16 * 1024;

    /// How many pieces `stored_bytes` make.
    pub fn count_for(&self, stored_bytes: u64) -> u64 {
        stored_bytes.div_ceil(self.bytes.max(1))
    }
}

/// Containers kept still while a source was copied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Downtime {
    /// `stop` or `pause`.
    pub mode: String,
    /// The containers that were running and were stopped (or paused); the
    /// configured ones that were not running are not listed.
    pub containers: Vec<String>,
    /// Seconds from the first stop (or pause) until the last start (or
    /// unpause) returned.
    pub seconds: f64,
    /// Containers that could not be started (unpaused) again, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Artifact {
    /// A WAL record seen as an artifact (path, sizes, sha256), so that the
    /// readers and checks written for archives read it the same way.
    pub fn of_wal(r: &crate::model::wal::WalRecord) -> Artifact {
        Artifact {
            source: format!("wal/{}", r.name),
            kind: ArtifactKind::File,
            path: Some(r.path.clone()),
            captured_at: r.covered_until,
            plaintext_bytes: r.plaintext_bytes,
            stored_bytes: r.stored_bytes,
            sha256: Some(r.sha256.clone()),
            status: ArtifactStatus::Ok,
            error: None,
            tool_version: None,
            server_version: None,
            duration_seconds: 0.0,
            file: None,
            wal: None,
            downtime: None,
            pieces: None,
        }
    }

    /// Whether it can be restored.
    pub fn is_ok(&self) -> bool {
        self.status == ArtifactStatus::Ok
    }
}

/// A stored archive referenced by the manifest that is not itself a source
/// (the facts sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Key in the repository.
    pub path: String,
    /// Size in bytes of the stored object (compressed and encrypted).
    pub stored_bytes: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub version: u32,
    /// Snapshot id, derived from the time the run started (UTC); the manifest
    /// is `snapshots/<ID>.json` and the data lies under `data/<ID>/`.
    pub id: String,
    /// The repository this manifest describes.
    pub repository: String,
    /// Host that made it.
    pub hostname: String,
    /// kompose-dr version that made it.
    pub tool_version: String,
    /// The policy it ran under, if any.
    pub policy: Option<String>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run finished (just before commit).
    pub finished_at: DateTime<Utc>,
    /// Ok or partial.
    pub status: SnapshotStatus,
    /// Every artifact attempted, good or failed.
    pub artifacts: Vec<Artifact>,
    /// The encrypted facts sidecar.
    pub facts: Option<StoredObject>,
    /// The stack that wrote it: the id in the marker of the repository it
    /// was committed to (docs/DESIGN.md §10). Absent in snapshots written
    /// before stack ids, which belong to the repository's own stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The snapshot of the same stack that was the newest in that
    /// repository when this one was committed: a snapshot deleted other
    /// than by prune shows as a broken link. Absent for the first one, and
    /// in snapshots written before the link existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl Manifest {
    /// Total bytes stored by the snapshot.
    pub fn stored_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.stored_bytes).sum::<u64>()
            + self.facts.as_ref().map_or(0, |f| f.stored_bytes)
    }
}

/// Manifests for unit tests (restore plans, retention).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::model::source_name::SourceName;

    /// A UTC time from RFC 3339.
    pub fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// An artifact of `source` captured at `at`, good or failed.
    pub fn artifact(source: &str, at: &str, ok: bool) -> Artifact {
        let kind = match source {
            SourceName::POSTGRES_GLOBALS => ArtifactKind::PostgresGlobals,
            SourceName::POSTGRES_CLUSTER => ArtifactKind::PostgresCluster,
            SourceName::CONFIG => ArtifactKind::Config,
            "redis" => ArtifactKind::RedisAof,
            s if s.starts_with("files/") => ArtifactKind::File,
            s if s.starts_with("directories/") => ArtifactKind::Directory,
            _ => ArtifactKind::PostgresDump,
        };
        Artifact {
            source: source.into(),
            kind,
            path: ok.then(|| format!("data/x/{source}")),
            captured_at: Some(t(at)),
            plaintext_bytes: 10,
            stored_bytes: 5,
            sha256: ok.then(|| "0".repeat(64)),
            status: if ok {
                ArtifactStatus::Ok
            } else {
                ArtifactStatus::Failed
            },
            error: (!ok).then(|| "boom".into()),
            tool_version: None,
            server_version: None,
            duration_seconds: 0.0,
            file: None,
            wal: None,
            downtime: None,
            pieces: None,
        }
    }

    /// A snapshot started at `at`; the archives are where kompose-dr puts
    /// them (`data/<id>/<kind>/<name>.<ext>`, plain names only).
    pub fn manifest(id: &str, at: &str, mut artifacts: Vec<Artifact>) -> Manifest {
        for a in &mut artifacts {
            if a.path.is_some() {
                let (dir, name) = a.source.split_once('/').unwrap_or((&a.source, &a.source));
                a.path = Some(format!("data/{id}/{dir}/{name}.{}", a.kind.extension()));
            }
        }
        Manifest {
            version: MANIFEST_VERSION,
            id: id.into(),
            repository: "local".into(),
            hostname: "h".into(),
            tool_version: "0".into(),
            policy: None,
            started_at: t(at),
            finished_at: t(at),
            status: SnapshotStatus::Ok,
            artifacts,
            facts: None,
            stack: None,
            previous: None,
        }
    }
}
