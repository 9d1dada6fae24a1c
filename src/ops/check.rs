//! `check`: repository integrity, with or without the key.
//!
//! Without a key: every manifest parses, every archive it names exists with
//! the recorded size and sha256 (hashed streaming), and data that no
//! manifest names is reported. With `--read-data` and the identity, every
//! archive is also decrypted and decompressed end to end (age
//! authentication and zstd frame checksums), no further than the sizes the
//! manifest records: an object longer than `stored_bytes`, or whose
//! plaintext grows past `plaintext_bytes`, is reported as soon as that
//! shows, not after reading it all.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::model::manifest::Artifact;
use crate::pipeline::Expected;
use crate::repository::{Repository, RepositoryError};
use crate::restore::stream::{VerifyingReader, copy_archive};

/// One damaged thing.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// The snapshot, if any.
    pub snapshot: Option<String>,
    /// The source (or `facts`, or the manifest key).
    pub source: String,
    /// Key of the damaged object in the repository: an archive, the facts
    /// sidecar or a manifest.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The result of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Name of the repository checked (`--repository`, or the first configured
    /// one that answers).
    pub repository: String,
    /// Snapshots whose manifest parsed.
    pub snapshots: usize,
    /// How many stored objects were checked: every good artifact's archive and
    /// each snapshot's facts sidecar.
    pub archives: usize,
    /// Whether archives were also decrypted and decompressed.
    pub read_data: bool,
    /// Every damaged manifest or object; empty when the repository is sound.
    pub damaged: Vec<Damage>,
    /// Objects under `data/` that no manifest names (unfinished or
    /// abandoned runs; prune removes them).
    pub unreferenced: Vec<String>,
    /// The archived WAL of each cluster: how far it goes, and its gaps.
    pub wal: Vec<WalReport>,
    /// Snapshots of other stacks in the repository (checked like this
    /// stack's, never used unless named).
    pub other_stacks: Vec<String>,
    /// Snapshots gone other than through prune: a later snapshot names
    /// each as its predecessor.
    pub vanished: Vec<crate::repository::listing::Vanished>,
    /// The newest snapshot this host committed here, if it is gone.
    pub behind: Option<crate::repository::listing::Behind>,
    /// Whether nothing is damaged (`damaged` is empty) and no deletion
    /// shows; unreferenced objects do not count against it. Decides the
    /// exit status.
    pub ok: bool,
}

/// The archived WAL of one cluster, as `check` found it.
#[derive(Debug, Clone, Serialize)]
pub struct WalReport {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// Archived files (segments, partial segments, histories) with a record.
    pub files: usize,
    /// The oldest archived segment.
    pub first: Option<String>,
    /// The newest archived segment.
    pub last: Option<String>,
    /// Every commit before this moment (server time) is archived.
    pub covered_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Segments missing between a retained base backup (or the first
    /// archived segment) and the newest: recovery cannot cross them.
    pub gaps: Vec<String>,
}

/// Checks the archived WAL: every record and its file, and continuity from
/// every retained base backup to the newest segment.
async fn check_wal(
    repo: &Repository,
    snapshots: &[crate::model::manifest::Manifest],
    identities: &Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>,
    damaged: &mut Vec<Damage>,
    referenced: &mut BTreeSet<String>,
) -> Result<(Vec<WalReport>, usize), RepositoryError> {
    use crate::model::wal::WalArchive;
    let mut reports = Vec::new();
    let mut checked = 0;
    for id in repo.wal_clusters().await? {
        let (records, bad) = repo.wal_records(&id).await?;
        damaged.extend(bad.into_iter().map(|d| Damage {
            snapshot: None,
            source: "wal".into(),
            path: d.key,
            problem: d.message,
        }));
        for r in &records {
            referenced.insert(r.path.clone());
            checked += 1;
            damaged.extend(check_record(repo, r, identities).await);
        }
        let archive = WalArchive::from_records(records.iter().cloned());
        let bases = bases_of(snapshots, &id, &archive);
        let gaps = gaps_of(&archive, &bases, damaged);
        let size = records.first().map(|r| r.segment_size).unwrap_or(16 << 20);
        reports.push(WalReport {
            system_identifier: id.clone(),
            files: records.len(),
            first: archive.segments.keys().next().map(|s| s.name(size)),
            last: archive.segments.keys().next_back().map(|s| s.name(size)),
            covered_until: archive.covered_until(),
            gaps: gaps.into_iter().collect(),
        });
    }
    Ok((reports, checked))
}

/// Checks one archived WAL file against its record: the damage, if any.
async fn check_record(
    repo: &Repository,
    r: &crate::model::wal::WalRecord,
    identities: &Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>,
) -> Option<Damage> {
    let a = crate::model::manifest::Artifact::of_wal(r);
    let plaintext = Expected::Exactly(a.plaintext_bytes);
    let problem = check_object(repo, &a, plaintext, identities).await.err()?;
    if superseded(repo, r).await {
        return None;
    }
    Some(Damage {
        snapshot: None,
        source: format!("wal/{}", r.name),
        path: r.path.clone(),
        problem: problem.to_string(),
    })
}

/// Whether a partial segment's record no longer names the file that was
/// checked: the archiver shipped a newer copy (or the complete segment)
/// and removed the old one while the check read it.
async fn superseded(repo: &Repository, r: &crate::model::wal::WalRecord) -> bool {
    use crate::repository::wal::RecordAgainError;
    if r.kind != crate::model::wal::WalKind::Partial {
        return false;
    }
    match repo.wal_record_again(r).await {
        Ok(again) => again.path != r.path,
        Err(RecordAgainError::Gone(_)) => true,
        Err(RecordAgainError::Refused { .. }) => false,
    }
}

/// The base backups of cluster `id` that snapshots retain, by snapshot id;
/// without any, the first archived segment (snapshot id empty).
fn bases_of(
    snapshots: &[crate::model::manifest::Manifest],
    id: &str,
    archive: &crate::model::wal::WalArchive,
) -> Vec<(String, crate::model::wal::BasePosition)> {
    let mut bases: Vec<(String, crate::model::wal::BasePosition)> = snapshots
        .iter()
        .flat_map(|m| {
            m.artifacts
                .iter()
                .filter(|a| a.is_ok())
                .filter_map(|a| a.wal.clone())
                .filter(|w| w.system_identifier == id)
                .map(|w| (m.id.clone(), w))
        })
        .collect();
    if bases.is_empty()
        && let Some(first) = archive.segments.values().next()
    {
        let seg = first.segment().expect("a segment");
        bases.push((
            String::new(),
            crate::model::wal::BasePosition {
                system_identifier: id.to_owned(),
                timeline: seg.timeline,
                start_lsn: seg.start(first.segment_size),
                end_lsn: seg.start(first.segment_size),
                segment_size: first.segment_size,
            },
        ));
    }
    bases
}

/// The segments missing after any of `bases`, each reported as damage once.
fn gaps_of(
    archive: &crate::model::wal::WalArchive,
    bases: &[(String, crate::model::wal::BasePosition)],
    damaged: &mut Vec<Damage>,
) -> BTreeSet<String> {
    let mut gaps = BTreeSet::new();
    for (snapshot, base) in bases {
        for g in archive.gaps(base) {
            if gaps.insert(g.clone()) {
                damaged.push(Damage {
                    snapshot: (!snapshot.is_empty()).then(|| snapshot.clone()),
                    source: "wal".into(),
                    path: g.clone(),
                    problem: format!(
                        "WAL segment {g} is missing: {} cannot be recovered past it; take a new base backup                              (kompose-dr backup --source postgres/cluster)",
                        if snapshot.is_empty() {
                            "the archived WAL".to_owned()
                        } else {
                            format!("base backup {snapshot}")
                        }
                    ),
                });
            }
        }
    }
    gaps
}

/// What is wrong with one stored object.
#[derive(Debug, thiserror::Error)]
enum ObjectProblem {
    /// The store could not open it.
    #[error(transparent)]
    Open(#[from] crate::storage::StorageError),
    /// Reading it failed midway.
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    /// It is longer than the manifest says.
    #[error("more than the {0} bytes the manifest says: it was replaced or is damaged")]
    TooLong(u64),
    /// It is shorter than the manifest says.
    #[error("{found} bytes, the manifest says {recorded}")]
    Size {
        /// Bytes read.
        found: u64,
        /// Bytes the manifest records.
        recorded: u64,
    },
    /// Its sha256 is not the manifest's.
    #[error("sha256 {0} differs from the manifest's")]
    Sha256(String),
    /// The reader task ended without an answer.
    #[error("reader failed: {0}")]
    Reader(#[source] tokio::task::JoinError),
    /// It does not decrypt, decompress or verify.
    #[error(transparent)]
    Archive(#[from] crate::restore::stream::ReadError),
}

/// Checks one object: hashed without a key, read end to end with one.
async fn check_object(
    repo: &Repository,
    a: &Artifact,
    plaintext: Expected,
    identities: &Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>,
) -> Result<(), ObjectProblem> {
    match identities {
        None => hash_object(repo, a).await,
        Some(ids) => read_object(repo, a, plaintext, ids.clone()).await,
    }
}

async fn hash_object(repo: &Repository, a: &Artifact) -> Result<(), ObjectProblem> {
    let path = a.path.as_deref().unwrap_or_default();
    let mut r = repo.backend().open(path).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = r.read(&mut buf).await.map_err(ObjectProblem::Read)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        if n > a.stored_bytes {
            // No need to read the rest of something longer than it must be.
            return Err(ObjectProblem::TooLong(a.stored_bytes));
        }
    }
    if n != a.stored_bytes {
        return Err(ObjectProblem::Size {
            found: n,
            recorded: a.stored_bytes,
        });
    }
    let sha = hex::encode(h.finalize());
    if a.sha256.as_deref() != Some(sha.as_str()) {
        return Err(ObjectProblem::Sha256(sha));
    }
    Ok(())
}

/// Decrypts and decompresses an object to nowhere: every check of a restore
/// (sizes, sha256, age, zstd), no more plaintext than `plaintext` allows.
async fn read_object(
    repo: &Repository,
    a: &Artifact,
    plaintext: Expected,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<(), ObjectProblem> {
    let path = a.path.as_deref().unwrap_or_default();
    let r = tokio_util::io::SyncIoBridge::new(repo.backend().open(path).await?);
    // By pieces where the manifest records them: their digests too.
    let stored = if a.pieces.is_some() {
        VerifyingReader::by_pieces(r, a, Box::new(|_| {}))
            .map(VerifyingReader::and_whole)
            .ok_or_else(|| {
                ObjectProblem::Read(std::io::Error::other("its pieces cannot be read"))
            })?
    } else {
        VerifyingReader::new(r, a, Box::new(|_| {}))
    };
    let stored = stored.with_plaintext(plaintext);
    tokio::task::spawn_blocking(move || {
        copy_archive(stored, &identities, &mut std::io::sink()).map(|_| ())
    })
    .await
    .map_err(ObjectProblem::Reader)??;
    Ok(())
}

/// The objects a snapshot names, each with the bound of its plaintext: the
/// good artifacts' archives (exactly their `plaintext_bytes`), then the
/// facts sidecar, checked like an artifact.
fn objects_of(m: &crate::model::manifest::Manifest) -> Vec<(Artifact, Expected)> {
    let mut objects: Vec<(Artifact, Expected)> = m
        .artifacts
        .iter()
        .filter(|a| a.is_ok())
        .map(|a| (a.clone(), Expected::Exactly(a.plaintext_bytes)))
        .collect();
    if let Some(f) = &m.facts {
        let mut a = m
            .artifacts
            .first()
            .cloned()
            .expect("a committed snapshot has artifacts");
        a.source = "facts".into();
        a.path = Some(f.path.clone());
        a.stored_bytes = f.stored_bytes;
        a.sha256 = Some(f.sha256.clone());
        a.pieces = None;
        // The manifest records no plaintext size for the sidecar: it is
        // bounded as every reader of it bounds it.
        objects.push((a, Expected::AtMost(crate::storage::MAX_SMALL_OBJECT)));
    }
    objects
}

/// Checks a repository; `identities` given means `--read-data`.
pub async fn run(
    repo: &Repository,
    identities: Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>,
) -> Result<CheckReport, RepositoryError> {
    let listing = repo.listing().await?;
    for v in &listing.vanished {
        tracing::error!(snapshot = %v.id, named_by = %v.named_by, "snapshot vanished other than through prune");
    }
    if let Some(b) = &listing.behind {
        tracing::error!(snapshot = %b.host_newest, "the newest snapshot this host committed here is gone");
    }
    let snapshots: Vec<_> = listing
        .ours
        .iter()
        .chain(&listing.others)
        .cloned()
        .collect();
    let mut damaged: Vec<Damage> = listing
        .damaged
        .iter()
        .cloned()
        .map(|d| Damage {
            snapshot: None,
            source: "manifest".into(),
            path: d.key,
            problem: d.message,
        })
        .collect();
    let mut referenced = BTreeSet::new();
    let mut archives = 0;
    for m in &snapshots {
        for (a, plaintext) in objects_of(m) {
            let path = a.path.clone().unwrap_or_default();
            referenced.insert(path.clone());
            archives += 1;
            match check_object(repo, &a, plaintext, &identities).await {
                Ok(()) => tracing::debug!(snapshot = %m.id, source = %a.source, "intact"),
                Err(problem) => {
                    tracing::error!(snapshot = %m.id, source = %a.source, path = %path, "{problem}");
                    damaged.push(Damage {
                        snapshot: Some(m.id.clone()),
                        source: a.source.clone(),
                        path,
                        problem: problem.to_string(),
                    });
                }
            }
        }
    }
    let (wal, wal_checked) =
        check_wal(repo, &snapshots, &identities, &mut damaged, &mut referenced).await?;
    archives += wal_checked;
    let unreferenced: Vec<String> = repo
        .backend()
        .list(crate::storage::keys::DATA)
        .await
        .map_err(|source| RepositoryError::Storage {
            name: repo.name().to_owned(),
            source,
        })?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !referenced.contains(k))
        .collect();
    Ok(CheckReport {
        repository: repo.name().to_owned(),
        snapshots: snapshots.len(),
        archives,
        read_data: identities.is_some(),
        ok: damaged.is_empty() && !listing.deletion_shows(),
        wal,
        damaged,
        unreferenced,
        other_stacks: listing.others.iter().map(|m| m.id.clone()).collect(),
        vanished: listing.vanished,
        behind: listing.behind,
    })
}

/// The lines that name deleted snapshots: those a later snapshot names as
/// its predecessor, and the newest one this host committed, when gone.
pub fn deletions(
    vanished: &[crate::repository::listing::Vanished],
    behind: Option<&crate::repository::listing::Behind>,
) -> Vec<String> {
    let mut out: Vec<String> = vanished
        .iter()
        .map(|v| {
            format!(
                "  VANISHED  {} (snapshot {} names it as its predecessor; prune did not remove it: someone deleted it from the store)",
                v.id, v.named_by
            )
        })
        .collect();
    if let Some(b) = behind {
        out.push(format!(
            "  BEHIND  the newest snapshot this host committed here, {}, is gone; the repository's newest is {}: \
             it was deleted or the store rolled back, and a restore would take an older snapshot",
            b.host_newest,
            b.repository_newest.as_deref().unwrap_or("none")
        ));
    }
    out
}
