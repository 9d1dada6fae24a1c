//! The Redis source: a consistent copy of Redis' persistence files.
//!
//! With AOF on (Redis 7 multi-part: `appendonlydir/` and its manifest),
//! automatic rewrites are paused, `BGREWRITEAOF` runs to completion, the
//! manifest is read and the files it names are copied: the base whole, the
//! incremental files empty. A rewrite forks, writes the data set of that
//! moment as the new base and opens a new incremental file at the same
//! moment for every write after it, so the base alone is exactly the state
//! at the fork — the same point-in-time copy a `BGSAVE` makes, and one
//! whose keys can be counted from the file. The setting is restored on
//! every path. With AOF off, `BGSAVE` runs until a newer save completes and
//! `dump.rdb` is copied. Either way the files stream as a tar archive.
//!
//! The facts record the keys per database counted in the saved file itself
//! ([`rdb`]: `dump.rdb`, or the AOF base in RDB form) as its bytes stream
//! into the archive, and the moment the counts hold for (`counted_at`, the
//! artifact's `captured_at`): a key whose TTL ran out before that moment is
//! not counted, and each database's count of keys with a TTL is recorded
//! beside it. Verify counts the restored file the same way, so TTL'd keys
//! (sessions) that expire between the backup and a drill cannot make the
//! counts differ. Only when the file cannot be counted (an AOF base written
//! as commands, `aof-use-rdb-preamble no`; a format this version does not
//! know) are the counts read from the server right after the save, as
//! before, and a warning says so.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;

use super::{SourceContext, SourceError, SourceRun, timed};
use crate::clients::ClientError;
use crate::clients::redis::{config_get, config_set, connect, info, parse_keyspace};
use crate::engine::{Engine, ExecSpec};
use crate::model::config::{ContainerRef, RedisConfig};
use crate::model::facts::SourceFacts;
use crate::model::manifest::ArtifactKind;
use crate::model::source_name::SourceName;
use crate::pipeline;
use crate::storage::keys::artifact_key;

pub mod rdb;

/// How long to wait for a save or rewrite to finish.
const SAVE_TIMEOUT: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(100);

/// Keys and keys with a TTL per database from `INFO keyspace`
/// (`db0:keys=3,expires=1,…`).
pub fn parse_keyspace_counts(info: &BTreeMap<String, String>) -> BTreeMap<String, rdb::Counts> {
    info.iter()
        .filter(|(k, _)| k.starts_with("db"))
        .filter_map(|(k, v)| {
            let field = |name: &str| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            Some((
                k.clone(),
                rdb::Counts {
                    keys: field("keys")?,
                    volatile: field("expires")?,
                },
            ))
        })
        .collect()
}

fn num(info: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    info.get(key).and_then(|v| v.parse().ok())
}

/// Backs up Redis.
pub async fn backup(ctx: &SourceContext, cfg: &RedisConfig) -> SourceRun {
    timed(async {
        let mut run = SourceRun::failed(SourceName::REDIS, ArtifactKind::RedisRdb, "");
        let result = async {
            let mut con = connect(cfg).await?;
            let server = info(&mut con, "server").await?;
            run.server_version = server.get("redis_version").map(|v| format!("Redis {v}"));
            let data_dir = match (&cfg.data_dir, &cfg.container) {
                (Some(d), None) => Where::Host(d.clone()),
                (_, container) => {
                    let dir = PathBuf::from(config_get(&mut con, "dir").await?);
                    match container {
                        // The files are read inside the container, where
                        // Redis' own `dir` is right.
                        Some(c) => Where::Container(c.clone(), dir),
                        None => Where::Host(dir),
                    }
                }
            };
            let aof = config_get(&mut con, "appendonly").await? == "yes";
            let files = if aof {
                run.kind = ArtifactKind::RedisAof;
                aof_files(&mut con, &data_dir).await?
            } else {
                rdb_files(&mut con, &data_dir).await?
            };
            // The moment the file's counts hold for, to the millisecond the
            // facts keep.
            let captured =
                DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default();
            run.captured_at = Some(captured);
            // The server's own count, for a file that cannot be counted.
            let live = parse_keyspace(&info(&mut con, "keyspace").await?);
            let key = artifact_key(&ctx.snapshot, SourceName::REDIS, run.kind);
            let (writer, input) = pipeline::input_from_writer();
            let rt = tokio::runtime::Handle::current();
            let tar = tokio::task::spawn_blocking(move || write_tar(writer, files, rt));
            let encoded = ctx.encode(&key, input).await;
            let written = tar
                .await
                .map_err(|e| SourceError::Data(format!("tar writer failed: {e}")))?;
            let (verdict, counted) = match written {
                Ok(counted) => (Ok(()), counted),
                Err(e) => (Err(e), None),
            };
            run.facts = Some(key_facts(counted, captured, live));
            ctx.finish(&key, encoded?, verdict).await
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(ctx.redactor.scrub(&e.to_string())));
        run
    })
    .await
}

/// The facts of a backup: the keys counted in the saved file at `at`, or,
/// when the file could not be counted, the server's count `live`.
fn key_facts(
    counted: Option<Result<rdb::FileKeys, rdb::RdbError>>,
    at: DateTime<Utc>,
    live: BTreeMap<String, u64>,
) -> SourceFacts {
    match counted {
        Some(Ok(keys)) => {
            let counts = keys.counts_at(at.timestamp_millis());
            SourceFacts::Redis {
                keys: counts.iter().map(|(db, c)| (db.clone(), c.keys)).collect(),
                volatile: counts
                    .iter()
                    .filter(|(_, c)| c.volatile > 0)
                    .map(|(db, c)| (db.clone(), c.volatile))
                    .collect(),
                counted_at: Some(at),
            }
        }
        not => {
            let why = match not {
                Some(Err(e)) => e.to_string(),
                _ => "the AOF base is written as commands (aof-use-rdb-preamble no)".to_owned(),
            };
            tracing::warn!(
                source = SourceName::REDIS,
                "cannot count the keys in the saved file ({why}): the facts hold the server's \
                 count right after the save, which keys with a TTL can make differ from the file"
            );
            SourceFacts::Redis {
                keys: live,
                volatile: BTreeMap::new(),
                counted_at: None,
            }
        }
    }
}

/// Counts the keys of restored Redis files in `dir` — `dump.rdb`, or the
/// base of `appendonlydir/` — as Redis will load them. An AOF whose
/// incremental files hold writes (made by a version that copied them)
/// cannot be counted without replaying it: that is an error, as is a base
/// written as commands.
pub fn count_restored(dir: &std::path::Path, aof: bool) -> Result<rdb::FileKeys, RedisFileError> {
    let open = |p: &std::path::Path| File::open(p).map_err(RedisFileError::io("open", p));
    let file = if aof {
        let adir = dir.join("appendonlydir");
        let manifest = std::fs::read_dir(&adir)
            .map_err(RedisFileError::io("read", &adir))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "manifest"))
            .ok_or_else(|| {
                RedisFileError::Manifest(format!("{} holds no AOF manifest", adir.display()))
            })?;
        let text =
            std::fs::read_to_string(&manifest).map_err(RedisFileError::io("read", &manifest))?;
        let files = aof_manifest_files(&text)?;
        for f in files.iter().filter(|f| !f.base) {
            let p = adir.join(&f.name);
            let len = std::fs::metadata(&p)
                .map_err(RedisFileError::io("read", &p))?
                .len();
            if len > 0 {
                return Err(RedisFileError::Uncountable(format!(
                    "the AOF holds {len} bytes of writes after its base ({}), which only replaying can count",
                    f.name
                )));
            }
        }
        let base = files
            .iter()
            .find(|f| f.base)
            .ok_or_else(|| RedisFileError::Manifest("the AOF manifest names no base".into()))?;
        if !base.name.ends_with(".rdb") {
            return Err(RedisFileError::Uncountable(format!(
                "the AOF base {} is written as commands (aof-use-rdb-preamble no)",
                base.name
            )));
        }
        open(&adir.join(&base.name))?
    } else {
        open(&dir.join("dump.rdb"))?
    };
    Ok(rdb::scan(file)?)
}

/// Why Redis files cannot be listed or counted.
#[derive(Debug, thiserror::Error)]
pub enum RedisFileError {
    /// A file or directory could not be opened or read.
    #[error("cannot {doing} {}: {source}", .path.display())]
    Io {
        /// `open` or `read`.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The AOF manifest is missing or not one this version reads.
    #[error("{0}")]
    Manifest(String),
    /// The files cannot be counted without replaying them.
    #[error("{0}")]
    Uncountable(String),
    /// The RDB file does not parse.
    #[error(transparent)]
    Rdb(#[from] rdb::RdbError),
}

impl RedisFileError {
    fn io(doing: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| RedisFileError::Io {
            doing,
            path,
            source,
        }
    }
}

/// Where Redis' data directory is read: on this host, or inside the
/// server's container through the engine (a named volume, or a data root
/// the host cannot read).
#[derive(Clone)]
enum Where {
    /// A directory on this host.
    Host(PathBuf),
    /// A directory inside the container.
    Container(ContainerRef, PathBuf),
}

impl Where {
    fn join(&self, name: &str) -> Where {
        match self {
            Where::Host(d) => Where::Host(d.join(name)),
            Where::Container(c, d) => Where::Container(c.clone(), d.join(name)),
        }
    }

    fn display(&self) -> String {
        match self {
            Where::Host(d) => d.display().to_string(),
            Where::Container(c, d) => format!("{} in container {}", d.display(), c.name),
        }
    }

    /// The whole (small) file as text.
    async fn read_to_string(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Where::Host(p) => Ok(std::fs::read_to_string(p)?),
            Where::Container(c, p) => {
                let engine = Engine::connect(c.engine.as_deref())?;
                Ok(engine
                    .output(
                        &c.name,
                        ExecSpec::new(["cat", "--"]).args([p.to_string_lossy()]),
                    )
                    .await?)
            }
        }
    }
}

/// A file to put in the tar: its name inside the archive, where it is, how
/// many bytes to copy and its owner, mode and time; and whether its keys
/// are counted ([`rdb`]) as it streams.
struct TarFile {
    name: String,
    source: TarSource,
    len: u64,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: u64,
    count: bool,
}

enum TarSource {
    /// An open handle, so a later rewrite cannot delete it from under us.
    Host(File),
    /// A file in a container, read with `head -c LEN` when its turn comes:
    /// exactly the bytes it had when it was listed, even if it grew since.
    Container(ContainerRef, PathBuf),
}

async fn open_for_tar(at: &Where, name: String) -> Result<TarFile, SourceError> {
    match at {
        Where::Host(path) => {
            use std::os::unix::fs::MetadataExt;
            let file = File::open(path)
                .map_err(SourceError::io(format!("cannot open {}", path.display())))?;
            let meta = file
                .metadata()
                .map_err(SourceError::io(format!("cannot stat {}", path.display())))?;
            Ok(TarFile {
                name,
                len: meta.len(),
                uid: meta.uid().into(),
                gid: meta.gid().into(),
                mode: meta.mode() & 0o7777,
                mtime: meta.mtime().max(0) as u64,
                source: TarSource::Host(file),
                count: false,
            })
        }
        Where::Container(c, path) => {
            let engine = Engine::connect(c.engine.as_deref())?;
            let out = engine
                .output(
                    &c.name,
                    ExecSpec::new(["stat", "-c", "%s %u %g %a %Y", "--"])
                        .args([path.to_string_lossy()]),
                )
                .await
                .map_err(|e| SourceError::Data(format!("cannot stat {}: {e}", at.display())))?;
            let f: Vec<u64> = out
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let mode = out
                .split_whitespace()
                .nth(3)
                .and_then(|m| u32::from_str_radix(m, 8).ok());
            let (&[len, uid, gid, _, mtime], Some(mode)) = (f.as_slice(), mode) else {
                return Err(SourceError::Data(format!(
                    "cannot stat {}: unexpected answer `{}`",
                    at.display(),
                    out.trim()
                )));
            };
            Ok(TarFile {
                name,
                len,
                uid,
                gid,
                mode: mode & 0o7777,
                mtime,
                source: TarSource::Container(c.clone(), path.clone()),
                count: false,
            })
        }
    }
}

async fn wait_until<F>(
    con: &mut MultiplexedConnection,
    what: &str,
    mut done: F,
) -> Result<BTreeMap<String, String>, SourceError>
where
    F: FnMut(&BTreeMap<String, String>) -> bool,
{
    let deadline = tokio::time::Instant::now() + SAVE_TIMEOUT;
    loop {
        let i = info(con, "persistence").await?;
        // Redis answered while it saves: alive, not stalled (SAVE_TIMEOUT
        // bounds the save itself).
        crate::process::stall::progress();
        if done(&i) {
            return Ok(i);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(SourceError::Data(format!(
                "Redis {what} did not finish within {}s",
                SAVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn rdb_files(
    con: &mut MultiplexedConnection,
    data_dir: &Where,
) -> Result<Vec<TarFile>, SourceError> {
    // A save already running started before us: let it finish, then save anew.
    wait_until(con, "BGSAVE", |i| {
        num(i, "rdb_bgsave_in_progress") == Some(0)
    })
    .await?;
    let before = info(con, "persistence").await?;
    let saves_before = num(&before, "rdb_saves");
    let last_before = num(&before, "rdb_last_save_time").unwrap_or(0);
    if saves_before.is_none() {
        // Without a save counter, make sure a new save gets a later timestamp.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let _: String = redis::cmd("BGSAVE")
        .query_async(con)
        .await
        .map_err(|source| ClientError::Redis {
            command: "BGSAVE".into(),
            source,
        })?;
    let after = wait_until(con, "BGSAVE", |i| {
        num(i, "rdb_bgsave_in_progress") == Some(0)
            && match saves_before {
                Some(n) => num(i, "rdb_saves").is_some_and(|m| m > n),
                None => num(i, "rdb_last_save_time").unwrap_or(0) > last_before,
            }
    })
    .await?;
    if after.get("rdb_last_bgsave_status").map(String::as_str) != Some("ok") {
        return Err(SourceError::Data(
            "Redis BGSAVE failed (rdb_last_bgsave_status is not ok): see the Redis log".into(),
        ));
    }
    let name = config_get(con, "dbfilename").await?;
    let mut file = open_for_tar(&data_dir.join(&name), name).await?;
    file.count = true;
    Ok(vec![file])
}

async fn aof_files(
    con: &mut MultiplexedConnection,
    data_dir: &Where,
) -> Result<Vec<TarFile>, SourceError> {
    let original = config_get(con, "auto-aof-rewrite-percentage").await?;
    // Put back even when this future is dropped (SIGTERM, Ctrl-C, the stall
    // watchdog): the guard hands the CONFIG SET to the clean-ups the
    // process waits for before it exits. (kill -9 leaves 0: a known bug.)
    let mut guard = PutBack {
        con: Some(con.clone()),
        original: original.clone(),
    };
    config_set(con, "auto-aof-rewrite-percentage", "0").await?;
    let result = aof_files_paused(con, data_dir).await;
    guard.con = None;
    let restored = config_set(con, "auto-aof-rewrite-percentage", &original).await;
    let files = result?;
    restored.map_err(|e| {
        SourceError::Data(format!(
            "{e} (restore auto-aof-rewrite-percentage to {original} by hand)"
        ))
    })?;
    Ok(files)
}

/// Sets `auto-aof-rewrite-percentage` back to `original` when dropped
/// while still armed (`con` present).
struct PutBack {
    con: Option<MultiplexedConnection>,
    original: String,
}

impl Drop for PutBack {
    fn drop(&mut self) {
        if let Some(mut con) = self.con.take() {
            let original = std::mem::take(&mut self.original);
            crate::storage::spawn_cleanup(async move {
                if let Err(e) = config_set(&mut con, "auto-aof-rewrite-percentage", &original).await
                {
                    tracing::warn!(error = %e, "could not put auto-aof-rewrite-percentage back to {original}: set it by hand");
                }
            });
        }
    }
}

async fn aof_files_paused(
    con: &mut MultiplexedConnection,
    data_dir: &Where,
) -> Result<Vec<TarFile>, SourceError> {
    let idle = |i: &BTreeMap<String, String>| {
        num(i, "aof_rewrite_in_progress") == Some(0) && num(i, "aof_rewrite_scheduled") == Some(0)
    };
    wait_until(con, "BGREWRITEAOF", idle).await?;
    let before = info(con, "persistence").await?;
    let rewrites_before = num(&before, "aof_rewrites");
    let _: String = redis::cmd("BGREWRITEAOF")
        .query_async(con)
        .await
        .map_err(|source| ClientError::Redis {
            command: "BGREWRITEAOF".into(),
            source,
        })?;
    let after = wait_until(con, "BGREWRITEAOF", |i| {
        idle(i)
            && match rewrites_before {
                Some(n) => num(i, "aof_rewrites").is_some_and(|m| m > n),
                None => true,
            }
    })
    .await?;
    if after.get("aof_last_bgrewrite_status").map(String::as_str) != Some("ok") {
        return Err(SourceError::Data(
            "Redis BGREWRITEAOF failed (aof_last_bgrewrite_status is not ok): see the Redis log"
                .into(),
        ));
    }
    let dir_name = config_get(con, "appenddirname").await?;
    let base_name = config_get(con, "appendfilename").await?;
    let dir = data_dir.join(&dir_name);
    let manifest_name = format!("{base_name}.manifest");
    let manifest_path = dir.join(&manifest_name);
    let manifest = manifest_path.read_to_string().await.map_err(|e| {
        SourceError::Data(format!(
            "cannot read the AOF manifest {}: {e} (is redis.data_dir the Redis data directory as this host sees it?)",
            manifest_path.display()
        ))
    })?;
    let mut files =
        vec![open_for_tar(&manifest_path, format!("{dir_name}/{manifest_name}")).await?];
    for f in aof_manifest_files(&manifest).map_err(|e| SourceError::Data(e.to_string()))? {
        let mut tf = open_for_tar(&dir.join(&f.name), format!("{dir_name}/{}", f.name)).await?;
        if f.base {
            // The base in RDB form is counted; one written as commands
            // (`aof-use-rdb-preamble no`) is not.
            tf.count = f.name.ends_with(".rdb");
        } else {
            // The writes after the rewrite's fork: left out, so that the
            // copy is the state at the fork (see the module documentation).
            tf.len = 0;
        }
        files.push(tf);
    }
    Ok(files)
}

/// A file a Redis 7 AOF manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AofFile {
    /// Its name inside the AOF directory.
    pub name: String,
    /// Whether it is the base (else an incremental file).
    pub base: bool,
}

/// The base and incremental files a Redis 7 AOF manifest names
/// (`file NAME seq N type b|i|h`), skipping history files.
pub fn aof_manifest_files(manifest: &str) -> Result<Vec<AofFile>, RedisFileError> {
    let mut out = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| {
            words
                .windows(2)
                .find(|w| w[0] == k)
                .map(|w| w[1].trim_matches('"'))
        };
        let (Some(name), Some(kind)) = (get("file"), get("type")) else {
            return Err(RedisFileError::Manifest(format!(
                "unexpected AOF manifest line `{line}`"
            )));
        };
        if name.contains('/') || name.starts_with('.') {
            return Err(RedisFileError::Manifest(format!(
                "unexpected file name in AOF manifest: `{name}`"
            )));
        }
        if kind == "b" || kind == "i" {
            out.push(AofFile {
                name: name.to_owned(),
                base: kind == "b",
            });
        }
    }
    if out.is_empty() {
        return Err(RedisFileError::Manifest(
            "the AOF manifest names no base or incremental file".into(),
        ));
    }
    Ok(out)
}

/// What counting the keys of the saved file gave, if a file was counted.
type Counted = Option<Result<rdb::FileKeys, rdb::RdbError>>;

/// Writes the files as a tar into the pipeline (runs on a blocking thread;
/// `rt` starts the reads of files inside a container), counting the keys
/// of the file marked `count` from the very bytes that go into the tar.
fn write_tar(
    writer: pipeline::ChunkWriter<std::io::Result<bytes::Bytes>>,
    files: Vec<TarFile>,
    rt: tokio::runtime::Handle,
) -> Result<Counted, SourceError> {
    let mut builder = tar::Builder::new(writer);
    let mut counted = None;
    let result = (|| -> std::io::Result<()> {
        let mut dirs_done: Vec<String> = Vec::new();
        for f in files {
            if let Some((dir, _)) = f.name.rsplit_once('/')
                && !dirs_done.iter().any(|d| d == dir)
            {
                // The directory belongs to whoever owns its files (Redis).
                let mut h = tar_header(&f, tar::EntryType::Directory, 0, 0o755);
                builder.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
                dirs_done.push(dir.to_owned());
            }
            let mut h = tar_header(&f, tar::EntryType::Regular, f.len, f.mode);
            let (name, len, count) = (f.name.clone(), f.len, f.count);
            let reader = pipeline::tar::ExactLen::new(
                file_reader(f, &rt)?,
                len,
                "file shrank while being copied",
            );
            if count {
                let (appended, keys) = append_counted(&mut builder, &mut h, &name, reader);
                counted = Some(keys);
                appended?;
            } else {
                builder.append_data(&mut h, &name, reader)?;
            }
        }
        builder.finish()
    })();
    match result {
        Ok(()) => {
            let w = builder
                .into_inner()
                .map_err(|e| SourceError::Data(e.to_string()))?;
            w.close().map_err(|e| SourceError::Data(e.to_string()))?;
            Ok(counted)
        }
        Err(e) => {
            let msg = format!("cannot copy Redis files: {e}");
            if let Ok(w) = builder.into_inner() {
                w.fail(std::io::Error::other(msg.clone()));
            }
            Err(SourceError::Data(msg))
        }
    }
}

/// A tar header for `f` with this kind, size and mode, and `f`'s owner and
/// time.
fn tar_header(f: &TarFile, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let stamp = pipeline::tar::Stamp {
        mode,
        uid: f.uid,
        gid: f.gid,
        mtime: f.mtime,
    };
    pipeline::tar::header(kind, size, &stamp)
}

/// The first `f.len` bytes of `f`: from the open file here, or read in its
/// container (`head -c`) through the engine.
fn file_reader(f: TarFile, rt: &tokio::runtime::Handle) -> std::io::Result<Box<dyn Read>> {
    Ok(match f.source {
        _ if f.len == 0 => Box::new(std::io::empty()),
        TarSource::Host(file) => Box::new(file.take(f.len)),
        TarSource::Container(c, path) => {
            let run = rt.block_on(async {
                let engine = Engine::connect(c.engine.as_deref())?;
                engine
                    .exec(
                        &c.name,
                        ExecSpec::new(["head", "-c", &f.len.to_string(), "--"])
                            .args([path.to_string_lossy()]),
                    )
                    .await
            });
            let mut run = run.map_err(std::io::Error::other)?;
            let out = run.stdout.take().expect("stdout is attached");
            Box::new(tokio_util::io::SyncIoBridge::new_with_handle(out, rt.clone()).take(f.len))
        }
    })
}

/// Appends `reader` as `name`, counting its keys from the same bytes: a
/// copy of every byte goes to the key count on a thread of its own; a
/// bounded channel keeps it in step.
fn append_counted<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &str,
    reader: impl Read,
) -> (std::io::Result<()>, Result<rdb::FileKeys, rdb::RdbError>) {
    let (to, from) = std::sync::mpsc::sync_channel(16);
    let scanner = std::thread::spawn(move || {
        rdb::scan(Chunks {
            from,
            chunk: Vec::new(),
            at: 0,
        })
    });
    let appended = builder.append_data(
        h,
        name,
        Tee {
            inner: reader,
            to: Some(to),
        },
    );
    let keys = scanner.join().unwrap_or_else(|_| {
        Err(rdb::RdbError::Io(std::io::Error::other(
            "the key count panicked",
        )))
    });
    (appended, keys)
}

/// A reader that hands a copy of what it reads to the key count; once the
/// count has stopped (at the file's end marker, or on an error) it only
/// reads.
struct Tee<R> {
    inner: R,
    to: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0
            && let Some(to) = &self.to
            && to.send(buf[..n].to_vec()).is_err()
        {
            self.to = None;
        }
        Ok(n)
    }
}

/// The key count's side of a [`Tee`]: the copied pieces as one stream,
/// ending when the tee is dropped.
struct Chunks {
    from: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.from.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_base_and_incr_only() {
        let m = "file appendonly.aof.2.base.rdb seq 2 type b\nfile appendonly.aof.1.incr.aof seq 1 type h\nfile appendonly.aof.3.incr.aof seq 3 type i\n";
        let names: Vec<(String, bool)> = aof_manifest_files(m)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.base))
            .collect();
        assert_eq!(
            names,
            vec![
                ("appendonly.aof.2.base.rdb".to_owned(), true),
                ("appendonly.aof.3.incr.aof".to_owned(), false)
            ]
        );
        assert!(aof_manifest_files("file ../x seq 1 type b").is_err());
        assert!(aof_manifest_files("").is_err());
    }

    #[test]
    fn keyspace_is_parsed() {
        let mut i = BTreeMap::new();
        i.insert("db0".to_owned(), "keys=3,expires=1,avg_ttl=0".to_owned());
        i.insert("db2".to_owned(), "keys=7,expires=0,avg_ttl=0".to_owned());
        let k = parse_keyspace(&i);
        assert_eq!(k.get("db0"), Some(&3));
        assert_eq!(k.get("db2"), Some(&7));
        let c = parse_keyspace_counts(&i);
        assert_eq!(
            c.get("db0"),
            Some(&rdb::Counts {
                keys: 3,
                volatile: 1
            })
        );
    }
}
