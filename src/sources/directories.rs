//! The directories source: a directory tree (or, in container mode, a
//! named volume) as one tar, source `directories/<name>` (docs/DESIGN.md
//! §12).
//!
//! The tar keeps each entry's permission bits, numeric owner, mtime and
//! type: directories, regular files, and symlinks stored as links (never
//! followed). Hard links are stored as separate files. Sockets, FIFOs and
//! devices are left out with a warning. Entries are named relative to the
//! root (`db.sqlite3`, `attachments/x`); the root's own mode, owner and
//! mtime go into the manifest's `file`.
//!
//! Files that change while the tar is written:
//! - removed before they were opened: left out, with a warning;
//! - grown or rewritten (size or mtime differ after the copy): stored as
//!   read (up to the size first seen), with a warning;
//! - shrunk below the size first seen while being read: the source fails
//!   (the archive would hold a padded file). Use `stop` to keep writers
//!   still, and `sqlite` for databases.
//!
//! `stop` containers are stopped (or, with `pause = true`, paused) before
//! the copy and started (unpaused) after it, on every exit path: a guard
//! hands the restart to the clean-ups the process waits for when the
//! backup is dropped (SIGTERM, Ctrl-C, the stall watchdog). Only those
//! that were running are touched; the manifest records which, and for how
//! long.
//!
//! SQLite databases named in `sqlite` are copied with the online backup
//! API ([`sqlite`]) and stored under their own names; the live file and
//! its `-wal`, `-shm` and `-journal` are left out. In a volume the host
//! cannot open the database: there it is stored as the engine reads it,
//! with its `-wal`, which is consistent only while nothing writes — so a
//! volume with `sqlite` is refused while a container that uses it runs
//! (name those containers in `stop`).

pub mod sqlite;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{SourceContext, SourceError, SourceRun, timed};
use crate::engine::scratch::ScratchSpec;
use crate::engine::{Engine, EngineError};
use crate::model::config::{DirectoryConfig, DirectoryLocation, Quiesce};
use crate::model::facts::{SourceFacts, SqliteFacts};
use crate::model::manifest::{ArtifactKind, Downtime, FileMeta};
use crate::model::source_name::SourceName;
use crate::pipeline;
use crate::storage::keys::artifact_key;

/// How long a stopped container gets to shut down cleanly.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Where a volume is mounted in the helper container.
const MOUNT: &str = "/kdr-volume";

/// Backs up one directory or volume.
pub async fn backup(ctx: &SourceContext, cfg: &DirectoryConfig) -> SourceRun {
    let source = SourceName::Directory(cfg.name.clone()).to_string();
    timed(async {
        let mut run = SourceRun::failed(&source, ArtifactKind::Directory, "");
        let key = artifact_key(&ctx.snapshot, &source, ArtifactKind::Directory);
        let result = async {
            let still = Quiesced::begin(cfg).await?;
            run.captured_at = Some(Utc::now());
            let copied = match &cfg.location {
                DirectoryLocation::Path(root) => copy_path(ctx, cfg, root, &key).await,
                DirectoryLocation::Volume { name, engine } => {
                    copy_volume(ctx, cfg, name, engine.as_deref(), &still, &key).await
                }
            };
            // Started again as soon as the data is read, before the commit.
            run.downtime = still.end().await;
            let Copied {
                encoded,
                verdict,
                tally,
                root,
            } = copied?;
            run.file = root;
            run.facts = Some(SourceFacts::Directory {
                files: tally.files,
                bytes: tally.bytes,
                sqlite: tally.sqlite,
            });
            ctx.finish(&key, encoded, verdict).await
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(ctx.redactor.scrub(&e.to_string())));
        run
    })
    .await
}

/// What the tar holds, counted as it is written.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    bytes: u64,
    sqlite: BTreeMap<String, SqliteFacts>,
    changed: Vec<String>,
}

/// An archive streamed (not yet committed) and what it holds.
struct Copied {
    encoded: pipeline::Encoded,
    verdict: Result<(), SourceError>,
    tally: Tally,
    root: Option<FileMeta>,
}

/// The `stop` containers kept still for the copy. Dropped while armed (the
/// backup was cancelled), it hands their restart to the process's
/// clean-ups.
struct Quiesced {
    engine: Option<Engine>,
    mode: Quiesce,
    /// Those stopped (or paused) by us, in order.
    changed: Vec<String>,
    since: Option<Instant>,
    armed: bool,
}

impl Quiesced {
    /// Stops (or pauses) the running ones of `cfg.stop`; on failure the
    /// ones already stopped are started again (the guard drops).
    async fn begin(cfg: &DirectoryConfig) -> Result<Quiesced, SourceError> {
        let mut q = Quiesced {
            engine: None,
            mode: cfg.quiesce,
            changed: Vec::new(),
            since: None,
            armed: true,
        };
        if cfg.stop.is_empty() {
            return Ok(q);
        }
        let engine = Engine::connect(cfg.engine()).map_err(SourceError::Engine)?;
        q.engine = Some(engine.clone());
        for c in &cfg.stop {
            let info = engine.inspect(&c.name).await.map_err(SourceError::Engine)?;
            if !info.running || info.state == "paused" {
                tracing::info!(container = %c.name, state = %info.state, "not running: left as it is");
                continue;
            }
            // Recorded before the request: a drop during it still restarts.
            q.changed.push(c.name.clone());
            q.since.get_or_insert_with(Instant::now);
            let done = match q.mode {
                Quiesce::Stop => engine.stop(&c.name, STOP_GRACE).await,
                Quiesce::Pause => engine.pause(&c.name).await,
            };
            done.map_err(SourceError::Engine)?;
            tracing::info!(container = %c.name, mode = q.mode_name(), "stopped for the copy");
        }
        Ok(q)
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Quiesce::Stop => "stop",
            Quiesce::Pause => "pause",
        }
    }

    /// Whether `name` was stopped (or paused) by us.
    fn holds(&self, name: &str) -> bool {
        self.changed.iter().any(|c| c == name)
    }

    /// Starts (unpauses) what was stopped; returns the downtime record.
    async fn end(mut self) -> Option<Downtime> {
        self.armed = false;
        let engine = self.engine.clone()?;
        if self.changed.is_empty() {
            return None;
        }
        let mut failed = Vec::new();
        for name in &self.changed {
            if let Err(e) = resume(&engine, self.mode, name).await {
                tracing::error!(container = %name, error = %e, "cannot start it again: start it by hand");
                failed.push(format!("{name}: {e}"));
            }
        }
        let seconds = self.since.map_or(0.0, |s| s.elapsed().as_secs_f64());
        tracing::info!(containers = ?self.changed, seconds = format_args!("{seconds:.1}"), "started again after the copy");
        Some(Downtime {
            mode: self.mode_name().to_owned(),
            containers: self.changed.clone(),
            seconds,
            error: (!failed.is_empty()).then(|| {
                format!(
                    "not started again (start them by hand): {}",
                    failed.join("; ")
                )
            }),
        })
    }
}

async fn resume(engine: &Engine, mode: Quiesce, name: &str) -> Result<(), EngineError> {
    match mode {
        Quiesce::Stop => engine.start(name).await,
        Quiesce::Pause => engine.unpause(name).await,
    }
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        if !self.armed || self.changed.is_empty() {
            return;
        }
        let Some(engine) = self.engine.clone() else {
            return;
        };
        let (mode, names) = (self.mode, std::mem::take(&mut self.changed));
        crate::storage::spawn_cleanup(async move {
            for name in names {
                match resume(&engine, mode, &name).await {
                    Ok(()) => {
                        tracing::info!(container = %name, "started again (the backup was stopped)")
                    }
                    Err(e) => {
                        tracing::error!(container = %name, error = %e, "cannot start it again: start it by hand")
                    }
                }
            }
        });
    }
}

/// The root's metadata for the manifest.
fn root_meta(path: String, m: &std::fs::Metadata) -> FileMeta {
    FileMeta {
        path,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: DateTime::from_timestamp(m.mtime(), m.mtime_nsec() as u32).unwrap_or_default(),
    }
}

/// What the tar leaves out: `exclude` globs, and the live SQLite files.
struct Filter {
    exclude: globset::GlobSet,
    sqlite: Vec<String>,
}

impl Filter {
    fn new(cfg: &DirectoryConfig) -> Result<Filter, SourceError> {
        let mut b = globset::GlobSetBuilder::new();
        for g in &cfg.exclude {
            b.add(
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| SourceError::Data(format!("exclude {g}: {e}")))?,
            );
        }
        Ok(Filter {
            exclude: b
                .build()
                .map_err(|e| SourceError::Data(format!("exclude: {e}")))?,
            sqlite: cfg
                .sqlite
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        })
    }

    fn excluded(&self, rel: &str) -> bool {
        self.exclude.is_match(rel)
    }

    /// Whether `rel` is a live SQLite database or one of its side files.
    fn live_sqlite(&self, rel: &str) -> bool {
        self.sqlite.iter().any(|db| {
            rel == db
                || rel
                    .strip_prefix(db.as_str())
                    .is_some_and(|s| matches!(s, "-wal" | "-shm" | "-journal"))
        })
    }
}

/// A SQLite copy to put in the tar under `rel`, with the live file's
/// metadata.
struct SqliteCopy {
    rel: String,
    copy: PathBuf,
    meta: std::fs::Metadata,
}

/// Backs up a directory of this host.
async fn copy_path(
    ctx: &SourceContext,
    cfg: &DirectoryConfig,
    root: &Path,
    key: &str,
) -> Result<Copied, SourceError> {
    let meta = tokio::fs::symlink_metadata(root)
        .await
        .map_err(SourceError::io(format!("cannot read {}", root.display())))?;
    if !meta.is_dir() {
        return Err(SourceError::Data(format!(
            "{} is not a directory (a symlink is not followed): set path to the directory itself",
            root.display()
        )));
    }
    let root_file = root_meta(root.display().to_string(), &meta);
    let filter = Filter::new(cfg)?;
    // The databases first, into a private directory (0700; copies 0600).
    let work = crate::process::private::tempdir()
        .map_err(SourceError::io("cannot create a temporary directory"))?;
    let (dbs, work_path, root_owned) =
        (cfg.sqlite.clone(), work.path().to_owned(), root.to_owned());
    let copies =
        tokio::task::spawn_blocking(move || snapshot_sqlite(&dbs, &root_owned, &work_path))
            .await
            .map_err(|e| SourceError::Data(format!("the SQLite copy failed: {e}")))??;
    crate::process::stall::progress();
    let (writer, input) = pipeline::input_from_writer();
    let root_owned = root.to_owned();
    let tar =
        tokio::task::spawn_blocking(move || write_tree(writer, &root_owned, &filter, copies.0));
    let encoded = ctx.encode(key, input).await;
    let written = tar
        .await
        .map_err(|e| SourceError::Data(format!("tar writer failed: {e}")))?;
    drop(work);
    let encoded = encoded?;
    let (verdict, mut tally) = match written {
        Ok(t) => (Ok(()), t),
        Err(e) => (Err(e), Tally::default()),
    };
    tally.sqlite = copies.1;
    if !tally.changed.is_empty() {
        tracing::warn!(
            directory = %root.display(),
            files = ?tally.changed,
            "files changed while they were copied (stored as read): name their writers in stop = [...]"
        );
    }
    Ok(Copied {
        encoded,
        verdict,
        tally,
        root: Some(root_file),
    })
}

/// Copies each SQLite database `dbs` names under `root` into `work` with
/// SQLite's online backup and describes the copy for the facts.
fn snapshot_sqlite(
    dbs: &[PathBuf],
    root: &Path,
    work: &Path,
) -> Result<(Vec<SqliteCopy>, BTreeMap<String, SqliteFacts>), SourceError> {
    let mut out = Vec::new();
    let mut facts = BTreeMap::new();
    for (i, rel) in dbs.iter().enumerate() {
        let live = root.join(rel);
        let meta = std::fs::symlink_metadata(&live).map_err(SourceError::io(format!(
            "SQLite database {} (sqlite = [\"{}\"])",
            live.display(),
            rel.display()
        )))?;
        if !meta.is_file() {
            return Err(SourceError::Data(format!(
                "SQLite database {} is not a regular file",
                live.display()
            )));
        }
        let copy = work.join(format!("{i}.sqlite3"));
        sqlite::snapshot(&live, &copy)?;
        let f = sqlite::describe(&copy)?;
        if f.integrity != "ok" {
            tracing::warn!(database = %live.display(), integrity = %f.integrity, "the SQLite copy fails its integrity check");
        }
        let rel = rel.to_string_lossy().into_owned();
        facts.insert(rel.clone(), f);
        out.push(SqliteCopy { rel, copy, meta });
    }
    Ok((out, facts))
}

/// A tar header for `m`.
fn header_of(m: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    pipeline::tar::header(kind, size, &pipeline::tar::Stamp::of(m))
}

/// Writes the tree under `root` as a tar into the pipeline (on a blocking
/// thread), then the SQLite copies.
fn write_tree(
    writer: pipeline::ChunkWriter<std::io::Result<bytes::Bytes>>,
    root: &Path,
    filter: &Filter,
    copies: Vec<SqliteCopy>,
) -> Result<Tally, SourceError> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let mut tally = Tally::default();
    let result = (|| -> std::io::Result<()> {
        walk(&mut builder, root, Path::new(""), filter, &mut tally)?;
        for c in copies {
            let len = std::fs::metadata(&c.copy)?.len();
            let mut h = header_of(&c.meta, tar::EntryType::Regular, len);
            let file = std::fs::File::open(&c.copy)?;
            builder.append_data(&mut h, &c.rel, file.take(len))?;
            tally.files += 1;
            tally.bytes += len;
        }
        builder.finish()
    })();
    match result {
        Ok(()) => {
            let w = builder
                .into_inner()
                .map_err(|e| SourceError::Data(e.to_string()))?;
            w.close().map_err(|e| SourceError::Data(e.to_string()))?;
            Ok(tally)
        }
        Err(e) => {
            let msg = format!("cannot copy {}: {e}", root.display());
            if let Ok(w) = builder.into_inner() {
                w.fail(std::io::Error::other(msg.clone()));
            }
            Err(SourceError::Data(msg))
        }
    }
}

/// Appends the entries of directory `root/rel`, sorted by name, depth
/// first.
fn walk<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    filter: &Filter,
    tally: &mut Tally,
) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
            tracing::warn!(directory = %dir.display(), "removed while being copied: left out");
            return Ok(());
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", dir.display()),
            ));
        }
    };
    names.sort();
    for name in names {
        crate::process::stall::progress();
        let r = rel.join(&name);
        let rs = r.to_string_lossy().into_owned();
        if filter.excluded(&rs) || filter.live_sqlite(&rs) {
            continue;
        }
        let path = root.join(&r);
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), "removed before it was copied: left out");
                continue;
            }
            Err(e) => return Err(e),
        };
        let ft = m.file_type();
        if ft.is_dir() {
            let mut h = header_of(&m, tar::EntryType::Directory, 0);
            b.append_data(&mut h, &r, std::io::empty())?;
            walk(b, root, &r, filter, tally)?;
        } else if ft.is_symlink() {
            let target = match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut h = header_of(&m, tar::EntryType::Symlink, 0);
            b.append_link(&mut h, &r, &target)?;
        } else if ft.is_file() {
            append_file(b, &path, &r, rs, tally)?;
        } else {
            tracing::warn!(file = %path.display(), "a socket, FIFO or device: left out");
        }
    }
    Ok(())
}

/// Appends the regular file `path` as `r` (`rs` as text), exactly as long
/// as it was when opened; notes it in `tally` as changed if it changed
/// while it was read. A file gone before it was opened is left out.
fn append_file<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    r: &Path,
    rs: String,
    tally: &mut Tally,
) -> std::io::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), "removed before it was copied: left out");
            return Ok(());
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("opening {}: {e}", path.display()),
            ));
        }
    };
    let m = file.metadata()?;
    let len = m.len();
    let mut h = header_of(&m, tar::EntryType::Regular, len);
    let reader = pipeline::tar::ExactLen::new(
        file.take(len),
        len,
        format!(
            "{} shrank while being copied: stop its writer during the backup (stop = [...])",
            path.display()
        ),
    );
    b.append_data(&mut h, r, reader)?;
    tally.files += 1;
    tally.bytes += len;
    if let Ok(after) = std::fs::metadata(path)
        && (after.len() != len
            || after.mtime() != m.mtime()
            || after.mtime_nsec() != m.mtime_nsec())
    {
        tally.changed.push(rs);
    }
    Ok(())
}

/// Backs up a named volume through the engine: a helper container is
/// created (never started) with the volume mounted read-only, and the
/// engine's archive of the mount is re-written as this source's tar.
async fn copy_volume(
    ctx: &SourceContext,
    cfg: &DirectoryConfig,
    volume: &str,
    endpoint: Option<&str>,
    still: &Quiesced,
    key: &str,
) -> Result<Copied, SourceError> {
    let engine = Engine::connect(endpoint).map_err(SourceError::Engine)?;
    let users = engine
        .using_volume(volume)
        .await
        .map_err(SourceError::Engine)?;
    let running: Vec<&str> = users
        .iter()
        .filter(|c| c.running && c.state != "paused" && !still.holds(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !cfg.sqlite.is_empty() && !running.is_empty() {
        return Err(SourceError::Data(format!(
            "volume {volume} is in use by running container(s) {}: the SQLite databases in it \
             cannot be copied consistently through the engine; add them to stop = [...]",
            running.join(", ")
        )));
    }
    let Some(image) = users.first().map(|c| c.image_id.clone()) else {
        return Err(SourceError::Data(format!(
            "no container uses volume {volume}: kompose-dr reads a volume through a helper container \
             made from the image of one that uses it (docker volume ls, docker ps -a --filter volume={volume})"
        )));
    };
    let helper = engine
        .create_scratch(ScratchSpec {
            image,
            name: "kompose-dr-volume".into(),
            cmd: Some(vec!["true".into()]),
            binds: vec![format!("{volume}:{MOUNT}:ro")],
            ..ScratchSpec::default()
        })
        .await
        .map_err(SourceError::Engine)?;
    let stream = engine.download(&helper.id, MOUNT);
    let reader = tokio_util::io::StreamReader::new(stream);
    let filter = Filter::new(cfg)?;
    let work = crate::process::private::tempdir()
        .map_err(SourceError::io("cannot create a temporary directory"))?;
    let (writer, input) = pipeline::input_from_writer();
    let rt = tokio::runtime::Handle::current();
    let (work_path, dbs, vol) = (
        work.path().to_owned(),
        cfg.sqlite.clone(),
        volume.to_owned(),
    );
    let tar = tokio::task::spawn_blocking(move || {
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(reader, rt);
        retar(writer, reader, &vol, &filter, &work_path, &dbs)
    });
    let encoded = ctx.encode(key, input).await;
    let written = tar
        .await
        .map_err(|e| SourceError::Data(format!("tar writer failed: {e}")))?;
    drop(helper);
    let encoded = encoded?;
    let (verdict, tally, root) = match written {
        Ok((t, root)) => (Ok(()), t, root),
        Err(e) => (Err(e), Tally::default(), None),
    };
    drop(work);
    Ok(Copied {
        encoded,
        verdict,
        tally,
        root,
    })
}

/// Re-writes the engine's tar of the mount: names made relative to the
/// volume's root (whose own entry gives the manifest's `file`), excluded
/// paths left out, anything but directories, files and symlinks refused.
/// The SQLite databases (and their `-wal`) are also copied into `work` and
/// described for the facts.
fn retar(
    writer: pipeline::ChunkWriter<std::io::Result<bytes::Bytes>>,
    reader: impl Read,
    volume: &str,
    filter: &Filter,
    work: &Path,
    dbs: &[PathBuf],
) -> Result<(Tally, Option<FileMeta>), SourceError> {
    let mut r = Retar {
        builder: tar::Builder::new(writer),
        tally: Tally::default(),
        root: None,
        volume,
        filter,
        work,
        dbs,
        spooled: BTreeMap::new(),
        skipped: Vec::new(),
    };
    let result = (|| -> std::io::Result<()> {
        let mut ar = tar::Archive::new(reader);
        for entry in ar.entries()? {
            crate::process::stall::progress();
            r.entry(entry?)?;
        }
        r.builder.finish()
    })();
    if let Err(e) = result {
        let msg = format!("cannot copy volume {volume}: {e}");
        if let Ok(w) = r.builder.into_inner() {
            w.fail(std::io::Error::other(msg.clone()));
        }
        return Err(SourceError::Data(msg));
    }
    r.finish()
}

/// What [`retar`] writes and finds on its way through the engine's tar.
struct Retar<'a> {
    builder: tar::Builder<pipeline::ChunkWriter<std::io::Result<bytes::Bytes>>>,
    tally: Tally,
    /// The volume's root, from its own entry.
    root: Option<FileMeta>,
    volume: &'a str,
    filter: &'a Filter,
    work: &'a Path,
    dbs: &'a [PathBuf],
    /// The SQLite databases (and `-wal`s) kept in `work`, by name.
    spooled: BTreeMap<String, PathBuf>,
    /// Excluded directories: their content goes with them, as in a walk.
    skipped: Vec<PathBuf>,
}

impl Retar<'_> {
    /// Re-writes one entry of the engine's tar.
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<R>) -> std::io::Result<()> {
        let base = MOUNT.trim_start_matches('/');
        let name = entry.path()?.into_owned();
        let Ok(rel) = name.strip_prefix(base).map(Path::to_owned) else {
            return Ok(());
        };
        let h = entry.header().clone();
        let kind = h.entry_type();
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                self.root = Some(FileMeta {
                    path: format!("volume:{}", self.volume),
                    mode: h.mode()? & 0o7777,
                    uid: h.uid()? as u32,
                    gid: h.gid()? as u32,
                    mtime: DateTime::from_timestamp(h.mtime()? as i64, 0).unwrap_or_default(),
                });
            }
            return Ok(());
        }
        let rs = rel.to_string_lossy().into_owned();
        if self.skipped.iter().any(|d| rel.starts_with(d)) {
            return Ok(());
        }
        if self.filter.excluded(&rs) {
            if kind.is_dir() {
                self.skipped.push(rel);
            }
            return Ok(());
        }
        let mut nh = h.clone();
        if kind.is_dir() {
            self.builder.append_data(&mut nh, &rel, std::io::empty())?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()?
                .ok_or_else(|| std::io::Error::other(format!("symlink {rs} has no target")))?
                .into_owned();
            self.builder.append_link(&mut nh, &rel, &target)?;
        } else if kind.is_file() {
            self.file(&mut entry, &mut nh, &rel, rs)?;
        } else if kind.is_hard_link() {
            return Err(std::io::Error::other(format!(
                "{rs} is a hard link in the engine's archive, which this version does not store"
            )));
        } else {
            tracing::warn!(file = %rs, "a socket, FIFO or device: left out");
        }
        Ok(())
    }

    /// Re-writes a regular file; a SQLite database (or its `-wal`) is also
    /// kept in `work` for the facts.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        nh: &mut tar::Header,
        rel: &Path,
        rs: String,
    ) -> std::io::Result<()> {
        let len = entry.size();
        let is_db = self.dbs.iter().any(|d| d.as_path() == rel)
            || self.dbs.iter().any(|d| {
                let mut w = d.as_os_str().to_owned();
                w.push("-wal");
                Path::new(&w) == rel
            });
        if is_db {
            // Stored as read, and kept here for the facts.
            let to = self.work.join(format!("{}", self.spooled.len()));
            let mut f = std::fs::File::create(&to)?;
            std::io::copy(entry, &mut f)?;
            drop(f);
            self.spooled.insert(rs, to.clone());
            self.builder
                .append_data(nh, rel, std::fs::File::open(&to)?)?;
        } else {
            self.builder.append_data(nh, rel, entry)?;
        }
        self.tally.files += 1;
        self.tally.bytes += len;
        Ok(())
    }

    /// Closes the tar, then describes each SQLite database on a copy of its
    /// own, with its `-wal` beside it.
    fn finish(mut self) -> Result<(Tally, Option<FileMeta>), SourceError> {
        let text = |e: std::io::Error| SourceError::Data(e.to_string());
        let w = self.builder.into_inner().map_err(text)?;
        w.close().map_err(text)?;
        let volume = self.volume;
        for (i, d) in self.dbs.iter().enumerate() {
            let rs = d.to_string_lossy().into_owned();
            let Some(db) = self.spooled.get(&rs) else {
                return Err(SourceError::Data(format!(
                    "SQLite database {rs} (sqlite = [\"{rs}\"]) is not in volume {volume}"
                )));
            };
            let dir = self.work.join(format!("db{i}"));
            std::fs::create_dir(&dir).map_err(text)?;
            let copy = dir.join("db");
            std::fs::copy(db, &copy).map_err(text)?;
            if let Some(wal) = self.spooled.get(&format!("{rs}-wal")) {
                std::fs::copy(wal, dir.join("db-wal")).map_err(text)?;
            }
            let facts = sqlite::describe(&copy)?;
            self.tally.sqlite.insert(rs, facts);
        }
        Ok((self.tally, self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sqlite_files_and_excludes_are_left_out() {
        let cfg = DirectoryConfig {
            name: "x".into(),
            location: DirectoryLocation::Path("/x".into()),
            stop: Vec::new(),
            quiesce: Quiesce::Stop,
            sqlite: vec!["data/db.sqlite3".into()],
            exclude: vec!["tmp/**".into(), "*.log".into()],
        };
        let f = Filter::new(&cfg).unwrap();
        for rel in [
            "data/db.sqlite3",
            "data/db.sqlite3-wal",
            "data/db.sqlite3-shm",
            "data/db.sqlite3-journal",
        ] {
            assert!(f.live_sqlite(rel), "{rel}");
        }
        assert!(!f.live_sqlite("data/db.sqlite3.bak"));
        assert!(f.excluded("tmp/a/b"));
        assert!(f.excluded("x.log"));
        assert!(!f.excluded("sub/x.log"));
        assert!(!f.excluded("tmpx"));
    }

    /// The engine's archive of the mount, re-written: names relative to the
    /// volume, the root's metadata kept for the manifest, an excluded
    /// directory left out with its content, the database described.
    #[test]
    fn a_volume_archive_is_rewritten_relative_to_its_root() {
        let work = tempfile::tempdir().unwrap();
        let db = work.path().join("live.sqlite3");
        {
            let con = rusqlite::Connection::open(&db).unwrap();
            con.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
                .unwrap();
        }
        let db_bytes = std::fs::read(&db).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(1_000_000_000);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("kdr-volume/", tar::EntryType::Directory, 0o750, b"");
        add("kdr-volume/a", tar::EntryType::Regular, 0o600, b"abc");
        add("kdr-volume/cache/", tar::EntryType::Directory, 0o755, b"");
        add(
            "kdr-volume/cache/x",
            tar::EntryType::Regular,
            0o644,
            b"junk",
        );
        add(
            "kdr-volume/db.sqlite3",
            tar::EntryType::Regular,
            0o644,
            &db_bytes,
        );
        let engine_tar = b.into_inner().unwrap();
        let cfg = DirectoryConfig {
            name: "v".into(),
            location: DirectoryLocation::Volume {
                name: "vol".into(),
                engine: None,
            },
            stop: Vec::new(),
            quiesce: Quiesce::Stop,
            sqlite: vec!["db.sqlite3".into()],
            exclude: vec!["cache".into()],
        };
        let filter = Filter::new(&cfg).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let writer = pipeline::ChunkWriter::new(tx, Ok);
        let (tally, root) = retar(
            writer,
            &engine_tar[..],
            "vol",
            &filter,
            work.path(),
            &cfg.sqlite,
        )
        .unwrap();
        let mut out = Vec::new();
        while let Ok(piece) = rx.try_recv() {
            out.extend_from_slice(&piece.unwrap());
        }
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "db.sqlite3"]);
        assert_eq!((tally.files, tally.bytes), (2, 3 + db_bytes.len() as u64));
        let root = root.unwrap();
        assert_eq!(
            (root.path.as_str(), root.mode, root.uid),
            ("volume:vol", 0o750, 1000)
        );
        let f = &tally.sqlite["db.sqlite3"];
        assert_eq!((f.integrity.as_str(), f.tables["t"]), ("ok", 2));
    }
}
