//! `agent`: the long-running alternative to the systemd timers.
//!
//! It runs every policy on its cron schedule, and `prune_schedule` and
//! `drill_schedule` from the configuration, one job at a time — so it never
//! is two writers on one repository (the repository lock guards against
//! other processes). With `catch_up = true` a policy whose last snapshot is
//! older than its previous scheduled time runs once at start. SIGTERM
//! cancels the current job (children are killed, unfinished archives are
//! discarded, no manifest is written) and the agent exits 0; SIGHUP reloads
//! the configuration and policies (a broken one is logged and the old one
//! kept). `/metrics` serves the metrics textfile and `/healthz` says the
//! agent is alive (`agent/http.rs`).

mod http;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{RwLock, mpsc};

use crate::error::{Class, Classify, InvalidInput};
use crate::model::config::Config;
use crate::model::policy::Policy;
use crate::ops;

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// `backup --policy NAME`.
    Backup(String),
    /// `prune`.
    Prune,
    /// `drill`.
    Drill,
}

/// A scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    /// What it does.
    pub kind: JobKind,
    /// When.
    pub schedule: cron::Schedule,
    /// In which time zone the schedule is read (None: local time).
    pub timezone: Option<chrono_tz::Tz>,
}

impl Job {
    /// Its next time strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.timezone {
            Some(tz) => self
                .schedule
                .after(&now.with_timezone(&tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
            None => self
                .schedule
                .after(&now.with_timezone(&chrono::Local))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// A name for logs.
    pub fn name(&self) -> String {
        match &self.kind {
            JobKind::Backup(p) => format!("backup --policy {p}"),
            JobKind::Prune => "prune".into(),
            JobKind::Drill => "drill".into(),
        }
    }
}

/// The jobs of a configuration: every policy, and prune and drill when
/// they have a schedule.
pub fn jobs(config: &Config, policies: &[Policy]) -> Vec<Job> {
    let mut out: Vec<Job> = policies
        .iter()
        .map(|p| Job {
            kind: JobKind::Backup(p.name.clone()),
            schedule: p.schedule.cron().clone(),
            timezone: p.timezone.or(config.timezone),
        })
        .collect();
    for (kind, schedule) in [
        (JobKind::Prune, &config.agent.prune_schedule),
        (JobKind::Drill, &config.agent.drill_schedule),
    ] {
        if let Some(schedule) = schedule {
            out.push(Job {
                kind,
                schedule: schedule.cron().clone(),
                timezone: config.timezone,
            });
        }
    }
    out
}

/// The job due first after `now`, and when.
pub fn next_due(jobs: &[Job], now: DateTime<Utc>) -> Option<(usize, DateTime<Utc>)> {
    jobs.iter()
        .enumerate()
        .filter_map(|(i, j)| j.next_after(now).map(|t| (i, t)))
        .min_by_key(|(i, t)| (*t, *i))
}

/// Whether a job missed its last scheduled time: it should have run after
/// `last_run` and before `now`.
pub fn missed(job: &Job, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(last) = last_run else { return true };
    job.next_after(last).is_some_and(|t| t <= now)
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    /// A policy file is not valid.
    #[error(transparent)]
    Policy(#[from] InvalidInput),
    /// `agent.listen` could not be bound.
    #[error("cannot listen on {addr} (agent.listen): {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl Classify for AgentError {
    /// A broken configuration or policy is the operator's to fix (exit 2);
    /// a port already taken is a failure (exit 1).
    fn class(&self) -> Class {
        match self {
            AgentError::Config(_) | AgentError::Policy(_) => Class::Usage,
            AgentError::Listen { .. } => Class::Failure,
        }
    }
}

struct State {
    config: Config,
    policies: Vec<Policy>,
    jobs: Vec<Job>,
}

fn load(path: &Path) -> Result<State, AgentError> {
    let config = Config::load(path)?;
    let policies = Policy::load_dir(&config.policies_dir)?;
    let jobs = jobs(&config, &policies);
    Ok(State {
        config,
        policies,
        jobs,
    })
}

/// How long a scheduled job waits for another writer's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Runs one job through the same operations the CLI runs; failures are
/// logged, and the result says whether everything succeeded.
async fn run_job(state: &State, job: &Job) -> bool {
    tracing::info!(job = %job.name(), "job started");
    let ok = match &job.kind {
        JobKind::Backup(name) => backup_job(state, name).await,
        JobKind::Prune => prune_job(state).await,
        JobKind::Drill => drill_job(state).await,
    };
    tracing::info!(job = %job.name(), ok, "job finished");
    ok
}

async fn backup_job(state: &State, policy: &str) -> bool {
    let result = async {
        let opts =
            ops::backup::policy_options(&state.config, &state.policies, policy, LOCK_WAIT, false)?;
        ops::backup::run_and_notify(&state.config, &opts).await
    }
    .await;
    match result {
        Ok(report) => report.status == ops::backup::RunStatus::Ok,
        Err(e) => {
            tracing::error!(policy, "{e}");
            false
        }
    }
}

async fn prune_job(state: &State) -> bool {
    let opts = ops::prune::PruneOptions {
        dry_run: false,
        policy: None,
        grace: std::time::Duration::from_secs(24 * 3600),
    };
    let mut ok = true;
    for rc in &state.config.repositories {
        let pruned =
            ops::prune::prune_repository(&state.config, &state.policies, rc, &opts, LOCK_WAIT)
                .await;
        if let Err(e) = pruned {
            tracing::error!(repository = %rc.name, "prune failed: {e}");
            ok = false;
        }
    }
    ok
}

async fn drill_job(state: &State) -> bool {
    let prepared = ops::drill::identities(&state.config).and_then(|ids| {
        ops::drill::find(&state.config, None).map(|drills| (Arc::new(ids), drills))
    });
    let (ids, drills) = match prepared {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("{e}");
            return false;
        }
    };
    let mut ok = true;
    for d in drills {
        match ops::drill::run(&state.config, &d, ids.clone()).await {
            Ok(r) => ok &= r.ok,
            Err(e) => {
                tracing::error!(drill = %d.name, "{e}");
                ok = false;
            }
        }
    }
    ok
}

/// The time of a policy's newest snapshot in the first repository that answers.
async fn last_run(config: &Config, policy: &str) -> Option<DateTime<Utc>> {
    for rc in &config.repositories {
        let repo = crate::repository::Repository::open(rc);
        if let Ok((snaps, _)) = repo.snapshots().await {
            return snaps
                .iter()
                .filter(|m| m.policy.as_deref() == Some(policy))
                .map(|m| m.started_at)
                .max();
        }
    }
    None
}

/// Runs the agent until `shutdown` resolves; every message on `reload`
/// reloads the configuration and policies (a broken one is logged and the
/// old one kept). The binary wires `shutdown` to SIGTERM and Ctrl-C and
/// `reload` to SIGHUP ([`signals`]); tests drive both in process.
///
/// A job in progress when `shutdown` resolves is dropped: its children are
/// killed, unfinished archives discarded, and no manifest is written.
pub async fn run(
    config_path: &Path,
    shutdown: impl Future<Output = ()>,
    reload: mpsc::Receiver<()>,
) -> Result<(), AgentError> {
    let state = load(config_path)?;
    let textfile = Arc::new(RwLock::new(
        state.config.metrics.as_ref().map(|m| m.textfile.clone()),
    ));
    let endpoint = if let Some(addr) = state.config.agent.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        // The bound address: with port 0 the one the kernel chose.
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::info!(address = %addr, "serving /metrics and /healthz");
        Some(http::Endpoint::start(
            listener,
            textfile.clone(),
            http::Limits::default(),
        ))
    } else {
        None
    };
    tracing::info!(jobs = state.jobs.len(), "agent started");
    // [postgres.wal]: the archiver runs beside the schedule, for as long as
    // the agent does (a reload does not restart it).
    let wal_stop = tokio_util::sync::CancellationToken::new();
    let wal = state
        .config
        .postgres
        .as_ref()
        .is_some_and(|p| p.wal.is_some())
        .then(|| {
            let config = Arc::new(state.config.clone());
            let stop = wal_stop.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::ops::wal::run(config, stop).await {
                    tracing::error!("{e}");
                }
            })
        });
    schedule(config_path, state, shutdown, reload, textfile).await;
    wal_stop.cancel();
    if let Some(w) = wal {
        let _ = w.await;
    }
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    Ok(())
}

/// SIGTERM or Ctrl-C as a future, and SIGHUP as a channel: the signals
/// [`run`] takes, as the binary receives them.
pub fn signals() -> std::io::Result<(impl Future<Output = ()>, mpsc::Receiver<()>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: exiting"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting"),
        }
    };
    Ok((shutdown, rx))
}

/// The jobs that are due now: missed runs at start (with `catch_up`), else
/// the next scheduled one after sleeping until its time. `None` when
/// `shutdown` resolved or a reload was asked for first (`Some(vec![])`).
async fn due_jobs(
    state: &State,
    catch_up: &mut bool,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    reload: &mut mpsc::Receiver<()>,
) -> Option<Vec<Job>> {
    // Jobs missed while the machine was down run once, at start.
    let mut due: Vec<Job> = Vec::new();
    if std::mem::take(catch_up) {
        for j in &state.jobs {
            if let JobKind::Backup(p) = &j.kind
                && missed(j, last_run(&state.config, p).await, Utc::now())
            {
                tracing::info!(job = %j.name(), "catching up a missed run");
                due.push(j.clone());
            }
        }
    }
    if !due.is_empty() {
        return Some(due);
    }
    let wait = match next_due(&state.jobs, Utc::now()) {
        Some((i, at)) => {
            tracing::info!(job = %state.jobs[i].name(), at = %at.to_rfc3339(), "next job");
            due.push(state.jobs[i].clone());
            (at - Utc::now()).to_std().unwrap_or_default()
        }
        None => {
            tracing::warn!("no job is scheduled: waiting for a reload or shutdown");
            std::time::Duration::MAX
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(wait.min(std::time::Duration::from_secs(100 * 365 * 86400))) => Some(due),
        _ = shutdown.as_mut() => None,
        Some(()) = reload.recv() => Some(Vec::new()),
    }
}

/// Runs the jobs on their schedules until `shutdown`; `reload` reloads.
async fn schedule(
    config_path: &Path,
    mut state: State,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::Receiver<()>,
    textfile: http::Textfile,
) {
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let mut catch_up = state.config.agent.catch_up;
    loop {
        let Some(due) = due_jobs(&state, &mut catch_up, &mut shutdown, &mut reload).await else {
            return;
        };
        if due.is_empty() {
            reload_state(config_path, &mut state, &textfile).await;
            continue;
        }
        for job in due {
            tokio::select! {
                _ = run_job(&state, &job) => {}
                _ = shutdown.as_mut() => {
                    tracing::info!(job = %job.name(), "the current job was cancelled (nothing committed)");
                    return;
                }
            }
        }
    }
}

async fn reload_state(path: &Path, state: &mut State, textfile: &Arc<RwLock<Option<PathBuf>>>) {
    match load(path) {
        Ok(s) => {
            *textfile.write().await = s.config.metrics.as_ref().map(|m| m.textfile.clone());
            tracing::info!(jobs = s.jobs.len(), "configuration reloaded");
            *state = s;
        }
        Err(e) => {
            tracing::error!("reload: the configuration is not valid, keeping the old one: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: JobKind, cron: &str) -> Job {
        Job {
            kind,
            schedule: cron.parse().unwrap(),
            timezone: Some(chrono_tz::UTC),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_next_job_is_the_earliest() {
        let jobs = vec![
            job(JobKind::Backup("nightly".into()), "0 0 3 * * *"),
            job(JobKind::Prune, "0 30 4 * * *"),
            job(JobKind::Drill, "0 0 5 1 1,4,7,10 *"),
        ];
        let (i, at) = next_due(&jobs, t("2026-11-27T12:00:00Z")).unwrap();
        assert_eq!((i, at), (0, t("2026-11-28T03:00:00Z")));
        let (i, at) = next_due(&jobs, t("2026-11-28T03:00:00Z")).unwrap();
        assert_eq!((i, at), (1, t("2026-11-28T04:30:00Z")));
        assert_eq!(
            jobs[2].next_after(t("2026-11-27T12:00:00Z")),
            Some(t("2027-01-01T05:00:00Z"))
        );
    }

    #[test]
    fn schedules_follow_the_time_zone() {
        let mut j = job(JobKind::Prune, "0 0 3 * * *");
        j.timezone = Some(chrono_tz::Europe::Berlin);
        // 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
        assert_eq!(
            j.next_after(t("2026-11-27T12:00:00Z")),
            Some(t("2026-11-28T02:00:00Z"))
        );
        assert_eq!(
            j.next_after(t("2026-07-01T12:00:00Z")),
            Some(t("2026-07-02T01:00:00Z"))
        );
    }

    #[test]
    fn missed_runs_are_detected() {
        let j = job(JobKind::Backup("nightly".into()), "0 0 3 * * *");
        assert!(missed(&j, None, t("2026-11-27T12:00:00Z")));
        assert!(missed(
            &j,
            Some(t("2026-11-26T03:00:00Z")),
            t("2026-11-27T12:00:00Z")
        ));
        assert!(!missed(
            &j,
            Some(t("2026-11-27T03:00:05Z")),
            t("2026-11-27T12:00:00Z")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_agent_sleeps_until_the_job_with_paused_time() {
        // A seconds-level schedule, driven by tokio's paused clock.
        let jobs = vec![job(JobKind::Prune, "*/10 * * * * *")];
        let base = t("2026-11-27T12:00:03Z");
        let start = tokio::time::Instant::now();
        let now = || base + chrono::Duration::from_std(start.elapsed()).unwrap();
        let mut fired = Vec::new();
        for _ in 0..3 {
            let (_, at) = next_due(&jobs, now()).unwrap();
            tokio::time::sleep((at - now()).to_std().unwrap()).await;
            fired.push(now());
        }
        assert_eq!(
            fired,
            [
                t("2026-11-27T12:00:10Z"),
                t("2026-11-27T12:00:20Z"),
                t("2026-11-27T12:00:30Z")
            ]
        );
    }

    /// The agent in process: `reload` switches to a new configuration (seen
    /// through the textfile `/metrics` serves), a broken one is ignored,
    /// and `shutdown` ends `run` promptly.
    #[tokio::test]
    async fn reload_and_shutdown_are_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let series =
            |source: &str| format!("kompose_dr_backup_last_status{{source=\"{source}\"}} 1\n");
        let (one, two) = (dir.path().join("one.prom"), dir.path().join("two.prom"));
        std::fs::write(&one, series("one")).unwrap();
        std::fs::write(&two, series("two")).unwrap();
        let config = dir.path().join("kompose-dr.toml");
        let write_config = |textfile: &Path| {
            std::fs::write(
                &config,
                format!(
                    "policies_dir = \"{}\"\n[[repository]]\nname = \"local\"\nurl = \"{}\"\n\
                     [metrics]\ntextfile = \"{}\"\n[agent]\nlisten = \"127.0.0.1:{port}\"\n",
                    dir.path().join("policies").display(),
                    dir.path().join("repo").display(),
                    textfile.display()
                ),
            )
            .unwrap();
        };
        write_config(&one);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (reload, reloads) = mpsc::channel(1);
        let path = config.clone();
        let agent = tokio::spawn(async move {
            run(
                &path,
                async {
                    let _ = stopped.await;
                },
                reloads,
            )
            .await
        });
        let metrics = || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return String::new();
            };
            let _ = c
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = c.read_to_string(&mut out).await;
            out
        };
        let until = |want: &'static str| async move {
            for _ in 0..100 {
                if metrics().await.contains(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("/metrics never showed {want}: {}", metrics().await);
        };
        until("source=\"one\"").await;
        write_config(&two);
        reload.send(()).await.unwrap();
        until("source=\"two\"").await;
        std::fs::write(&config, "this is = not [valid").unwrap();
        reload.send(()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        until("source=\"two\"").await;
        stop.send(()).unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), agent)
            .await
            .expect("run returns once shutdown resolves");
        ended.unwrap().unwrap();
    }
}
