//! `copy`: snapshots from one repository to another, as stored — no key is
//! needed, the archives are already encrypted — so that a night the
//! offsite upload failed can be filled in (docs/DESIGN.md §12).
//!
//! Every snapshot is copied the way a backup commits one:
//!
//! 1. its manifest is read from the source with every rule a reader applies
//!    (signature, validation: [`Repository::stored_manifest`]), so a hostile
//!    source cannot name keys or objects kompose-dr would not write;
//! 2. each object it says the source holds (good artifacts and the facts
//!    sidecar) is streamed piece by piece into an [`ObjectWriter`], its
//!    sha256 and size computed on the way and compared with the manifest's
//!    before the object is finished — a mismatch aborts the object, and the
//!    snapshot is not committed;
//! 3. the manifest is written last, byte for byte, beside its signature
//!    ([`Repository::commit_stored`]), while the target's writer lock is
//!    held and was just confirmed.
//!
//! The target is untrusted input too. A snapshot counts as present there
//! only if its manifest reads, validates and verifies as every reader
//! checks it ([`Repository::snapshots`]); a manifest of the same id that
//! readers refuse (garbage, wrongly signed) is replaced — signature first,
//! then the manifest ([`Repository::replace_stored`]) — and the report says
//! so (`replaced`).
//!
//! A copy killed midway leaves no snapshot in the target, only finished
//! objects; run again, it keeps those whose size and sha256 match the
//! manifest and finishes. The target's object is read back and hashed, in
//! a local directory and on S3 alike: a download costs less than uploading
//! again (an upload is usually the slower direction, and the source may be
//! remote too), keeps what a killed copy finished, and trusts nothing but
//! the bytes; an object of the wrong size is not read at all, and one
//! longer than the manifest says is read no further than that. Any object
//! that differs is copied again. Objects of a snapshot whose copy failed
//! stay unreferenced until `prune` removes them after its grace period.

pub mod backfill;

use std::collections::{BTreeMap, BTreeSet};

use bytes::BytesMut;
use serde::Serialize;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use crate::error::{Failure, Outcome};
use crate::model::manifest::Manifest;
use crate::repository::copy::StoredManifest;
use crate::repository::lock::RepoLock;
use crate::repository::{Repository, RepositoryError};
use crate::storage::{ObjectWriter, StorageError, keys};

/// The size of the pieces an object is copied in: memory stays at one
/// piece per copy, whatever the object's size.
const PIECE: usize = 256 << 10;

/// Which snapshots to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These snapshots (`--snapshot ID …`); one the target already has is
    /// skipped.
    Snapshots(Vec<String>),
    /// Every snapshot of the source the target lacks (`--missing`).
    Missing,
}

/// What to copy and how.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Which snapshots.
    pub selection: Selection,
    /// Only say what would be copied.
    pub dry_run: bool,
    /// How long to wait for another writer's lock on the target.
    pub lock_wait: std::time::Duration,
}

/// How one snapshot came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyStatus {
    /// Committed in the target by this run.
    Copied,
    /// The target already has it; nothing was done.
    Skipped,
    /// `--dry-run`: it would be copied.
    WouldCopy,
    /// Not committed in the target; `error` says why.
    Failed,
}

/// One snapshot in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCopy {
    /// The snapshot id.
    pub snapshot: String,
    /// Copied, skipped, would-copy or failed.
    pub status: CopyStatus,
    /// Objects (archives and the facts sidecar) streamed by this run.
    pub objects: usize,
    /// Objects the target already held (an interrupted copy's), kept.
    pub objects_present: usize,
    /// Bytes streamed by this run (or, with `--dry-run`, that would be).
    pub bytes: u64,
    /// Whether its manifest carries a signature.
    pub signed: bool,
    /// Why the target's manifest of this id was refused, when this run
    /// replaced it (or, with `--dry-run`, would).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a copy, as printed (`--json`) and logged.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The source repository's name.
    pub from: String,
    /// The target repository's name.
    pub to: String,
    /// Whether nothing was written (`--dry-run`).
    pub dry_run: bool,
    /// One entry per snapshot selected, oldest first.
    pub snapshots: Vec<SnapshotCopy>,
}

impl CopyReport {
    /// Snapshots that failed.
    pub fn failed(&self) -> usize {
        self.count(CopyStatus::Failed)
    }

    /// Snapshots whose refused manifest in the target was replaced (or,
    /// with `--dry-run`, would be).
    pub fn replaced(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|s| s.replaced.is_some())
            .count()
    }

    /// Snapshots with `status`.
    pub fn count(&self, status: CopyStatus) -> usize {
        self.snapshots.iter().filter(|s| s.status == status).count()
    }

    /// Exit 0 if nothing failed, else 1.
    pub fn outcome(&self) -> Outcome {
        Outcome::verdict(self.failed() == 0)
    }
}

/// Why one snapshot could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source or target repository failed (its message names it).
    #[error("{0}")]
    Repository(#[from] RepositoryError),
    /// An object read from the source is not what its manifest says.
    #[error(
        "snapshot {snapshot}: {key} in repository `{from}` is not what its manifest says ({found}; the manifest says {expected}): \
         it is damaged or was changed. Nothing of snapshot {snapshot} was committed in `{to}`; \
         run `kompose-dr check --read-data --repository {from}`"
    )]
    Mismatch {
        /// The snapshot.
        snapshot: String,
        /// The object's key.
        key: String,
        /// The source repository.
        from: String,
        /// The target repository.
        to: String,
        /// What was read: size and sha256.
        found: String,
        /// What the manifest says: size and sha256.
        expected: String,
    },
    /// Reading the source or writing the target failed.
    #[error("snapshot {snapshot}: {key}: {what} repository `{repository}`: {source}")]
    Storage {
        /// The snapshot.
        snapshot: String,
        /// The object's key.
        key: String,
        /// `reading from` or `writing to`.
        what: &'static str,
        /// The repository.
        repository: String,
        /// The storage error.
        source: StorageError,
    },
    /// The target's lease was lost before the commit.
    #[error(
        "snapshot {snapshot}: lost the lock of repository `{to}` (its lease could not be renewed, so another writer may hold it): not committed"
    )]
    LockLost {
        /// The snapshot.
        snapshot: String,
        /// The target repository.
        to: String,
    },
}

/// One object a manifest says the repository holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key (the one kompose-dr builds: the manifest was validated).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// sha256 of its bytes, hex.
    pub sha256: String,
}

/// The objects a (validated) manifest says its repository holds: the
/// archives of good artifacts, then the facts sidecar.
pub fn objects(m: &Manifest) -> Vec<Object> {
    let mut out: Vec<Object> = m
        .artifacts
        .iter()
        .filter(|a| a.is_ok())
        .filter_map(|a| {
            Some(Object {
                key: a.path.clone()?,
                size: a.stored_bytes,
                sha256: a.sha256.clone()?,
            })
        })
        .collect();
    if let Some(f) = &m.facts {
        out.push(Object {
            key: f.path.clone(),
            size: f.stored_bytes,
            sha256: f.sha256.clone(),
        });
    }
    out
}

/// The manifests a repository holds, by id: those every reader accepts
/// (present), and those readers refuse, with why (not present: a copy of
/// that id replaces them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// Ids whose manifest reads, validates and verifies.
    pub good: BTreeSet<String>,
    /// Ids whose manifest is refused, and why.
    pub damaged: BTreeMap<String, String>,
}

/// The id of the manifest at `key` (`snapshots/<ID>.json`), if it is one.
fn manifest_id(key: &str) -> Option<&str> {
    key.strip_prefix(keys::SNAPSHOTS)?.strip_suffix(".json")
}

/// Which snapshots `repo` holds: [`Repository::snapshots`], by id.
pub async fn held(repo: &Repository) -> Result<Held, RepositoryError> {
    // Any stack's snapshot that checks out is held: a copy never writes
    // over one.
    let listing = repo.listing().await?;
    let mut held = Held {
        good: listing
            .ours
            .into_iter()
            .chain(listing.others)
            .map(|m| m.id)
            .collect(),
        damaged: BTreeMap::new(),
    };
    for d in listing.damaged {
        if let Some(id) = manifest_id(&d.key) {
            held.damaged.insert(id.to_owned(), d.message);
        }
    }
    Ok(held)
}

/// What a copy will do: snapshots to copy (oldest first), those skipped
/// because the target has them, and those the source cannot give.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// To copy, oldest first.
    pub copy: Vec<Manifest>,
    /// Already in the target.
    pub skipped: Vec<String>,
    /// In the source but damaged there: `(id, why)`.
    pub damaged: Vec<(String, String)>,
}

/// Plans a copy from the source's good manifests (`good`) and damaged ones,
/// and the ids the target holds good manifests of (`in_target`). An
/// unknown `--snapshot` is a usage error.
pub fn plan(
    selection: &Selection,
    good: &[Manifest],
    damaged: &[crate::repository::DamagedManifest],
    in_target: &BTreeSet<String>,
    from: &str,
) -> Result<Plan, Failure> {
    let damaged_ids: BTreeMap<String, String> = damaged
        .iter()
        .map(|d| {
            let id = manifest_id(&d.key).unwrap_or(&d.key).to_owned();
            (id, d.message.clone())
        })
        .collect();
    let mut plan = Plan::default();
    match selection {
        Selection::Snapshots(ids) => {
            let mut seen = BTreeSet::new();
            for id in ids {
                if !seen.insert(id.as_str()) {
                    continue;
                }
                if !crate::model::time::is_snapshot_id(id) {
                    return Err(Failure::usage(format!(
                        "--snapshot {}: not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxx); `kompose-dr snapshots --repository {from}` lists them",
                        id.escape_debug()
                    )));
                }
                if in_target.contains(id) {
                    plan.skipped.push(id.clone());
                } else if let Some(m) = good.iter().find(|m| &m.id == id) {
                    plan.copy.push(m.clone());
                } else if let Some(why) = damaged_ids.get(id) {
                    plan.damaged.push((id.clone(), why.clone()));
                } else {
                    return Err(Failure::usage(format!(
                        "--snapshot {id}: repository `{from}` has no such snapshot; `kompose-dr snapshots --repository {from}` lists them"
                    )));
                }
            }
        }
        Selection::Missing => {
            plan.copy = good
                .iter()
                .filter(|m| !in_target.contains(&m.id))
                .cloned()
                .collect();
            plan.damaged = damaged_ids
                .into_iter()
                .filter(|(id, _)| !in_target.contains(id))
                .collect();
        }
    }
    plan.copy
        .sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    Ok(plan)
}

/// Copies the snapshots `opts` selects from `from` to `to`.
pub async fn copy(
    from: &Repository,
    to: &Repository,
    opts: &CopyOptions,
) -> Result<CopyReport, Failure> {
    if from.name() == to.name() {
        return Err(Failure::usage(format!(
            "--from and --to both name repository `{}`: copy needs two repositories",
            from.name()
        )));
    }
    let source_marker = from.marker().await?;
    let target_marker = to.marker().await?;
    if source_marker.recipients != target_marker.recipients {
        tracing::warn!(
            from = from.name(),
            to = to.name(),
            "the two repositories were created for different recipients; the copied archives open with the identities they were encrypted to"
        );
    }
    let (good, damaged) = from.snapshots().await?;
    for d in &damaged {
        tracing::warn!(repository = from.name(), key = %d.key, error = %d.message, "damaged manifest in the source");
    }
    let lock = if opts.dry_run {
        None
    } else {
        to.lock("copy", opts.lock_wait).await?
    };
    // A target written before stack ids takes the source's stack, so that
    // what is copied there is its own stack's.
    if !opts.dry_run
        && let Some(stack) = &source_marker.stack
    {
        to.adopt(stack).await?;
    }
    let target = held(to).await?;
    for (id, why) in &target.damaged {
        tracing::warn!(repository = to.name(), snapshot = %id, error = %why, "damaged manifest in the target: not counted as present");
    }
    let plan = plan(&opts.selection, &good, &damaged, &target.good, from.name())?;
    let mut report = CopyReport {
        from: from.name().to_owned(),
        to: to.name().to_owned(),
        dry_run: opts.dry_run,
        snapshots: not_copied(&plan, from.name()),
    };
    for m in &plan.copy {
        let replaces = target.damaged.get(&m.id).cloned();
        let entry = if opts.dry_run {
            dry_run(to, m, replaces).await
        } else {
            let commit = replaces.map_or(Commit::New, Commit::Replace);
            match copy_one(from, to, &m.id, commit, lock.as_ref()).await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(snapshot = %m.id, from = from.name(), to = to.name(), error = %e, "snapshot not copied");
                    failed(&m.id, e.to_string())
                }
            }
        };
        report.snapshots.push(entry);
    }
    let selected: Vec<&Manifest> = good
        .iter()
        .filter(|m| match &opts.selection {
            Selection::Missing => target.good.contains(&m.id),
            Selection::Snapshots(ids) => plan.skipped.contains(&m.id) && ids.contains(&m.id),
        })
        .collect();
    repair_held(from, to, &selected, opts, lock.as_ref(), &mut report).await;
    // Oldest first: an id starts with its time (to the second); within a
    // second the plan's order (by start time) stays.
    report
        .snapshots
        .sort_by(|a, b| a.snapshot.get(..16).cmp(&b.snapshot.get(..16)));
    Ok(report)
}

/// A snapshot the target holds a good manifest of counts as held only if
/// its data is there too, each object of the right size (a sha256 is
/// checked when an object is kept during a copy): the data of one that
/// lacks some is copied again, its manifest kept.
async fn repair_held(
    from: &Repository,
    to: &Repository,
    held: &[&Manifest],
    opts: &CopyOptions,
    lock: Option<&RepoLock>,
    report: &mut CopyReport,
) {
    for m in held {
        let id = &m.id;
        let present = present_sizes(to, id).await.unwrap_or_default();
        if objects(m)
            .iter()
            .all(|o| present.get(&o.key) == Some(&o.size))
        {
            continue;
        }
        tracing::warn!(snapshot = %id, to = to.name(), "the target holds this snapshot's manifest but not all of its data: copying the data again");
        let entry = if opts.dry_run {
            dry_run(to, m, None).await
        } else {
            copy_one(from, to, id, Commit::Keep, lock)
                .await
                .unwrap_or_else(|e| failed(id, e.to_string()))
        };
        report.snapshots.retain(|s| &s.snapshot != id);
        report.snapshots.push(entry);
    }
}

/// What a copy does with the target's manifest of the snapshot.
enum Commit {
    /// Writes it: the target has none.
    New,
    /// Writes it over the target's refused one, which was refused for this.
    Replace(String),
    /// Keeps the target's, which checks out (only its data was missing).
    Keep,
}

/// The report's entries for what the plan does not copy: skipped (the
/// target has it) and refused in the source.
fn not_copied(plan: &Plan, from: &str) -> Vec<SnapshotCopy> {
    let mut out: Vec<SnapshotCopy> = plan
        .skipped
        .iter()
        .map(|id| SnapshotCopy {
            snapshot: id.clone(),
            status: CopyStatus::Skipped,
            objects: 0,
            objects_present: 0,
            bytes: 0,
            signed: false,
            replaced: None,
            error: None,
        })
        .collect();
    for (id, why) in &plan.damaged {
        let error = format!(
            "snapshot {id} cannot be copied: its manifest in repository `{from}` is refused ({why}); run `kompose-dr check --repository {from}`"
        );
        tracing::error!(snapshot = %id, "{error}");
        out.push(failed(id, error));
    }
    out
}

fn failed(id: &str, error: String) -> SnapshotCopy {
    SnapshotCopy {
        snapshot: id.to_owned(),
        status: CopyStatus::Failed,
        objects: 0,
        objects_present: 0,
        bytes: 0,
        signed: false,
        replaced: None,
        error: Some(error),
    }
}

/// What copying `m` would stream, counting objects the target already has
/// with the right size as present (their sha256 is checked only when the
/// copy runs); `replaces` is why the target's manifest of that id is
/// refused, if it holds one.
async fn dry_run(to: &Repository, m: &Manifest, replaces: Option<String>) -> SnapshotCopy {
    let present = present_sizes(to, &m.id).await.unwrap_or_default();
    let mut entry = SnapshotCopy {
        snapshot: m.id.clone(),
        status: CopyStatus::WouldCopy,
        objects: 0,
        objects_present: 0,
        bytes: 0,
        signed: false,
        replaced: replaces,
        error: None,
    };
    for o in objects(m) {
        if present.get(&o.key) == Some(&o.size) {
            entry.objects_present += 1;
        } else {
            entry.objects += 1;
            entry.bytes += o.size;
        }
    }
    entry
}

/// The size of every finished object under the snapshot's data prefix in
/// `repo`.
async fn present_sizes(repo: &Repository, id: &str) -> Result<BTreeMap<String, u64>, StorageError> {
    Ok(repo
        .backend()
        .list(&keys::snapshot_data_prefix(id))
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect())
}

/// Copies one snapshot: its manifest read again (the bytes that will be
/// committed are the bytes checked), every object streamed and checked,
/// then the manifest committed — over the target's refused manifest of the
/// same id when `replaces` says why it was refused.
async fn copy_one(
    from: &Repository,
    to: &Repository,
    id: &str,
    commit: Commit,
    lock: Option<&RepoLock>,
) -> Result<SnapshotCopy, CopyError> {
    let stored: StoredManifest = from.stored_manifest(id).await?;
    let present = present_sizes(to, id)
        .await
        .map_err(|source| CopyError::Storage {
            snapshot: id.to_owned(),
            key: keys::snapshot_data_prefix(id),
            what: "listing",
            repository: to.name().to_owned(),
            source,
        })?;
    let mut entry = SnapshotCopy {
        snapshot: id.to_owned(),
        status: CopyStatus::Copied,
        objects: 0,
        objects_present: 0,
        bytes: 0,
        signed: stored.signature.is_some(),
        replaced: None,
        error: None,
    };
    tracing::info!(snapshot = %id, from = from.name(), to = to.name(), "copying snapshot");
    for o in objects(&stored.manifest) {
        if present.get(&o.key) == Some(&o.size) && already_there(to, &o).await {
            tracing::debug!(key = %o.key, "already in the target; kept");
            entry.objects_present += 1;
            continue;
        }
        if let Some(lock) = lock
            && lock.is_lost()
        {
            return Err(CopyError::LockLost {
                snapshot: id.to_owned(),
                to: to.name().to_owned(),
            });
        }
        copy_object(from, to, id, &o).await?;
        entry.objects += 1;
        entry.bytes += o.size;
    }
    // A lease is renewed (and checked by the store's clock) right before
    // the commit, as backup does.
    if let Some(lock) = lock
        && !lock.confirm().await
    {
        return Err(CopyError::LockLost {
            snapshot: id.to_owned(),
            to: to.name().to_owned(),
        });
    }
    match commit {
        Commit::Replace(why) => {
            tracing::warn!(snapshot = %id, to = to.name(), refused = %why, "replacing the target's damaged manifest");
            to.replace_stored(&stored).await?;
            entry.replaced = Some(why);
        }
        Commit::New => to.commit_stored(&stored).await?,
        Commit::Keep => {}
    }
    // This host wrote it there: a deletion of the target's newest shows.
    to.remember(&stored.manifest);
    if stored.signature.is_none() {
        tracing::warn!(snapshot = %id, to = to.name(), "copied an unsigned snapshot: readers of the target need --allow-unsigned for it");
    }
    tracing::info!(snapshot = %id, to = to.name(), objects = entry.objects, kept = entry.objects_present, bytes = entry.bytes, "snapshot copied");
    Ok(entry)
}

/// Whether an object of the right size the target already holds may be
/// kept: it is read back and its sha256 compared, on every backend (see
/// the module documentation for why re-reading rather than copying again).
async fn already_there(to: &Repository, o: &Object) -> bool {
    match sha256_of(to, &o.key, o.size).await {
        Ok(Some(sha)) if sha == o.sha256 => true,
        Ok(_) => {
            tracing::warn!(key = %o.key, repository = to.name(), "the target's object differs from the manifest; copying it again");
            false
        }
        Err(e) => {
            tracing::debug!(key = %o.key, error = %e, "cannot read back the target's object; copying it again");
            false
        }
    }
}

/// The sha256 of the object at `key`, if it holds exactly `size` bytes
/// (`None` otherwise; one longer is read no further than that).
async fn sha256_of(
    repo: &Repository,
    key: &str,
    size: u64,
) -> Result<Option<String>, std::io::Error> {
    let mut reader = repo
        .backend()
        .open(key)
        .await
        .map_err(std::io::Error::other)?;
    let mut hasher = sha2::Sha256::new();
    let mut read = 0u64;
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
        if read > size {
            return Ok(None);
        }
    }
    Ok((read == size).then(|| hex::encode(hasher.finalize())))
}

/// Streams one object from `from` to `to`, piece by piece, and finishes it
/// only if its size and sha256 are the manifest's; otherwise the write is
/// aborted and nothing of it becomes visible.
async fn copy_object(
    from: &Repository,
    to: &Repository,
    id: &str,
    o: &Object,
) -> Result<(), CopyError> {
    let read_err = |source| CopyError::Storage {
        snapshot: id.to_owned(),
        key: o.key.clone(),
        what: "reading from",
        repository: from.name().to_owned(),
        source,
    };
    let write_err = |source| CopyError::Storage {
        snapshot: id.to_owned(),
        key: o.key.clone(),
        what: "writing to",
        repository: to.name().to_owned(),
        source,
    };
    let mut reader = from.backend().open(&o.key).await.map_err(read_err)?;
    let mut writer: Box<dyn ObjectWriter> = to.backend().create(&o.key).await.map_err(write_err)?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mismatch = |size: u64, sha: &str| CopyError::Mismatch {
        snapshot: id.to_owned(),
        key: o.key.clone(),
        from: from.name().to_owned(),
        to: to.name().to_owned(),
        found: format!("{size} bytes with sha256 {sha}"),
        expected: format!("{} bytes with sha256 {}", o.size, o.sha256),
    };
    loop {
        let mut piece = BytesMut::with_capacity(PIECE);
        let mut eof = false;
        while piece.len() < PIECE {
            match reader.read_buf(&mut piece).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    writer.abort().await;
                    return Err(read_err(StorageError::Io {
                        op: "read",
                        location: o.key.clone(),
                        source: e,
                    }));
                }
            }
        }
        if !piece.is_empty() {
            hasher.update(&piece);
            size += piece.len() as u64;
            if size > o.size {
                // Longer than the manifest says: no need to read the rest.
                writer.abort().await;
                return Err(mismatch(size, "(not computed: the object is too long)"));
            }
            if let Err(e) = writer.write(piece.freeze()).await {
                writer.abort().await;
                return Err(write_err(e));
            }
        }
        if eof {
            break;
        }
    }
    let sha = hex::encode(hasher.finalize());
    if size != o.size || sha != o.sha256 {
        writer.abort().await;
        return Err(mismatch(size, &sha));
    }
    writer.finish().await.map_err(write_err)?;
    tracing::debug!(key = %o.key, bytes = size, "object copied");
    Ok(())
}

#[cfg(test)]
mod memory_tests;
