//! The WAL archiver (docs/DESIGN.md §11): continuous archiving of the
//! server's write-ahead log into every repository, so a database can be
//! brought back to any second, not only to last night's dump.
//!
//! `pg_receivewal` (the replication protocol, run like pg_dump is run)
//! writes the log into a spool directory, `spool_dir/<system id>/`, a few
//! segments deep. The archiver watches it:
//!
//! - a **complete segment** is compressed, encrypted, stored in every
//!   repository, and only then gets its record (the commit point); it then
//!   leaves the spool, except the newest file, from which pg_receivewal
//!   resumes after a restart — so a restart neither skips nor repeats;
//! - the **segment being written** is shipped at least every `max_lag`
//!   under a fresh key, its record replaced after, the previous shipment
//!   removed last: kill -9 at any moment leaves one complete, named copy,
//!   and loses at most `max_lag` of log even if the spool is lost too;
//! - **history files** (a promotion started a new timeline) are stored
//!   once.
//!
//! With several repositories, a file stays in the spool (and is shipped
//! again) until every repository holds it: a repository that is down
//! makes the spool grow, never a gap in it.
//!
//! Every record says until when the server's commits are covered
//! (`covered_until`, by the server's clock): the archiver asks the server
//! for its time and its insert position, and claims that time only once
//! pg_receivewal has reported that position flushed — so a recovery to
//! any moment up to it finds every commit made before it.
//!
//! With an empty spool and an archive that already holds log, the spool is
//! seeded with a zero-filled `.partial` of the segment after the newest
//! archived one, which makes pg_receivewal start there: a server that
//! recycled that log meanwhile is reported as a gap, naming the segment,
//! and archiving resumes at the server's current position. With an archive
//! that holds no log of the cluster yet, the seed is the segment where the
//! oldest retained base backup starts ([`seed`]), so a base backup taken
//! before the archiver first ran has its log too.
//!
//! With `postgres.container`, pg_receivewal runs in a sidecar container
//! beside the server's ([`sidecar`]); the control session (the server's
//! clock and positions) goes through the engine as every other session.

pub mod seed;
pub mod sidecar;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::sidecar::Sidecar;
use super::cluster::{ClusterIdentity, identity};
use crate::clients::launch::Launch;
use crate::clients::postgres::{DumpTool, choose_client, command, connect_within, server_version};
use crate::model::config::{PostgresConfig, WalConfig};
use crate::model::wal::{Lsn, Segment, WAL_RECORD_VERSION, WalKind, WalRecord, parse_history};
use crate::pipeline;
use crate::process::{Ended, Running};
use crate::sources::{SourceContext, SourceError};
use crate::storage::keys;

/// The prefix of the application name pg_receivewal connects with; each
/// archiver adds its pid and a random tag, and finds its own flush
/// position in `pg_stat_replication` by the whole name (not another
/// archiver's, nor a walsender left by a dead one).
pub const APPLICATION_NAME: &str = "kompose-dr-wal";

/// How often the spool is looked at.
const TICK: Duration = Duration::from_millis(500);

/// A commit is claimed covered this long after the observation that
/// covers it: a commit's timestamp is taken a moment before its record is
/// inserted.
const COMMIT_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// What the archiver is doing, for metrics, `/healthz` and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalStatus {
    /// The cluster being archived.
    pub system_identifier: Option<String>,
    /// The newest file stored.
    pub last_archived: Option<String>,
    /// Every commit before this moment (server time) is archived.
    pub covered_until: Option<DateTime<Utc>>,
    /// When the archiver last stored anything (its clock).
    pub last_shipped_at: Option<DateTime<Utc>>,
    /// Files stored since start.
    pub shipped: u64,
    /// Whether pg_receivewal is running now.
    pub streaming: bool,
    /// The last problem, if the archiver is not healthy.
    pub last_error: Option<String>,
    /// Gaps reported since start (the first missing segment of each).
    pub gaps: Vec<String>,
}

/// Shared view of the status.
pub type SharedStatus = Arc<Mutex<WalStatus>>;

/// One observation of the server: its clock and insert position.
#[derive(Debug, Clone, Copy)]
struct Observation {
    at: DateTime<Utc>,
    lsn: Lsn,
}

/// The archiver of one server.
pub struct Archiver {
    cfg: PostgresConfig,
    wal: WalConfig,
    ctx: SourceContext,
    status: SharedStatus,
    /// This archiver's application name.
    app: String,
    /// How far the archive's partial copies go, per segment name, as
    /// found at start.
    partial_ends: Mutex<BTreeMap<String, Lsn>>,
    /// The sidecar's image, if not the server container's (`[scratch]
    /// image`).
    image: Option<String>,
    /// The segment the spool was seeded with from a base backup, and that
    /// snapshot's id: a gap there is that base backup's.
    seeded_from_base: Mutex<Option<(String, String)>>,
}

/// Where pg_receivewal runs.
enum Receiver {
    /// Here, or (without a sidecar) as the chosen client tool says.
    Tool(DumpTool),
    /// In a sidecar container beside the server's.
    Sidecar(Box<Sidecar>),
}

impl Receiver {
    /// pg_receivewal, connecting to `database`.
    fn command(&self, cfg: &PostgresConfig, database: &str) -> Launch {
        match self {
            Receiver::Tool(tool) => command(cfg, tool, "pg_receivewal", database),
            Receiver::Sidecar(s) => s.launch(cfg, "pg_receivewal", database),
        }
    }
}

/// What [`Archiver::prepare`] sets up: the cluster, its locked spool, and
/// (container mode) a first sidecar, proven to have pg_receivewal.
struct Prepared {
    id: ClusterIdentity,
    spool: PathBuf,
    lock: std::fs::File,
    sidecar: Option<Sidecar>,
}

/// A file in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spooled {
    Complete(Segment),
    Partial(Segment),
    History(u32),
}

/// One life of pg_receivewal: the cluster, its spool, when to stop, and
/// whether to seed an empty spool from the archive.
struct Life<'a> {
    id: &'a ClusterIdentity,
    spool: &'a Path,
    stop: &'a CancellationToken,
    seed: bool,
}

/// What the archiver remembers between ticks.
#[derive(Default)]
struct Progress {
    /// The server's clock and insert position, as observed in this life of
    /// pg_receivewal.
    observations: VecDeque<Observation>,
    /// The partial copy stored of each segment still being written.
    shipped: BTreeMap<Segment, Shipped>,
    /// The complete segments and history files every repository holds.
    done: std::collections::BTreeSet<String>,
}

/// What one look at the spool found.
struct Look<'a> {
    id: &'a ClusterIdentity,
    /// The newest segment in the spool.
    newest: Option<Segment>,
    /// How far pg_receivewal has flushed, if the server said.
    flushed: Option<Lsn>,
    /// Whether partial segments are due to be shipped.
    partial_due: bool,
}

/// Where segment `seg` ends: the next one's start.
fn seg_end(seg: Segment, segment_size: u64) -> Lsn {
    Segment {
        timeline: seg.timeline,
        number: seg.number + 1,
    }
    .start(segment_size)
}

/// What has been stored of a partial segment.
#[derive(Debug, Clone)]
struct Shipped {
    record: WalRecord,
    /// The flush position the shipped copy holds.
    flushed: Lsn,
}

impl Archiver {
    /// An archiver of `cfg`'s server into `ctx`'s repositories.
    pub fn new(cfg: PostgresConfig, wal: WalConfig, ctx: SourceContext) -> Archiver {
        Archiver {
            cfg,
            wal,
            ctx,
            status: SharedStatus::default(),
            app: format!(
                "{APPLICATION_NAME}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            partial_ends: Mutex::default(),
            image: None,
            seeded_from_base: Mutex::default(),
        }
    }

    /// Makes the sidecar (container mode) from `image` rather than the
    /// server container's image (`[scratch] image`).
    pub fn with_image(mut self, image: Option<String>) -> Archiver {
        self.image = image;
        self
    }

    /// The status, updated as it runs.
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    fn set_error(&self, e: impl Into<String>) {
        let e = self.ctx.redactor.scrub(&e.into());
        tracing::error!("WAL archiving: {e}");
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e);
    }

    /// Archives until `stop` is cancelled. Errors that a restart may cure
    /// (the server restarting, a repository down) are retried with
    /// backoff; only what needs the operator (configuration, a missing
    /// tool, another archiver on the spool) ends it.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), SourceError> {
        let mut backoff = Duration::from_secs(1);
        let mut state: Option<(ClusterIdentity, PathBuf, std::fs::File)> = None;
        let mut ready: Option<Sidecar> = None;
        let mut progress = Progress::default();
        // After a gap, or a timeline the server forked away from, the
        // archive's end is no place to resume: the next start takes the
        // server's current position.
        let mut resume_from_archive = true;
        while !stop.is_cancelled() {
            let round = async {
                if state.is_none() {
                    let p = self.prepare().await?;
                    progress.done = self.archived_names(&p.id).await;
                    ready = p.sidecar;
                    state = Some((p.id, p.spool, p.lock));
                }
                let (id, spool, _) = state.as_ref().expect("prepared");
                let seed = std::mem::replace(&mut resume_from_archive, true);
                let life = Life {
                    id,
                    spool,
                    stop: &stop,
                    seed,
                };
                self.stream(life, &mut progress, ready.take()).await
            };
            match round.await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) if e.is_tool() && state.is_none() => return Err(e),
                Err(e) => {
                    self.set_error(e.to_string());
                    if state.is_none() && e.is_data() {
                        return Err(e);
                    }
                    if e.is_data() {
                        resume_from_archive = false;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        Ok(())
    }

    /// Learns the cluster, checks the tool, makes and locks the spool; in
    /// container mode, removes the sidecars a killed archiver left (the
    /// lock proves none is in use) and starts one.
    async fn prepare(&self) -> Result<Prepared, SourceError> {
        let client = connect_within(
            &self.cfg,
            &self.cfg.endpoint.maintenance_db,
            self.ctx.timeouts.connect,
        )
        .await?;
        let id = identity(&client).await?;
        let server = server_version(&client).await?;
        drop(client);
        if self.cfg.container.is_none() {
            choose_client(
                &self.cfg,
                "pg_receivewal",
                server.major,
                &format!("the server (PostgreSQL {})", server.text),
            )
            .await?;
        }
        let (spool, lock) = self.lock_spool(&id)?;
        let sidecar = match &self.cfg.container {
            Some(c) => {
                let swept = sidecar::sweep(c, &spool).await?;
                if swept > 0 {
                    tracing::info!(swept, "removed the WAL sidecar a killed archiver left");
                }
                Some(self.sidecar(&spool, server.major).await?)
            }
            None => None,
        };
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .system_identifier = Some(id.system_identifier.clone());
        tracing::info!(system_identifier = %id.system_identifier, timeline = id.timeline, spool = %spool.display(), "WAL archiving");
        if self.wal.slot.is_none() {
            tracing::warn!(
                "no [postgres.wal] slot: the server does not wait for the archiver, and a checkpoint (a base \
                 backup's, above all) may recycle WAL pg_receivewal has not received yet on a busy server, \
                 a gap no recovery can cross; set [postgres.wal] slot to keep every second restorable"
            );
        }
        Ok(Prepared {
            id,
            spool,
            lock,
            sidecar,
        })
    }

    /// A new sidecar for `spool`.
    async fn sidecar(&self, spool: &Path, server_major: u32) -> Result<Sidecar, SourceError> {
        sidecar::start(sidecar::Want {
            cfg: &self.cfg,
            image: self.image.as_deref(),
            spool,
            server_major,
        })
        .await
    }

    /// Makes the spool of cluster `id` (and its parents, 0700, as systemd's
    /// `StateDirectory=` would) and takes its lock: only one archiver may
    /// use it.
    fn lock_spool(&self, id: &ClusterIdentity) -> Result<(PathBuf, std::fs::File), SourceError> {
        let spool = self.wal.spool_dir.join(&id.system_identifier);
        make_private_dirs(&spool).map_err(|e| {
            SourceError::Data(format!(
                "cannot create the WAL spool {}: {e}; set [postgres.wal] spool_dir to a directory this user may write",
                spool.display()
            ))
        })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(spool.join(".lock"))
            .map_err(SourceError::io(format!(
                "cannot open {}/.lock",
                spool.display()
            )))?;
        if lock.try_lock().is_err() {
            return Err(SourceError::Data(format!(
                "another WAL archiver uses {} (kompose-dr agent or kompose-dr wal): run only one",
                spool.display()
            )));
        }
        Ok((spool, lock))
    }

    /// The complete segments and history files every repository holds.
    async fn archived_names(&self, id: &ClusterIdentity) -> std::collections::BTreeSet<String> {
        let mut per_repo = Vec::new();
        for repo in &self.ctx.repositories {
            match repo.wal_records(&id.system_identifier).await {
                Ok((records, _)) => per_repo.push({
                    let mut ends = self.partial_ends.lock().unwrap_or_else(|p| p.into_inner());
                    for r in records.iter().filter(|r| r.kind == WalKind::Partial) {
                        if let Some(e) = r.end_lsn {
                            let v = ends.entry(r.name.clone()).or_insert(e);
                            *v = (*v).min(e);
                        }
                    }
                    drop(ends);
                    records
                        .into_iter()
                        .filter(|r| r.kind != WalKind::Partial)
                        .map(|r| r.name)
                        .collect::<std::collections::BTreeSet<_>>()
                }),
                Err(_) => per_repo.push(Default::default()),
            }
        }
        let mut it = per_repo.into_iter();
        let first = it.next().unwrap_or_default();
        it.fold(first, |acc, s| acc.intersection(&s).cloned().collect())
    }

    /// One life of pg_receivewal: start it, ship what it writes, until it
    /// exits or `stop`.
    ///
    /// In container mode each life has a sidecar of its own (`ready`, or a
    /// new one): a server restarted meanwhile has a new network namespace.
    /// It is removed when the life ends.
    async fn stream(
        &self,
        life: Life<'_>,
        progress: &mut Progress,
        ready: Option<Sidecar>,
    ) -> Result<(), SourceError> {
        let Life {
            id,
            spool,
            stop,
            seed,
        } = life;
        let client = connect_within(
            &self.cfg,
            &self.cfg.endpoint.maintenance_db,
            self.ctx.timeouts.connect,
        )
        .await?;
        let server = server_version(&client).await?;
        let receiver = match (ready, &self.cfg.container) {
            (Some(s), _) => Receiver::Sidecar(Box::new(s)),
            (None, Some(_)) => {
                Receiver::Sidecar(Box::new(self.sidecar(spool, server.major).await?))
            }
            (None, None) => Receiver::Tool(
                choose_client(
                    &self.cfg,
                    "pg_receivewal",
                    server.major,
                    &format!("the server (PostgreSQL {})", server.text),
                )
                .await?,
            ),
        };
        if seed {
            self.seed(id, spool).await?;
        }
        if let Some(slot) = &self.wal.slot {
            self.create_slot(&receiver, slot).await?;
            if !seed {
                advance_slot(&client, slot).await;
            }
        }
        let (mut child, stderr) = self.start_receiver(&receiver, spool).await?;
        self.set_streaming(true);
        progress.observations.clear();
        let exited = self
            .follow(&client, id, spool, stop, &mut child, progress)
            .await;
        // Stopping: the newest log goes out before we do.
        if exited.is_none() {
            if let Err(e) = self.tick(&client, id, spool, progress, true).await {
                self.set_error(e.to_string());
            }
            child.kill();
            // A sidecar's removal ends its pg_receivewal for sure (an exec
            // on a remote engine cannot be signalled).
            drop(receiver);
            let _ = child.wait().await;
        }
        self.set_streaming(false);
        let tail = tokio::time::timeout(Duration::from_secs(5), stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        // What was complete when it stopped.
        let _ = self.tick(&client, id, spool, progress, false).await;
        self.ended(id, spool, exited, &tail)
    }

    /// Creates the replication slot `slot` if it does not exist.
    async fn create_slot(&self, receiver: &Receiver, slot: &str) -> Result<(), SourceError> {
        let mut create = receiver.command(&self.cfg, &self.cfg.endpoint.maintenance_db);
        create
            .arg("--create-slot")
            .arg("--if-not-exists")
            .arg(format!("--slot={slot}"));
        let mut running = create
            .start("pg_receivewal", false)
            .await
            .map_err(|source| SourceError::Launch {
                program: "pg_receivewal".into(),
                source,
            })?
            .killed_on_drop();
        let tail = crate::process::stderr_tail(
            running.stderr.take(),
            "pg_receivewal",
            self.ctx.redactor.clone(),
        );
        let ended = running
            .wait_within(self.ctx.timeouts.child_exit, "pg_receivewal")
            .await
            .map_err(|e| SourceError::Tool(e.to_string()))?;
        if !ended.success() {
            return Err(SourceError::Tool(format!(
                "cannot create replication slot `{slot}`: {}",
                tail.await.unwrap_or_default().trim()
            )));
        }
        Ok(())
    }

    /// Starts pg_receivewal into `spool`; returns it and the tail of its
    /// stderr (in the C locale: it is read for gaps).
    async fn start_receiver(
        &self,
        receiver: &Receiver,
        spool: &Path,
    ) -> Result<(Running, tokio::task::JoinHandle<String>), SourceError> {
        let mut cmd = receiver.command(&self.cfg, &self.cfg.endpoint.maintenance_db);
        cmd.env("PGAPPNAME", &self.app)
            .env("LC_ALL", "C")
            .env("LC_MESSAGES", "C")
            .arg(format!("--directory={}", spool.display()))
            .arg("--synchronous")
            .arg("--no-loop")
            .arg("--status-interval=1")
            .arg("--verbose");
        if let Some(slot) = &self.wal.slot {
            cmd.arg(format!("--slot={slot}"));
        }
        if let Launch::Local(c) = &mut cmd {
            crate::process::die_with_parent(c.as_std_mut());
        }
        let mut child = cmd
            .start("pg_receivewal", false)
            .await
            .map_err(|source| SourceError::Launch {
                program: "pg_receivewal".into(),
                source,
            })?
            .killed_on_drop();
        drop(child.stdout.take());
        let stderr = crate::process::stderr_tail(
            child.stderr.take(),
            "pg_receivewal",
            self.ctx.redactor.clone(),
        );
        Ok((child, stderr))
    }

    /// Ticks until pg_receivewal exits (its status) or `stop` (`None`);
    /// partial segments go out every `max_lag`.
    async fn follow(
        &self,
        client: &tokio_postgres::Client,
        id: &ClusterIdentity,
        spool: &Path,
        stop: &CancellationToken,
        child: &mut Running,
        progress: &mut Progress,
    ) -> Option<std::io::Result<Ended>> {
        let mut last_partial_ship = Instant::now()
            .checked_sub(self.wal.max_lag)
            .unwrap_or_else(Instant::now);
        loop {
            tokio::select! {
                ended = child.wait() => return Some(ended),
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(TICK) => {}
            }
            let due = last_partial_ship.elapsed() >= self.wal.max_lag;
            if let Err(e) = self.tick(client, id, spool, progress, due).await {
                self.set_error(e.to_string());
            } else if due {
                last_partial_ship = Instant::now();
            }
        }
    }

    /// How a life ended: stopped (fine), a gap in the server's log, or
    /// pg_receivewal failing.
    fn ended(
        &self,
        id: &ClusterIdentity,
        spool: &Path,
        exited: Option<std::io::Result<Ended>>,
        tail: &str,
    ) -> Result<(), SourceError> {
        match exited {
            None => Ok(()),
            Some(_) if let Some(cause) = gap_cause(tail) => {
                let gap = self.report_gap(id, spool, cause);
                Err(SourceError::Data(gap))
            }
            Some(ended) => Err(SourceError::Tool(format!(
                "pg_receivewal stopped ({}): {}",
                ended
                    .map(|e| e.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                tail.trim()
            ))),
        }
    }

    fn set_streaming(&self, on: bool) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streaming = on;
    }

    /// The server recycled log before it was archived (`cause`, the
    /// server's own words): says which, clears the spool so the next start
    /// takes the server's current position.
    fn report_gap(&self, id: &ClusterIdentity, spool: &Path, cause: &str) -> String {
        let first = removed_segment(cause, id.segment_size)
            .or_else(|| {
                list_spool(spool, id.segment_size).ok().and_then(|files| {
                    files.into_iter().find_map(|(f, _)| match f {
                        Spooled::Partial(s) | Spooled::Complete(s) => Some(s),
                        Spooled::History(_) => None,
                    })
                })
            })
            .map_or_else(|| "?".into(), |s| s.name(id.segment_size));
        for (_, p) in list_spool(spool, id.segment_size).unwrap_or_default() {
            let _ = std::fs::remove_file(p);
        }
        let base = self
            .seeded_from_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|(seg, _)| *seg == first)
            .map(|(_, snapshot)| {
                format!(
                    " The base backup of snapshot {snapshot} starts in that segment and was taken before \
                     archiving started: it cannot be recovered past its own end."
                )
            })
            .unwrap_or_default();
        let msg = format!(
            "the server recycled WAL from segment {first} on before it was archived: recovery cannot cross this gap.{base} \
             Archiving resumes at the server's current position; take a base backup now \
             (kompose-dr backup --source postgres/cluster), and set [postgres.wal] slot so the server keeps WAL \
             until it is archived ({})",
            cause.trim()
        );
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gaps
            .push(first);
        msg
    }

    /// Observes the server, then ships what is due.
    async fn tick(
        &self,
        client: &tokio_postgres::Client,
        id: &ClusterIdentity,
        spool: &Path,
        progress: &mut Progress,
        partial_due: bool,
    ) -> Result<(), SourceError> {
        let flushed = observe(client, &self.app, &mut progress.observations).await;
        let files = list_spool(spool, id.segment_size)?;
        let newest = files.iter().rev().find_map(|(f, _)| match f {
            Spooled::Complete(s) | Spooled::Partial(s) => Some(*s),
            Spooled::History(_) => None,
        });
        let look = Look {
            id,
            newest,
            flushed,
            partial_due,
        };
        for (file, path) in &files {
            match file {
                Spooled::History(tl) => self.ship_history(id, *tl, path, progress).await?,
                Spooled::Complete(seg) => self.ship_complete(&look, *seg, path, progress).await?,
                Spooled::Partial(seg) => self.ship_partial(&look, *seg, path, progress).await?,
            }
        }
        Ok(())
    }

    /// Ships a timeline history file once.
    async fn ship_history(
        &self,
        id: &ClusterIdentity,
        tl: u32,
        path: &Path,
        progress: &mut Progress,
    ) -> Result<(), SourceError> {
        let name = crate::model::wal::history_name(tl);
        if !progress.done.contains(&name)
            && self
                .ship(id, tl, &name, WalKind::History, path, None, None)
                .await?
                .1
        {
            progress.done.insert(name);
        }
        Ok(())
    }

    /// Ships a complete segment until every repository holds it, then
    /// drops its partial copies and (unless it is the newest) the file.
    async fn ship_complete(
        &self,
        look: &Look<'_>,
        seg: Segment,
        path: &Path,
        progress: &mut Progress,
    ) -> Result<(), SourceError> {
        let id = look.id;
        let name = seg.name(id.segment_size);
        if !progress.done.contains(&name) {
            let end = seg_end(seg, id.segment_size);
            let covered = covered_by(&progress.observations, end, Some(end));
            let kind = WalKind::Segment;
            let (_, everywhere) = self
                .ship(id, seg.timeline, &name, kind, path, covered, Some(end))
                .await?;
            if !everywhere {
                // Kept in the spool and shipped again next time, until
                // every repository holds it.
                return Ok(());
            }
            progress.done.insert(name);
        }
        // Its partial copies are superseded.
        if let Some(old) = progress.shipped.remove(&seg) {
            for repo in &self.ctx.repositories {
                let _ = repo.delete_wal(&old.record).await;
            }
        }
        if Some(seg) != look.newest {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Ships what pg_receivewal has flushed of a segment still being
    /// written, when due (every `max_lag`, or once it is no longer the
    /// newest), never replacing what the archive holds with less.
    async fn ship_partial(
        &self,
        look: &Look<'_>,
        seg: Segment,
        path: &Path,
        progress: &mut Progress,
    ) -> Result<(), SourceError> {
        let id = look.id;
        let Some(flushed) = look.flushed else {
            return Ok(());
        };
        let end = seg_end(seg, id.segment_size);
        let holds = flushed.min(end);
        if holds <= seg.start(id.segment_size) {
            return Ok(()); // nothing of it received yet (a seed)
        }
        // A partial copy of a timeline that has ended (a newer timeline
        // streams now): the flush position is the new timeline's, so it
        // proves nothing about this copy.
        let current = look.newest.is_none_or(|n| n.timeline == seg.timeline);
        let last = progress.shipped.get(&seg);
        let newer_data = last.is_none_or(|l| l.flushed < holds);
        let covered = if current {
            covered_by(&progress.observations, holds, Some(end))
        } else {
            None
        };
        if last.is_none() && self.archive_holds_more(&seg.name(id.segment_size), holds) {
            return Ok(());
        }
        if !(look.partial_due || Some(seg) != look.newest && newer_data) {
            return Ok(());
        }
        if !newer_data {
            return self.refresh_covered(seg, holds, covered, progress).await;
        }
        let name = seg.name(id.segment_size);
        let until = current.then_some(holds);
        let kind = WalKind::Partial;
        let (record, _) = match self
            .ship(id, seg.timeline, &name, kind, path, covered, until)
            .await
        {
            // Completed (renamed) between the listing and now: the next
            // look ships the complete segment.
            Err(e) if e.is_data() && !path.exists() => return Ok(()),
            r => r?,
        };
        let now = Shipped {
            record,
            flushed: holds,
        };
        if let Some(old) = progress.shipped.insert(seg, now) {
            // The new record is in place: the old copy is not named.
            for repo in &self.ctx.repositories {
                let _ = repo.delete_object(&old.record.path).await;
            }
        }
        Ok(())
    }

    /// Whether the archive already held more of segment `name` than `holds`
    /// when the archiver started (a restart with an empty spool).
    fn archive_holds_more(&self, name: &str, holds: Lsn) -> bool {
        self.partial_ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|e| *e > holds)
    }

    /// The shipped partial copy of `seg` holds the same bytes: only its
    /// covered time moves on, in a rewritten record.
    async fn refresh_covered(
        &self,
        seg: Segment,
        holds: Lsn,
        covered: Option<DateTime<Utc>>,
        progress: &mut Progress,
    ) -> Result<(), SourceError> {
        let Some(l) = progress.shipped.get(&seg) else {
            return Ok(());
        };
        let Some(c) = covered.filter(|c| l.record.covered_until.is_none_or(|x| x < *c)) else {
            return Ok(());
        };
        let mut r = l.record.clone();
        r.covered_until = Some(c);
        r.archived_at = Utc::now();
        for repo in &self.ctx.repositories {
            repo.put_wal_record(&r).await?;
        }
        self.note(&r);
        let now = Shipped {
            record: r,
            flushed: holds,
        };
        progress.shipped.insert(seg, now);
        Ok(())
    }

    fn note(&self, r: &WalRecord) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.last_archived = Some(r.name.clone());
        s.last_shipped_at = Some(r.archived_at);
        if let Some(c) = r.covered_until
            && s.covered_until.is_none_or(|x| x < c)
        {
            s.covered_until = Some(c);
        }
        s.shipped += 1;
        s.last_error = None;
    }

    /// Stores one spooled file in every repository, then its record.
    #[allow(clippy::too_many_arguments)]
    async fn ship(
        &self,
        id: &ClusterIdentity,
        timeline: u32,
        name: &str,
        kind: WalKind,
        path: &Path,
        covered_until: Option<DateTime<Utc>>,
        end_lsn: Option<Lsn>,
    ) -> Result<(WalRecord, bool), SourceError> {
        let tag = (kind == WalKind::Partial).then(|| format!("{:016x}", rand::random::<u64>()));
        let key = keys::wal_file_key(&id.system_identifier, timeline, name, tag.as_deref());
        let file = tokio::fs::File::open(path)
            .await
            .map_err(SourceError::io(format!("cannot open {}", path.display())))?;
        let (input, pump) = pipeline::input_from_reader(file);
        let encoded = self.ctx.encode(&key, input).await;
        let _ = pump.await;
        let stored = self.ctx.finish(&key, encoded?, Ok(())).await?;
        let record = WalRecord {
            version: WAL_RECORD_VERSION,
            system_identifier: id.system_identifier.clone(),
            name: name.to_owned(),
            timeline,
            kind,
            segment_size: id.segment_size,
            path: key,
            plaintext_bytes: stored.plaintext_bytes,
            stored_bytes: stored.stored_bytes,
            sha256: stored.sha256.clone(),
            archived_at: Utc::now(),
            covered_until,
            end_lsn,
        };
        let mut stored_somewhere = false;
        let mut everywhere = stored.failed_in.is_empty();
        for repo in &self.ctx.repositories {
            if stored.failure_in(repo.name()).is_some() {
                continue;
            }
            match repo.put_wal_record(&record).await {
                Ok(()) => stored_somewhere = true,
                Err(e) => {
                    everywhere = false;
                    self.set_error(format!("{name}: {e}"));
                }
            }
        }
        if !stored_somewhere {
            return Err(SourceError::Store(format!(
                "{name}: no repository took its record"
            )));
        }
        if !stored.failed_in.is_empty() {
            self.set_error(format!(
                "{name} is missing from {}: {}",
                stored
                    .failed_in
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                stored
                    .failed_in
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        tracing::debug!(file = %name, kind = ?kind, covered_until = ?covered_until, "WAL archived");
        self.note(&record);
        Ok((record, everywhere))
    }
}

/// After a gap, moves the replication slot `slot` to the server's flush
/// position: pg_receivewal starts where the slot is, and a slot left
/// pointing into log the server has recycled (the position a failed start
/// asked for) would make it ask for that log again and again. A slot in
/// use, or that never held a position, is left alone.
async fn advance_slot(client: &tokio_postgres::Client, slot: &str) {
    let moved = client
        .query(
            "SELECT pg_replication_slot_advance(slot_name, pg_current_wal_flush_lsn())::text \
             FROM pg_replication_slots \
             WHERE slot_name = $1 AND slot_type = 'physical' AND restart_lsn IS NOT NULL AND NOT active",
            &[&slot],
        )
        .await;
    match moved {
        Ok(rows) if !rows.is_empty() => {
            tracing::info!(
                slot,
                "replication slot moved to the server's position after the gap"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(slot, error = %crate::clients::postgres::db_error("moving the replication slot", e), "the slot stays where it is");
        }
    }
}

/// The line of pg_receivewal's stderr saying the log it asked for is gone
/// from the server (recycled, or on a timeline the server forked away
/// from), if one does. pg_receivewal's last line is always `disconnected`
/// (with `--no-loop`), whatever the cause: a connection lost (a server
/// restarting) is no gap, and the spool resumes it.
fn gap_cause(tail: &str) -> Option<&str> {
    tail.lines().find(|l| {
        l.contains("has already been removed")
            || l.contains("is not in this server's history")
            || l.contains("is ahead of the WAL flush position")
    })
}

/// The segment the server says it has removed (`requested WAL segment X
/// has already been removed`), if `cause` names one.
fn removed_segment(cause: &str, segment_size: u64) -> Option<Segment> {
    let (before, _) = cause.split_once(" has already been removed")?;
    let name = before.rsplit(' ').next()?;
    Segment::parse(name, segment_size)
}

/// Asks the server for its clock and insert position, and pg_receivewal's
/// flush position; keeps the observations the flush has not reached yet
/// (and the newest reached). Returns the flush position, if known.
async fn observe(
    client: &tokio_postgres::Client,
    app: &str,
    observations: &mut VecDeque<Observation>,
) -> Option<Lsn> {
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8, pg_current_wal_insert_lsn()::text, \
                    (SELECT max(flush_lsn)::text FROM pg_stat_replication WHERE application_name = $1)",
            &[&app],
        )
        .await
        .ok()?;
    let at = DateTime::from_timestamp_micros(row.get::<_, i64>(0))?;
    let lsn = row
        .get::<_, Option<String>>(1)
        .as_deref()
        .and_then(Lsn::parse)?;
    observations.push_back(Observation { at, lsn });
    while observations.len() > 600 {
        observations.pop_front();
    }
    row.get::<_, Option<String>>(2)
        .as_deref()
        .and_then(Lsn::parse)
}

/// The latest moment (less a margin) at which the server's insert position
/// was at most `holds` (what the shipped copy contains) and at most `end`.
fn covered_by(
    observations: &VecDeque<Observation>,
    holds: Lsn,
    end: Option<Lsn>,
) -> Option<DateTime<Utc>> {
    observations
        .iter()
        .filter(|o| o.lsn <= holds && end.is_none_or(|e| o.lsn <= e))
        .map(|o| o.at - COMMIT_MARGIN)
        .max()
}

/// The WAL files in the spool, in order (history files first, then
/// segments by number and timeline).
fn list_spool(spool: &Path, segment_size: u64) -> Result<Vec<(Spooled, PathBuf)>, SourceError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(spool)
        .map_err(SourceError::io(format!("cannot read {}", spool.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = if let Some(stem) = name.strip_suffix(".partial") {
            Segment::parse(stem, segment_size).map(Spooled::Partial)
        } else if let Some(tl) = parse_history(&name) {
            Some(Spooled::History(tl))
        } else {
            Segment::parse(&name, segment_size).map(Spooled::Complete)
        };
        if let Some(k) = kind {
            out.push((k, e.path()));
        }
    }
    out.sort_by_key(|(k, _)| match k {
        Spooled::History(tl) => (0, 0, *tl, 0),
        Spooled::Complete(s) => (1, s.number, s.timeline, 0),
        Spooled::Partial(s) => (1, s.number, s.timeline, 1),
    });
    Ok(out)
}

/// Creates `dir` and every missing parent, each 0700 (as systemd's
/// `StateDirectory=` would); directories that exist are left as they are.
fn make_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_is_listed_in_order_and_strangers_ignored() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000003",
            "000000010000000000000004.partial",
            "00000002.history",
            "000000010000000000000002",
            ".lock",
            "notes.txt",
            "000000010000000000000005.partial.tmp",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let files = list_spool(d.path(), 16 << 20).unwrap();
        let kinds: Vec<_> = files.into_iter().map(|(k, _)| k).collect();
        let seg = |n| Segment {
            timeline: 1,
            number: n,
        };
        assert_eq!(
            kinds,
            vec![
                Spooled::History(2),
                Spooled::Complete(seg(2)),
                Spooled::Complete(seg(3)),
                Spooled::Partial(seg(4)),
            ]
        );
    }

    #[test]
    fn state_directories_are_made_private_with_their_parents() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("var/lib/kompose-dr/wal/123");
        make_private_dirs(&spool).unwrap();
        make_private_dirs(&spool).unwrap();
        for p in [
            "var",
            "var/lib",
            "var/lib/kompose-dr",
            "var/lib/kompose-dr/wal/123",
        ] {
            let mode = std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{p}");
        }
    }

    #[test]
    fn a_gap_is_the_servers_removed_segment_and_a_lost_connection_is_none() {
        // What the archiver read when the agent's second base backup's
        // checkpoint recycled the segment pg_receivewal was still streaming:
        // the last line says nothing, the server's error says it all.
        let recycled = "pg_receivewal: starting log streaming at 0/1000000 (timeline 1)\n\
             pg_receivewal: finished segment at 0/2000000 (timeline 1)\n\
             pg_receivewal: error: could not receive data from WAL stream: ERROR:  requested WAL segment \
             000000010000000000000003 has already been removed\n\
             pg_receivewal: error: disconnected\n";
        let cause = gap_cause(recycled).unwrap();
        assert!(cause.contains("000000010000000000000003 has already been removed"));
        assert_eq!(
            removed_segment(cause, 16 << 20),
            Some(Segment {
                timeline: 1,
                number: 3
            })
        );
        // The server restarting: pg_receivewal resumes from the spool.
        let lost = "pg_receivewal: starting log streaming at 0/3000000 (timeline 1)\n\
             pg_receivewal: error: could not receive data from WAL stream: server closed the connection unexpectedly\n\
             pg_receivewal: error: disconnected\n";
        assert_eq!(gap_cause(lost), None);
        let ahead = "pg_receivewal: error: could not send replication command \"START_REPLICATION\": ERROR:  \
             requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000100\n";
        assert!(gap_cause(ahead).is_some());
        assert_eq!(removed_segment(gap_cause(ahead).unwrap(), 16 << 20), None);
    }

    #[test]
    fn coverage_is_claimed_only_for_positions_the_copy_holds() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let obs: VecDeque<Observation> = [(10, 100), (20, 200), (30, 300)]
            .into_iter()
            .map(|(s, l)| Observation {
                at: t(s),
                lsn: Lsn(l),
            })
            .collect();
        assert_eq!(covered_by(&obs, Lsn(250), None), Some(t(19)));
        assert_eq!(covered_by(&obs, Lsn(300), None), Some(t(29)));
        assert_eq!(covered_by(&obs, Lsn(50), None), None);
        assert_eq!(covered_by(&obs, Lsn(300), Some(Lsn(150))), Some(t(9)));
    }
}
