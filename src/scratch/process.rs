//! The `process` scratch runtime: local server binaries in private
//! temporary directories.
//!
//! PostgreSQL refuses to run as root, so when kompose-dr runs as root
//! `initdb` and `postgres` run as `[scratch] user` (default `postgres`). The
//! cluster listens only on a unix socket inside its own 0700 directory
//! (`listen_addresses = ''`), with `fsync=off`: it exists to be thrown away.
//!
//! The scratch Redis holds restored production data, so it is shut away the
//! same way: as `[scratch] user` when we are root, listening on no TCP port
//! (`port 0`) but on a unix socket in its own 0700 directory owned by that
//! user (`unixsocketperm 700`), with a random password that only its 0600
//! configuration file holds (never an argument). The restored files are
//! moved into that directory. It gets SIGKILL if kompose-dr dies, even by
//! `kill -9` ([`crate::process::die_with_parent`]), from a thread kept for
//! that purpose as long as the server runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ScratchError, ScratchPostgres, ScratchRedis, ScratchRuntime};
use crate::model::config::{PgEndpoint, RedisConfig};
use crate::model::secret::Secret;

/// Runs scratch servers as local processes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    /// The user PostgreSQL runs as when we are root.
    pub user: String,
    /// Where PostgreSQL server binaries live: `{major}` is replaced
    /// (default `/usr/lib/postgresql/{major}/bin`).
    pub postgres_bin: String,
}

impl ProcessRuntime {
    /// The runtime `[scratch]` describes.
    pub fn new(config: &crate::model::config::ScratchConfig) -> Self {
        ProcessRuntime {
            user: config.user.clone(),
            postgres_bin: config.postgres_bin.clone(),
        }
    }
}

struct Guarded {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    /// The thread the child was started from, if it must die with it.
    holder: Option<Holder>,
}

impl Guarded {
    /// Whether the process has exited (or cannot be asked).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .is_some()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > Duration::from_secs(5) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        drop(self.holder.take());
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            // A program that was killed a moment ago may still be writing
            // its last file: try again briefly rather than leave it.
            if dir.close().is_err() {
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(50));
                    match std::fs::remove_dir_all(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}

/// The thread a scratch server was started from. The kernel kills the
/// server when that thread ends ([`crate::process::die_with_parent`]), so
/// it waits until this is dropped — or dies with the whole process.
struct Holder {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `cmd`, set to die with its parent, from a thread of its own that
/// lives until the returned [`Holder`] is dropped.
async fn spawn_held(mut cmd: Command, what: &str) -> Result<(Child, Holder), ScratchError> {
    crate::process::die_with_parent(&mut cmd);
    let (started, spawned) = tokio::sync::oneshot::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kdr-scratch".into())
        .spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            if started.send(child).is_ok() && ok {
                // Until the holder is dropped: the sender goes with it.
                let _ = stopped.recv();
            }
        })
        .map_err(ScratchError::io(format!("cannot start {what}")))?;
    let holder = Holder {
        stop: Some(stop),
        thread: Some(thread),
    };
    let child = spawned
        .await
        .map_err(|_| ScratchError::Io {
            doing: format!("cannot start {what}"),
            source: std::io::Error::other("the starting thread ended"),
        })?
        .map_err(ScratchError::io(format!("cannot start {what}")))?;
    Ok((child, holder))
}

/// A private scratch directory ([`crate::process::private::tempdir`]),
/// given to `owner` if named (the scratch server's user).
pub(super) fn private_dir(
    owner: Option<&nix::unistd::User>,
) -> Result<tempfile::TempDir, ScratchError> {
    let dir = crate::process::private::tempdir()
        .map_err(ScratchError::io("cannot create a scratch directory"))?;
    if let Some(u) = owner {
        std::os::unix::fs::chown(dir.path(), Some(u.uid.as_raw()), Some(u.gid.as_raw())).map_err(
            ScratchError::io(format!(
                "cannot give {} to {}",
                dir.path().display(),
                u.name
            )),
        )?;
    }
    Ok(dir)
}

/// The last lines of a server's log, joined with ` | `.
pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A scratch PostgreSQL cluster.
pub struct ProcessPostgres {
    guard: Guarded,
    socket_dir: PathBuf,
    major: u32,
}

impl ScratchPostgres for ProcessPostgres {
    fn endpoint(&self) -> PgEndpoint {
        PgEndpoint {
            host: self.socket_dir.display().to_string(),
            port: 5432,
            user: "kompose_dr".into(),
            maintenance_db: "postgres".into(),
        }
    }

    fn major(&self) -> u32 {
        self.major
    }
}

/// A scratch Redis, on a unix socket with a password.
pub struct ProcessRedis {
    guard: Guarded,
    socket: PathBuf,
    password: Secret,
}

impl ScratchRedis for ProcessRedis {
    fn connection(&self) -> RedisConfig {
        RedisConfig {
            host: self.socket.display().to_string(),
            port: 0,
            username: None,
            password: Some(self.password.clone()),
            data_dir: None,
            container: None,
        }
    }
}

/// `path` as a double-quoted value of a Redis configuration file.
fn conf_quoted(path: &Path) -> String {
    let mut q = String::from('"');
    for c in path.display().to_string().chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Gives `path` and everything under it (not following links) to `user`.
/// Gives `path` and everything under it (not following symlinks) to
/// `owner` (uid, gid).
pub(super) fn chown_tree(path: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), owner)?;
        }
    }
    Ok(())
}

/// A user's uid and gid.
fn ids(u: &nix::unistd::User) -> (u32, u32) {
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The longest unix socket path (`sun_path` holds 108 bytes, with its NUL).
const SOCKET_PATH_MAX: usize = 107;

#[async_trait]
impl ScratchRuntime for ProcessRuntime {
    async fn postgres(&self, major: u32) -> Result<Box<dyn ScratchPostgres>, ScratchError> {
        let bin = PathBuf::from(self.postgres_bin.replace("{major}", &major.to_string()));
        for tool in ["initdb", "postgres"] {
            if !bin.join(tool).is_file() {
                return Err(ScratchError::NoPostgres {
                    major,
                    missing: bin.join(tool),
                });
            }
        }
        let owner = self.scratch_owner()?;
        let dir = private_dir(owner.as_ref())?;
        let socket_dir = dir.path().to_owned();
        let data = socket_dir.join("data");
        let log = socket_dir.join("postgres.log");
        // Guarded from here: a cancellation during initdb kills it and
        // removes the directory.
        let mut guard = Guarded {
            child: None,
            dir: Some(dir),
            holder: None,
        };
        self.initdb(&bin, &data).await?;
        let (child, holder) = self
            .start_postgres(&bin, &data, &socket_dir, &log, owner.as_ref())
            .await?;
        guard.child = Some(child);
        guard.holder = Some(holder);
        let mut scratch = ProcessPostgres {
            socket_dir,
            guard,
            major,
        };
        let cfg = scratch.connection();
        let start = Instant::now();
        loop {
            if crate::clients::postgres::connect(&cfg, "postgres")
                .await
                .is_ok()
            {
                break;
            }
            if scratch.guard.exited() || start.elapsed() > Duration::from_secs(60) {
                return Err(ScratchError::DidNotStart(format!(
                    "the scratch PostgreSQL {major} did not start: {}",
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Box::new(scratch))
    }

    async fn redis(
        &self,
        data_dir: &Path,
        aof: bool,
    ) -> Result<Box<dyn ScratchRedis>, ScratchError> {
        let exe = which("redis-server").ok_or(ScratchError::NoRedis)?;
        let owner = self.scratch_owner()?;
        let dir = private_dir(owner.as_ref())?;
        let root = dir.path().to_owned();
        let mut guard = Guarded {
            child: None,
            dir: Some(dir),
            holder: None,
        };
        let socket = root.join("redis.sock");
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(ScratchError::User(format!(
                "{} is too long for a unix socket ({SOCKET_PATH_MAX} bytes at most): set TMPDIR to a shorter directory",
                socket.display()
            )));
        }
        // The restored files move in and become the scratch user's.
        let data = root.join("data");
        std::fs::rename(data_dir, &data).map_err(ScratchError::io(format!(
            "cannot move {} into {}",
            data_dir.display(),
            root.display()
        )))?;
        if let Some(u) = &owner {
            chown_tree(&data, ids(u)).map_err(ScratchError::io(format!(
                "cannot give {} to {}",
                data.display(),
                u.name
            )))?;
        }
        let password = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let conf = root.join("redis.conf");
        let log = root.join("redis.log");
        let text = format!(
            "port 0\nunixsocket {}\nunixsocketperm 700\ndir {}\nappendonly {}\nsave \"\"\n\
             daemonize no\nlogfile {}\nprotected-mode yes\nrequirepass {}\n",
            conf_quoted(&socket),
            conf_quoted(&data),
            if aof { "yes" } else { "no" },
            conf_quoted(&log),
            password.expose()
        );
        write_private(&conf, text.as_bytes(), owner.as_ref().map(ids))
            .map_err(ScratchError::io(format!("cannot write {}", conf.display())))?;
        let mut cmd = Command::new(exe);
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let cmd = self.as_user(cmd)?;
        let (child, holder) = spawn_held(cmd, "redis-server").await?;
        guard.child = Some(child);
        guard.holder = Some(holder);
        let mut redis = ProcessRedis {
            guard,
            socket,
            password,
        };
        let cfg = redis.connection();
        let start = Instant::now();
        while !loaded(&cfg).await {
            if redis.guard.exited() || start.elapsed() > Duration::from_secs(120) {
                return Err(ScratchError::DidNotStart(format!(
                    "the scratch Redis did not load the restored files: {}",
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Box::new(redis))
    }

    fn tempdir(&self) -> Result<tempfile::TempDir, ScratchError> {
        private_dir(None)
    }
}

/// Whether the Redis at `cfg` answers and has finished loading its files.
pub(super) async fn loaded(cfg: &crate::model::config::RedisConfig) -> bool {
    let Ok(mut c) = crate::clients::redis::connect(cfg).await else {
        return false;
    };
    if redis::cmd("PING")
        .query_async::<String>(&mut c)
        .await
        .is_err()
    {
        return false;
    }
    // Loading may still be going on: wait until it is done.
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.contains("loading:0")
}

impl ProcessRuntime {
    /// The user scratch servers run as, when we are root (PostgreSQL
    /// refuses root; Redis must not hold restored data as root).
    fn scratch_owner(&self) -> Result<Option<nix::unistd::User>, ScratchError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(&self.user)
            .map_err(|e| ScratchError::User(format!("cannot look up user `{}`: {e}", self.user)))?
            .ok_or_else(|| {
                ScratchError::User(format!(
                    "[scratch] user `{}` does not exist: create it or set [scratch] user",
                    self.user
                ))
            })?;
        Ok(Some(user))
    }

    /// `cmd`, made to run as the scratch user when we are root.
    fn as_user(&self, mut cmd: Command) -> Result<Command, ScratchError> {
        crate::process::run_as(&mut cmd, &self.user)
            .map_err(|e| ScratchError::User(e.to_string()))?;
        Ok(cmd)
    }

    /// Creates the cluster in `data`: superuser `kompose_dr`, trust
    /// authentication (the socket directory is private), UTF-8.
    async fn initdb(&self, bin: &Path, data: &Path) -> Result<(), ScratchError> {
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(data)
            .args([
                "-U",
                "kompose_dr",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C.UTF-8",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Killed if the restore is cancelled (Ctrl-C, SIGTERM) meanwhile.
        let mut c = tokio::process::Command::from(self.as_user(initdb)?);
        let out = c
            .kill_on_drop(true)
            .output()
            .await
            .map_err(ScratchError::io("cannot run initdb"))?;
        if !out.status.success() {
            return Err(ScratchError::DidNotStart(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Starts `postgres` on `data`, listening only on a socket in
    /// `socket_dir`, logging to `log`.
    async fn start_postgres(
        &self,
        bin: &Path,
        data: &Path,
        socket_dir: &Path,
        log: &Path,
        owner: Option<&nix::unistd::User>,
    ) -> Result<(Child, Holder), ScratchError> {
        let logf =
            std::fs::File::create(log).map_err(ScratchError::io(log.display().to_string()))?;
        if let Some(u) = owner {
            let _ = std::os::unix::fs::chown(log, Some(u.uid.as_raw()), Some(u.gid.as_raw()));
        }
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(data)
            .arg("-k")
            .arg(socket_dir)
            .args([
                "-p",
                "5432",
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_wal_size=4GB",
            ])
            .stdin(Stdio::null())
            .stdout(
                logf.try_clone()
                    .map_err(ScratchError::io(log.display().to_string()))?,
            )
            .stderr(logf);
        // Dies with kompose-dr (kill -9, the OOM killer): the postmaster gets
        // SIGKILL and its backends follow it; nothing stays serving the
        // restored data.
        spawn_held(self.as_user(postgres)?, "postgres").await
    }
}

/// Writes a new file readable by its owner only (0600), given to `owner`.
fn write_private(path: &Path, body: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(body)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    })
}

/// A cluster being brought back from a base backup and archived WAL: a
/// private directory (owned by the scratch user) holding the data
/// directory to fill, a directory for the WAL files recovery will ask
/// for, and the socket.
pub struct RecoveryDir {
    pub(super) dir: tempfile::TempDir,
    /// Where the data directory goes (unless the caller names another).
    pub data: PathBuf,
    /// Where the WAL files go; `restore_command` copies from here.
    pub wal: PathBuf,
    owner: Option<nix::unistd::User>,
}

impl RecoveryDir {
    /// The private directory (for temporary files of the caller's).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new private directory (0700, given to `owner` if any) with its
    /// empty `data` and `wal` directories.
    pub(super) fn create(owner: Option<nix::unistd::User>) -> Result<RecoveryDir, ScratchError> {
        let dir = private_dir(owner.as_ref())?;
        let data = dir.path().join("data");
        let wal = dir.path().join("wal");
        for d in [&data, &wal] {
            std::fs::create_dir(d)
                .map_err(ScratchError::io(format!("cannot create {}", d.display())))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(ScratchError::io(format!("cannot protect {}", d.display())))?;
        }
        Ok(RecoveryDir {
            dir,
            data,
            wal,
            owner,
        })
    }
}

/// What [`ProcessRuntime::recover`] is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryRequest<'a> {
    /// The PostgreSQL major version of the base backup.
    pub major: u32,
    /// The data directory, when not the recovery directory's own (`--to
    /// DIR`: then written durably).
    pub data: Option<&'a Path>,
    /// Where the recovery stops.
    pub target: RecoveryTarget,
    /// The role of the recovered cluster to connect as.
    pub user: &'a str,
    /// How long the replay may take.
    pub limit: Duration,
}

/// Where a recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// After the last commit at or before this time
    /// (`recovery_target_time`, inclusive).
    Time(chrono::DateTime<chrono::Utc>),
    /// As soon as the base backup is consistent.
    Immediate,
    /// At the end of the WAL available.
    EndOfWal,
}

/// A cluster recovered to its target and promoted: serves like any scratch
/// PostgreSQL; [`RecoveredPostgres::shut_down`] stops it cleanly (a
/// data directory meant to be kept).
pub struct RecoveredPostgres {
    inner: ProcessPostgres,
    user: String,
}

impl ScratchPostgres for RecoveredPostgres {
    fn endpoint(&self) -> PgEndpoint {
        PgEndpoint {
            user: self.user.clone(),
            ..self.inner.endpoint()
        }
    }

    fn major(&self) -> u32 {
        self.inner.major
    }
}

impl RecoveredPostgres {
    /// Stops the server with a fast shutdown (a checkpoint, then exit) and
    /// waits for it, at most `limit`.
    pub async fn shut_down(mut self, limit: Duration) -> Result<(), ScratchError> {
        let Some(mut child) = self.inner.guard.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => {
                    return Err(ScratchError::DidNotStart(format!(
                        "the recovered PostgreSQL did not shut down cleanly ({s})"
                    )));
                }
                Err(e) => return Err(ScratchError::io("cannot wait for PostgreSQL")(e)),
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ScratchError::DidNotStart(format!(
                        "the recovered PostgreSQL did not shut down within {}s",
                        limit.as_secs()
                    )));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl ProcessRuntime {
    /// A private directory for a recovery (see [`RecoveryDir`]).
    pub fn recovery_dir(&self) -> Result<RecoveryDir, ScratchError> {
        RecoveryDir::create(self.scratch_owner()?)
    }

    /// Starts PostgreSQL `request.major` on `request.data` (filled by the
    /// caller from a base backup; `dir.data` unless another directory is
    /// named) in archive recovery: WAL from `dir.wal`, up to the target
    /// (`recovery_target_time`, inclusive) or, without one, to consistency;
    /// then promoted. Connects as `request.user` (a role of the recovered
    /// cluster: trust, on the private socket only). Waits until the
    /// promotion, at most `request.limit`, or until `cancel`; a recovery
    /// that cannot reach its target is [`ScratchError::TargetNotReached`],
    /// other failures carry the server's own words.
    pub async fn recover(
        &self,
        dir: RecoveryDir,
        request: RecoveryRequest<'_>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<RecoveredPostgres, ScratchError> {
        let RecoveryRequest {
            major,
            data,
            target,
            user,
            limit,
        } = request;
        let bin = PathBuf::from(self.postgres_bin.replace("{major}", &major.to_string()));
        if !bin.join("postgres").is_file() {
            return Err(ScratchError::NoPostgres {
                major,
                missing: bin.join("postgres"),
            });
        }
        // A directory the caller keeps (`--to DIR`) is written durably; a
        // scratch one need not be.
        let keep = data.is_some();
        let data = data.map(Path::to_owned).unwrap_or_else(|| dir.data.clone());
        let owner = dir.owner.as_ref().map(ids);
        let files = RecoveryFiles::prepare(&dir, &data, LOCAL_ONLY, owner)?;
        let mut postgres = Command::new(bin.join("postgres"));
        postgres.arg("-D").arg(&data).args(["-p", "5432"]);
        for (k, v) in recovery_settings(&files, &dir.wal, keep, target) {
            postgres.arg("-c").arg(format!("{k}={v}"));
        }
        let inner = self.spawn_recovery(postgres, dir, &files, major).await?;
        let server = RecoveredPostgres {
            inner,
            user: user.to_owned(),
        };
        wait_promoted(server, &files.log, limit, cancel).await
    }

    /// Starts the recovering server `postgres` as the scratch user, its
    /// output into the log; the guard owns the process and `dir`.
    async fn spawn_recovery(
        &self,
        mut postgres: Command,
        dir: RecoveryDir,
        files: &RecoveryFiles,
        major: u32,
    ) -> Result<ProcessPostgres, ScratchError> {
        let log = &files.log;
        let logf =
            std::fs::File::create(log).map_err(ScratchError::io(log.display().to_string()))?;
        if let Some(u) = &dir.owner {
            let _ = std::os::unix::fs::chown(log, Some(u.uid.as_raw()), Some(u.gid.as_raw()));
        }
        postgres
            .stdin(Stdio::null())
            .stdout(
                logf.try_clone()
                    .map_err(ScratchError::io(log.display().to_string()))?,
            )
            .stderr(logf);
        let mut guard = Guarded {
            child: None,
            dir: Some(dir.dir),
            holder: None,
        };
        let (child, holder) = spawn_held(self.as_user(postgres)?, "postgres").await?;
        guard.child = Some(child);
        guard.holder = Some(holder);
        Ok(ProcessPostgres {
            guard,
            socket_dir: files.socket_dir.clone(),
            major,
        })
    }
}

/// The access rules of a recovery on local processes: the private socket
/// only.
const LOCAL_ONLY: &[u8] = b"local all all trust\n";

/// The files of a recovery beside its data directory: socket directory,
/// log, and the access files that admit only the private socket.
pub(super) struct RecoveryFiles {
    /// Where the server's unix socket goes (the recovery directory).
    pub(super) socket_dir: PathBuf,
    /// The server's log.
    pub(super) log: PathBuf,
    /// Its `hba_file`.
    pub(super) hba: PathBuf,
    ident: PathBuf,
}

impl RecoveryFiles {
    /// Writes the access files (`hba`: the rules), readies `data` for
    /// archive recovery (without what a cluster started elsewhere brings)
    /// and gives it and the WAL directory to `owner` (uid, gid).
    pub(super) fn prepare(
        dir: &RecoveryDir,
        data: &Path,
        hba_rules: &[u8],
        owner: Option<(u32, u32)>,
    ) -> Result<RecoveryFiles, ScratchError> {
        let socket_dir = dir.dir.path().to_owned();
        let files = RecoveryFiles {
            log: socket_dir.join("postgres.log"),
            hba: socket_dir.join("pg_hba.conf"),
            ident: socket_dir.join("pg_ident.conf"),
            socket_dir,
        };
        let (hba, ident) = (&files.hba, &files.ident);
        write_private(hba, hba_rules, owner)
            .map_err(ScratchError::io(format!("cannot write {}", hba.display())))?;
        write_private(ident, b"", owner).map_err(ScratchError::io(format!(
            "cannot write {}",
            ident.display()
        )))?;
        // What a cluster started elsewhere must not bring: a standby's
        // signal, a running server's pid file.
        for stale in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            // Debian keeps it in /etc: the base backup has none.
            write_private(&conf, b"", owner)
                .map_err(ScratchError::io(format!("cannot write {}", conf.display())))?;
        }
        write_private(&data.join("recovery.signal"), b"", owner)
            .map_err(ScratchError::io("cannot write recovery.signal"))?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(
            ScratchError::io(format!("cannot protect {}", data.display())),
        )?;
        if let Some(owner) = owner {
            for p in [data, dir.wal.as_path()] {
                chown_tree(p, owner).map_err(ScratchError::io(format!(
                    "cannot give {} to uid {}",
                    p.display(),
                    owner.0
                )))?;
            }
        }
        Ok(files)
    }
}

/// The settings a recovery runs with: the private socket and access files,
/// WAL from `wal`, nothing production's configuration (in the base backup)
/// may say that must not act here, and the target.
pub(super) fn recovery_settings(
    files: &RecoveryFiles,
    wal: &Path,
    keep: bool,
    target: RecoveryTarget,
) -> Vec<(&'static str, String)> {
    let restore_command = format!("cp '{}/%f' '%p'", wal.display());
    let mut settings: Vec<(&str, String)> = vec![
        ("listen_addresses", String::new()),
        (
            "unix_socket_directories",
            files.socket_dir.display().to_string(),
        ),
        ("hba_file", files.hba.display().to_string()),
        ("ident_file", files.ident.display().to_string()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("logging_collector", "off".into()),
        ("synchronous_standby_names", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("fsync", if keep { "on" } else { "off" }.into()),
        ("hot_standby", "on".into()),
        // What production's configuration (in the base backup) may say
        // that must not act here: commands, delays, other targets,
        // per-session libraries.
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("archive_command", String::new()),
        ("recovery_min_apply_delay", "0".into()),
        ("recovery_target_name", String::new()),
        ("recovery_target_lsn", String::new()),
        ("recovery_target_xid", String::new()),
        ("local_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("restore_command", restore_command),
        ("recovery_target_action", "promote".into()),
        ("recovery_target_timeline", "latest".into()),
        ("cluster_name", "kompose-dr-recovery".into()),
    ];
    match target {
        RecoveryTarget::Time(t) => {
            settings.push(("recovery_target", String::new()));
            settings.push((
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            ));
            settings.push(("recovery_target_inclusive", "on".into()));
        }
        RecoveryTarget::Immediate => settings.push(("recovery_target", "immediate".into())),
        RecoveryTarget::EndOfWal => settings.push(("recovery_target", String::new())),
    }
    settings
}

/// What PostgreSQL logs when the WAL ended before the recovery target (it
/// gives this FATAL no SQLSTATE of its own, so its words are all there is).
pub(super) const TARGET_NOT_REACHED: &str =
    "recovery ended before configured recovery target was reached";

/// A recovery that ended, by what its server said: the WAL ended before
/// the target ([`ScratchError::TargetNotReached`], which the caller retries
/// to the end of the log), or any other failure.
pub(super) fn recovery_failed(message: String) -> ScratchError {
    if message.contains(TARGET_NOT_REACHED) {
        ScratchError::TargetNotReached(message)
    } else {
        ScratchError::DidNotStart(message)
    }
}

/// Waits until `server` is promoted (out of recovery), at most `limit`, or
/// until `cancel`; a server that exited fails with its log's words.
async fn wait_promoted(
    mut server: RecoveredPostgres,
    log: &Path,
    limit: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RecoveredPostgres, ScratchError> {
    let cfg = server.connection();
    let start = Instant::now();
    loop {
        if let Ok(c) = crate::clients::postgres::connect(&cfg, "postgres").await
            && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
            && !row.get::<_, bool>(0)
        {
            return Ok(server);
        }
        if server.inner.guard.exited() {
            return Err(recovery_failed(format!(
                "the recovery failed: {}",
                recovery_log(log)
            )));
        }
        if start.elapsed() > limit {
            return Err(ScratchError::DidNotStart(format!(
                "the recovery did not finish within {}s: {}",
                limit.as_secs(),
                log_tail(log)
            )));
        }
        if cancel.is_cancelled() {
            return Err(ScratchError::DidNotStart(
                "interrupted during the recovery".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines of a recovery's log that say why it stopped.
pub(super) fn recovery_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let wanted: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FATAL") || l.contains("PANIC") || l.contains("ERROR"))
        .collect();
    if wanted.is_empty() {
        log_tail(path)
    } else {
        wanted[wanted.len().saturating_sub(3)..].join(" | ")
    }
}
