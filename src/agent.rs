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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::RwLock;

use crate::model::config::Config;
use crate::model::policy::Policy;
use crate::ops::backup::BackupOptions;

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

/// The jobs of a configuration.
pub fn jobs(config: &Config, policies: &[Policy]) -> Result<Vec<Job>, String> {
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
    Ok(out)
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

struct State {
    config: Config,
    policies: Vec<Policy>,
    jobs: Vec<Job>,
}

fn load(path: &Path) -> Result<State, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let policies = Policy::load_dir(&config.policies_dir).map_err(|e| e.to_string())?;
    let jobs = jobs(&config, &policies)?;
    Ok(State {
        config,
        policies,
        jobs,
    })
}

async fn run_job(state: &State, job: &Job) -> bool {
    tracing::info!(job = %job.name(), "job started");
    let ok = match &job.kind {
        JobKind::Backup(name) => {
            let Some(p) = state.policies.iter().find(|p| &p.name == name) else {
                return false;
            };
            let opts = BackupOptions {
                sources: p.sources.clone(),
                policy: Some(p.name.clone()),
                repositories: p.repositories.clone(),
                lock_wait: std::time::Duration::from_secs(3600),
                progress: false,
            };
            match crate::ops::backup::run(&state.config, &opts).await {
                Ok(report) => {
                    crate::ops::backup::notify::after_backup(&state.config, &report).await;
                    report.status == crate::ops::backup::RunStatus::Ok
                }
                Err(e) => {
                    tracing::error!(job = %job.name(), "{}", e.message);
                    false
                }
            }
        }
        JobKind::Prune => {
            let opts = crate::ops::prune::PruneOptions {
                dry_run: false,
                policy: None,
                grace: std::time::Duration::from_secs(24 * 3600),
            };
            let mut ok = true;
            for rc in &state.config.repositories {
                let repo = crate::repository::Repository::open(rc);
                let lock = match repo
                    .lock("prune", std::time::Duration::from_secs(3600))
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("{e}");
                        ok = false;
                        continue;
                    }
                };
                if let Err(e) = crate::ops::prune::run(
                    &state.config,
                    &state.policies,
                    &repo,
                    lock.as_ref(),
                    &opts,
                    Utc::now(),
                )
                .await
                {
                    tracing::error!(repository = %rc.name, "prune failed: {e}");
                    ok = false;
                }
            }
            ok
        }
        JobKind::Drill => match crate::pipeline::load_identities(&state.config) {
            Err(e) => {
                tracing::error!("the drill needs the private key: {e}");
                false
            }
            Ok(ids) => {
                let ids = Arc::new(ids);
                let mut ok = true;
                match crate::ops::drill::find(&state.config, None) {
                    Err(e) => {
                        tracing::error!("{e}");
                        ok = false;
                    }
                    Ok(drills) => {
                        for d in drills {
                            match crate::ops::drill::run(&state.config, &d, ids.clone()).await {
                                Ok(r) => ok &= r.ok,
                                Err(e) => {
                                    tracing::error!(drill = %d.name, "{e}");
                                    ok = false;
                                }
                            }
                        }
                    }
                }
                ok
            }
        },
    };
    tracing::info!(job = %job.name(), ok, "job finished");
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

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(config_path: &Path) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let state = load(config_path)?;
    let term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let textfile = Arc::new(RwLock::new(
        state.config.metrics.as_ref().map(|m| m.textfile.clone()),
    ));
    let endpoint = if let Some(addr) = &state.config.agent.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (agent.listen): {e}"))?;
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
    let result = schedule(config_path, state, term, hup, textfile).await;
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    result
}

/// Runs the jobs on their schedules until SIGTERM or Ctrl-C; SIGHUP reloads.
async fn schedule(
    config_path: &Path,
    mut state: State,
    mut term: tokio::signal::unix::Signal,
    mut hup: tokio::signal::unix::Signal,
    textfile: http::Textfile,
) -> Result<(), String> {
    let mut catch_up = state.config.agent.catch_up;
    loop {
        // Jobs missed while the machine was down run once, at start.
        let mut due: Vec<Job> = Vec::new();
        if std::mem::take(&mut catch_up) {
            for j in &state.jobs {
                if let JobKind::Backup(p) = &j.kind
                    && missed(j, last_run(&state.config, p).await, Utc::now())
                {
                    tracing::info!(job = %j.name(), "catching up a missed run");
                    due.push(j.clone());
                }
            }
        }
        if due.is_empty() {
            let Some((i, at)) = next_due(&state.jobs, Utc::now()) else {
                tracing::warn!("no job is scheduled: waiting for SIGHUP or SIGTERM");
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = hup.recv() => { reload(config_path, &mut state, &textfile).await; continue; }
                }
            };
            tracing::info!(job = %state.jobs[i].name(), at = %at.to_rfc3339(), "next job");
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => due.push(state.jobs[i].clone()),
                _ = term.recv() => { tracing::info!("SIGTERM: exiting"); return Ok(()); }
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = hup.recv() => { reload(config_path, &mut state, &textfile).await; continue; }
            }
        }
        for job in due {
            tokio::select! {
                _ = run_job(&state, &job) => {}
                _ = term.recv() => {
                    tracing::info!(job = %job.name(), "SIGTERM: the current job was cancelled (nothing committed); exiting");
                    return Ok(());
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

async fn reload(path: &Path, state: &mut State, textfile: &Arc<RwLock<Option<PathBuf>>>) {
    match load(path) {
        Ok(s) => {
            *textfile.write().await = s.config.metrics.as_ref().map(|m| m.textfile.clone());
            tracing::info!(jobs = s.jobs.len(), "configuration reloaded");
            *state = s;
        }
        Err(e) => {
            tracing::error!("SIGHUP: the configuration is not valid, keeping the old one: {e}")
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
}
