//! The stack drill (docs/DESIGN.md §7, issue 26): the whole stack brought
//! up from one repository — the offsite one by default — in scratch
//! containers, apps included, and the RTO measured.
//!
//! 1. An `internal` network of its own (nothing published, no route out).
//! 2. Clones of the production `[postgres] container` and `[redis]
//!    container`: same image, environment and command, data on fresh
//!    volumes, on that network under the production aliases and names.
//! 3. Everything restored into them as a restore onto a fresh stack does
//!    ([`crate::ops::restore::plan`], [`crate::ops::restore::restore_one`],
//!    replacing allowed: it is all scratch): roles, every database, Redis;
//!    files and directories (volumes too) into a private scratch directory,
//!    whose copies the clones bind-mount.
//! 4. The apps (`apps = […]`), each cloned from its production container
//!    (image, environment, command, entrypoint, user, healthcheck; mounts
//!    remapped by [`mounts`]), started on the network, and waited on until
//!    Docker reports them healthy (`app_timeout` each).
//! 5. Everything removed ([`ScratchObjects`]): on success, failure, and
//!    SIGTERM (the CLI drops the drill; the guard's `Drop` removes).
//!
//! Production is only inspected: nothing there is started, stopped or
//! written.

pub mod error;
mod http;
pub mod mounts;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Drill, DrillError, DrillReport, Identities};
use crate::engine::Engine;
use crate::engine::clone::{CloneSpec, Production, ScratchObjects};
use crate::model::config::repository::Location;
use crate::model::config::{Config, ContainerRef, ScratchRuntimeKind};
use crate::model::manifest::Manifest;
use crate::ops::verify::{self, SourceVerdict};
use crate::repository::Repository;
use error::StackError;
use mounts::{Remapped, Restored};

/// Log lines of a failed app kept in the report.
const LOG_LINES: usize = 20;

/// What a stack drill adds to the report.
#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    /// Drill start → every app healthy, in seconds; absent when the stack
    /// did not come up.
    pub rto_seconds: Option<f64>,
    /// How old the restored snapshot was when the drill started: the RPO
    /// at that moment.
    pub snapshot_age_seconds: f64,
    /// Each step, timed.
    pub steps: Vec<Step>,
    /// Each app's verdict.
    pub apps: Vec<AppVerdict>,
    /// What stopped the drill, if anything did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One timed step of a stack drill.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `network`, `databases`, `restore`, `apps`, `cleanup`.
    pub name: String,
    /// How long it took.
    pub seconds: f64,
    /// Whether it worked.
    pub ok: bool,
    /// What it did, or why it failed.
    pub detail: String,
}

/// One app of a stack drill.
#[derive(Debug, Clone, Serialize)]
pub struct AppVerdict {
    /// The production container's name.
    pub app: String,
    /// Start of its clone → healthy, in seconds.
    pub seconds_to_healthy: Option<f64>,
    /// Whether it became healthy in time.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// Its clone's last log lines, when it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// The repository a drill reads when its file names none: the first that
/// is not a local directory (the offsite copy, on S3: the one left when
/// the host is gone), else the first.
pub fn default_repository(config: &Config) -> Option<&crate::model::config::RepositoryConfig> {
    config
        .repositories
        .iter()
        .find(|r| !matches!(r.location, Location::Local(_)))
        .or_else(|| config.repositories.first())
}

/// Refuses a configuration a stack drill cannot run with, naming the key.
fn refuse(config: &Config, drill: &Drill) -> Result<(), DrillError> {
    let refused = |message: String| DrillError::Stack {
        drill: drill.name.clone(),
        message,
    };
    let file = config.path.display();
    if config.scratch.runtime != ScratchRuntimeKind::Docker {
        return Err(refused(format!(
            "a stack drill runs in containers: set [scratch] runtime = \"docker\" in {file}"
        )));
    }
    if config
        .postgres
        .as_ref()
        .is_some_and(|p| p.container.is_none())
    {
        return Err(refused(format!(
            "a stack drill clones the PostgreSQL container: set [postgres] container in {file}"
        )));
    }
    if config.redis.as_ref().is_some_and(|r| r.container.is_none()) {
        return Err(refused(format!(
            "a stack drill clones the Redis container: set [redis] container in {file}"
        )));
    }
    Ok(())
}

/// Runs a stack drill from `repo`, writes and publishes its report.
pub(super) async fn run(
    config: &Config,
    drill: &Drill,
    identities: Identities,
    repo: Repository,
    started_at: DateTime<Utc>,
) -> Result<DrillReport, DrillError> {
    refuse(config, drill)?;
    let clock = Instant::now();
    let manifest = verify::find_snapshot(&repo, &drill.snapshot).await?;
    let engine = Engine::connect(config.docker.host.as_deref())
        .map_err(|e| StackError::Engine(e).into_drill(&drill.name))?;
    sweep(&engine).await;
    let base = drill.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("kompose-dr-stack-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(DrillError::io(format!(
            "cannot create the stack drill's scratch directory in {} (scratch_dir)",
            base.display()
        )))?;
    let mut st = StackRun::new(config, drill, engine, dir.path().to_owned());
    let outcome = st.bring_up(&repo, &manifest, identities, clock).await;
    let StackRun {
        mut steps,
        sources,
        apps,
        objects,
        ..
    } = st;
    let t = Instant::now();
    drop(objects);
    drop(dir);
    steps.push(Step {
        name: "cleanup".into(),
        seconds: t.elapsed().as_secs_f64(),
        ok: true,
        detail: "every labelled container, network and volume removed".into(),
    });
    let redact = config.redactor();
    let (rto_seconds, failure) = match outcome {
        Ok(rto) => (Some(rto), None),
        Err(e) => (None, Some(redact.scrub(&e.to_string()))),
    };
    let ok = failure.is_none()
        && steps.iter().all(|s| s.ok)
        && sources.iter().all(|s| s.ok)
        && apps.iter().all(|a| a.ok);
    let mut report = DrillReport {
        drill: drill.name.clone(),
        repository: repo.name().to_owned(),
        snapshot: manifest.id.clone(),
        snapshot_time: manifest.started_at,
        started_at,
        finished_at: Utc::now(),
        ok,
        sources,
        report_files: Vec::new(),
        stack: Some(StackReport {
            rto_seconds,
            snapshot_age_seconds: (started_at - manifest.started_at).num_milliseconds() as f64
                / 1000.0,
            steps,
            apps,
            failure,
        }),
    };
    report.report_files = super::report::write_report(&config.reports_dir, &report)?;
    super::report::publish_and_record(config, &report).await;
    Ok(report)
}

/// Removes what killed drills left behind (containers first).
async fn sweep(engine: &Engine) {
    if let Err(e) = engine.sweep().await {
        tracing::warn!(error = %e, "cannot sweep leftover scratch containers");
    }
    if let Err(e) = engine.sweep_networks_and_volumes().await {
        tracing::warn!(error = %e, "cannot sweep leftover scratch networks and volumes");
    }
}

/// A stack drill under way.
struct StackRun<'a> {
    config: &'a Config,
    drill: &'a Drill,
    engine: Engine,
    objects: ScratchObjects,
    dir: PathBuf,
    network: String,
    steps: Vec<Step>,
    sources: Vec<SourceVerdict>,
    apps: Vec<AppVerdict>,
    restored: Restored,
    postgres: Option<crate::model::config::PostgresConfig>,
    redis: Option<crate::model::config::RedisConfig>,
    /// Every clone's aliases on the network: alias → clone.
    aliases: Vec<(String, String)>,
}

impl<'a> StackRun<'a> {
    fn new(config: &'a Config, drill: &'a Drill, engine: Engine, dir: PathBuf) -> StackRun<'a> {
        StackRun {
            config,
            drill,
            objects: ScratchObjects::new(engine.clone()),
            engine,
            dir,
            network: String::new(),
            steps: Vec::new(),
            sources: Vec::new(),
            apps: Vec::new(),
            restored: Restored::default(),
            postgres: None,
            redis: None,
            aliases: Vec::new(),
        }
    }

    /// Every step in order; the RTO once every app is healthy, else what
    /// failed.
    async fn bring_up(
        &mut self,
        repo: &Repository,
        manifest: &Manifest,
        identities: Identities,
        clock: Instant,
    ) -> Result<f64, StackError> {
        let t = Instant::now();
        let r = self.make_network().await;
        self.record("network", t, r)?;
        let t = Instant::now();
        let r = self.clone_servers().await;
        self.record("databases", t, r)?;
        let t = Instant::now();
        let r = self.restore_all(repo, manifest, identities).await;
        self.record("restore", t, r)?;
        let t = Instant::now();
        let r = self.start_apps().await;
        self.record("apps", t, r)?;
        Ok(clock.elapsed().as_secs_f64())
    }

    /// Notes a step's time and verdict; passes its failure on.
    fn record(
        &mut self,
        name: &'static str,
        t: Instant,
        r: Result<String, StackError>,
    ) -> Result<(), StackError> {
        let (ok, detail) = match &r {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, e.to_string()),
        };
        self.steps.push(Step {
            name: name.into(),
            seconds: t.elapsed().as_secs_f64(),
            ok,
            detail: self.config.redactor().scrub(&detail),
        });
        r.map(|_| ()).map_err(|e| e.in_step(name))
    }

    async fn make_network(&mut self) -> Result<String, StackError> {
        let name = ScratchObjects::name("kompose-dr-drill-net");
        self.objects.network(&name).await?;
        self.network = name.clone();
        Ok(format!("internal network {name}"))
    }

    /// A clone of `prod` on the drill's network: its mounts remapped
    /// (fresh volumes created), its aliases and its name as aliases.
    async fn clone_of(&mut self, prod: &Production, data: bool) -> Result<CloneSpec, StackError> {
        let mut binds = Vec::new();
        for m in &prod.mounts {
            match self.restored.remap(m, data) {
                Remapped::Bind(b) => binds.push(b),
                Remapped::FreshVolume { destination, rw } => {
                    let vol = ScratchObjects::name("kompose-dr-drill-vol");
                    self.objects.volume(&vol).await?;
                    binds.push(format!(
                        "{vol}:{destination}{}",
                        if rw { "" } else { ":ro" }
                    ));
                }
            }
        }
        let mut aliases = prod.aliases.clone();
        aliases.push(prod.name.clone());
        aliases.dedup();
        let spec = CloneSpec {
            name: ScratchObjects::name(&format!("kompose-dr-drill-{}", prod.name)),
            from: prod.clone(),
            network: self.network.clone(),
            aliases,
            binds,
        };
        self.objects.clone_container(&spec).await?;
        for a in &spec.aliases {
            self.aliases.push((a.clone(), spec.name.clone()));
        }
        Ok(spec)
    }

    fn container_ref(&self, name: &str) -> ContainerRef {
        ContainerRef {
            name: name.to_owned(),
            engine: Some(self.engine.endpoint().to_owned()),
        }
    }

    /// Clones `core-postgres` and `core-redis` and waits until PostgreSQL
    /// accepts connections.
    async fn clone_servers(&mut self) -> Result<String, StackError> {
        let mut done = Vec::new();
        if let Some(pg) = self.config.postgres.clone()
            && let Some(c) = &pg.container
        {
            let prod = self.engine.production(&c.name).await?;
            let spec = self.clone_of(&prod, true).await?;
            let mut cfg = pg.clone();
            cfg.container = Some(self.container_ref(&spec.name));
            wait_postgres(&self.engine, &cfg, &spec.name).await?;
            self.postgres = Some(cfg);
            done.push(format!("{} as {}", prod.name, spec.name));
        }
        if let Some(redis) = self.config.redis.clone()
            && let Some(c) = &redis.container
        {
            let prod = self.engine.production(&c.name).await?;
            let spec = self.clone_of(&prod, true).await?;
            let mut cfg = redis.clone();
            cfg.container = Some(self.container_ref(&spec.name));
            cfg.data_dir = None;
            self.redis = Some(cfg);
            done.push(format!("{} as {}", prod.name, spec.name));
        }
        Ok(done.join(", "))
    }
}

/// Waits (2 minutes at most) until the cloned PostgreSQL accepts
/// connections with the production credentials.
async fn wait_postgres(
    engine: &Engine,
    cfg: &crate::model::config::PostgresConfig,
    name: &str,
) -> Result<(), StackError> {
    let start = Instant::now();
    loop {
        // The credentials the clone's environment gives, as a restore
        // resolves them.
        let last = match crate::clients::postgres::resolve(cfg).await {
            Ok(cfg) => {
                match crate::clients::postgres::connect(&cfg, &cfg.endpoint.maintenance_db).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        let running = engine.health(name).await.is_ok_and(|h| h.running);
        if !running || start.elapsed() > Duration::from_secs(120) {
            return Err(StackError::Postgres {
                name: name.to_owned(),
                exited: !running,
                last,
                log: engine.log_tail(name, 5).await,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

mod apps;
mod restoring;
