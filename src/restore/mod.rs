//! Restore: choose artifacts ([`plan`]), show the plan, check every target
//! before touching anything, then stream each archive back into its target.
//!
//! Nothing is overwritten silently: an existing non-empty database, Redis
//! data directory or file is refused unless `--replace`. Every target is
//! first restored beside the original (a scratch database, a staging
//! directory, a temporary file) and only put in place once the archive has
//! been read completely and its sha256, age authentication and zstd
//! checksums all held — so a corrupted archive or a wrong key never replaces
//! anything.

mod checked;
pub mod directories;
mod error;
pub mod files;
mod helper;
pub mod plan;
pub mod postgres;
pub mod redis;
pub mod stream;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::model::config::{
    Config, DirectoryConfig, FileConfig, PgEndpoint, PostgresConfig, RedisConfig,
};
use crate::model::manifest::ArtifactKind;
use crate::model::secret::Redactor;
use crate::repository::Repository;
pub use checked::{Checked, CheckedCopy, CheckedReader, spool_artifact, verified_copy};
pub use error::RestoreError;
pub use plan::{Choice, Selector};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Which snapshot(s).
    pub selector: Selector,
    /// `--source` names or globs (empty: every source).
    pub sources: Vec<String>,
    /// `--as NAME`: restore the one selected database under this name.
    pub as_name: Option<String>,
    /// `--to PATH`: where the one selected Redis or file source goes.
    pub to: Option<PathBuf>,
    /// `--target-url`: another PostgreSQL server than the configured one.
    pub target: Option<PgEndpoint>,
    /// `--replace`: allow replacing existing data.
    pub replace: bool,
    /// `--jobs N`: how many sources are restored at once, and the jobs of
    /// each pg_restore (`None`: the cores this machine has).
    pub jobs: Option<usize>,
    /// Restore without ownership and privileges (`--no-owner
    /// --no-privileges`): for scratch servers that lack the roles.
    pub no_owner: bool,
    /// `--overwrite-roles`: reset roles that exist on the target to the
    /// snapshot's attributes, passwords, settings and memberships (by
    /// default they are left as they are and only missing roles created).
    pub overwrite_roles: bool,
}

impl RestoreOptions {
    /// How many sources are restored at once: `--jobs`, or the cores this
    /// machine has.
    pub fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        })
    }

    /// The jobs of one pg_restore: as many. The verified archive streams
    /// into pg_restore as it decodes; with more than one job, a plaintext
    /// spool is written on the way for the post-data section's jobs
    /// (pg_restore seeks in its file).
    pub fn pg_restore_jobs(&self) -> usize {
        self.jobs()
    }

    /// Options that restore one snapshot's artifacts as they are: to their
    /// configured places, under their own names, replacing nothing.
    pub fn default_for(snapshot: &str) -> RestoreOptions {
        RestoreOptions {
            selector: Selector::Snapshot(snapshot.to_owned()),
            sources: Vec::new(),
            as_name: None,
            to: None,
            target: None,
            replace: false,
            jobs: None,
            no_owner: false,
            overwrite_roles: false,
        }
    }
}

/// The parts of the configuration a restore writes to: the servers and
/// paths targets are worked out from, and the file to name in messages.
///
/// `verify` points these at scratch instances instead of production.
#[derive(Debug, Clone)]
pub struct RestoreTargets {
    /// The PostgreSQL server databases and roles go to.
    pub postgres: Option<PostgresConfig>,
    /// The Redis whose data directory is restored into (and which must not
    /// be running on it).
    pub redis: Option<RedisConfig>,
    /// The configured files, for artifacts whose manifest records no path.
    pub files: Vec<FileConfig>,
    /// The configured directories, where `directories/*` go.
    pub directories: Vec<DirectoryConfig>,
    /// The configuration file, named when a setting is missing.
    pub config_path: PathBuf,
    /// How scratch servers run (a point-in-time recovery runs one).
    pub scratch: crate::model::config::ScratchConfig,
}

impl RestoreTargets {
    /// The targets a configuration describes.
    pub fn from_config(config: &Config) -> RestoreTargets {
        RestoreTargets {
            postgres: config.postgres.clone(),
            redis: config.redis.clone(),
            files: config.files.clone(),
            directories: config.directories.clone(),
            config_path: config.path.clone(),
            scratch: config.scratch.clone(),
        }
    }
}

/// Where one artifact goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// Roles and tablespaces, applied to a server.
    Globals {
        /// `host:port`.
        server: String,
        /// What the archive will create, keep and reset there (absent when
        /// the plan was made without the key to read the archive).
        roles: Option<postgres::globals::RolesPlan>,
    },
    /// A database.
    Database {
        /// Database name.
        name: String,
        /// `host:port`.
        server: String,
    },
    /// A Redis data directory.
    RedisDir {
        /// The directory.
        path: PathBuf,
    },
    /// The data directory of Redis' container, through the engine: the
    /// container is stopped, its files replaced, and started again.
    RedisContainer {
        /// The container.
        container: String,
        /// Redis' data directory inside it.
        dir: String,
        /// Whether it runs now (the plan says it is stopped and started).
        running: bool,
    },
    /// A file.
    File {
        /// The path.
        path: PathBuf,
    },
    /// A new data directory for a whole cluster recovered to a point in
    /// time.
    Cluster {
        /// The directory.
        path: PathBuf,
    },
    /// The data directory of PostgreSQL's container, replaced by a whole
    /// cluster recovered to a point in time (`--replace`), through the
    /// engine: the container is stopped, its files moved aside, the
    /// recovered ones put in, and it is started again.
    ClusterContainer {
        /// The container.
        container: String,
        /// The data directory inside it (`PGDATA`).
        dir: String,
        /// Whether it runs now (the plan says it is stopped and started).
        running: bool,
    },
    /// A directory tree (`directories/*`).
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// A named volume (`directories/*` in container mode), through the
    /// engine.
    Volume {
        /// The volume.
        volume: String,
        /// The running containers that use it, stopped for the restore and
        /// started again.
        stopped: Vec<String>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Globals {
                server,
                roles: Some(plan),
            } => write!(f, "roles on {server}: {plan}"),
            Target::Globals {
                server,
                roles: None,
            } => write!(
                f,
                "roles on {server}: create the missing ones; existing roles are left as they are \
                 unless --overwrite-roles (listing them needs the key)"
            ),
            Target::Database { name, server } => write!(f, "database {name} on {server}"),
            Target::RedisDir { path } => write!(f, "Redis data directory {}", path.display()),
            Target::RedisContainer {
                container,
                dir,
                running,
            } => write!(
                f,
                "Redis data {dir} in container {container} ({}replace the files, start it, wait for Redis)",
                if *running { "stop it, " } else { "" }
            ),
            Target::File { path } => write!(f, "file {}", path.display()),
            Target::Cluster { path } => write!(f, "new data directory {}", path.display()),
            Target::ClusterContainer {
                container,
                dir,
                running,
            } => write!(
                f,
                "the whole cluster in container {container}: recover it in a scratch directory, {}move the files of {dir} \
                 aside to {dir}/.kompose-dr-replaced-<time>/, put the recovered data directory in (owned like {dir}), \
                 start {container}, wait until it accepts connections",
                if *running {
                    format!("stop {container}, ")
                } else {
                    String::new()
                }
            ),
            Target::Directory { path } => write!(f, "directory {}", path.display()),
            Target::Volume { volume, stopped } if stopped.is_empty() => {
                write!(f, "volume {volume}")
            }
            Target::Volume { volume, stopped } => write!(
                f,
                "volume {volume} (stop {}, write, start again)",
                stopped.join(", ")
            ),
        }
    }
}

/// One line of the plan: an item that can be restored, or one that the
/// checks before the restore refused.
#[derive(Debug, Clone)]
pub enum PlanItem {
    /// Its target was worked out and accepts the restore.
    Ready(ReadyItem),
    /// It cannot be restored as asked; nothing is restored then.
    Refused(RefusedItem),
}

/// An item whose target is known and was checked.
#[derive(Debug, Clone)]
pub struct ReadyItem {
    /// What is restored from where.
    pub choice: Choice,
    /// Where it goes.
    pub target: Target,
    /// Whether existing data will be replaced.
    pub replaces: bool,
}

/// An item refused before anything was written.
#[derive(Debug, Clone)]
pub struct RefusedItem {
    /// What was asked for.
    pub choice: Choice,
    /// Why it cannot be restored as asked (secrets scrubbed).
    pub reason: String,
}

impl PlanItem {
    /// What is restored from where.
    pub fn choice(&self) -> &Choice {
        match self {
            PlanItem::Ready(r) => &r.choice,
            PlanItem::Refused(r) => &r.choice,
        }
    }

    /// The item, if it can be restored.
    pub fn ready(&self) -> Option<&ReadyItem> {
        match self {
            PlanItem::Ready(r) => Some(r),
            PlanItem::Refused(_) => None,
        }
    }

    /// The refusal, if the item was refused.
    pub fn refused(&self) -> Option<&RefusedItem> {
        match self {
            PlanItem::Ready(_) => None,
            PlanItem::Refused(r) => Some(r),
        }
    }
}

/// The JSON form of a plan item, unchanged since items were one struct:
/// the choice's fields, then `target` (null when refused), `replaces` and
/// `refused` (null when ready).
#[derive(Serialize)]
struct PlanItemJson<'a> {
    #[serde(flatten)]
    choice: &'a Choice,
    target: Option<&'a Target>,
    replaces: bool,
    refused: Option<&'a str>,
}

impl Serialize for PlanItem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let json = match self {
            PlanItem::Ready(r) => PlanItemJson {
                choice: &r.choice,
                target: Some(&r.target),
                replaces: r.replaces,
                refused: None,
            },
            PlanItem::Refused(r) => PlanItemJson {
                choice: &r.choice,
                target: None,
                replaces: false,
                refused: Some(&r.reason),
            },
        };
        json.serialize(s)
    }
}

/// The outcome of one item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    /// Source name.
    pub source: String,
    /// Where it went.
    pub target: Target,
    /// Whether it was restored.
    pub ok: bool,
    /// Plaintext bytes restored.
    pub bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// What happened, for the operator (state of the target on failure).
    pub message: String,
}

/// Everything a restore needs besides the plan.
pub struct RestoreContext<'a> {
    /// Where targets are.
    pub targets: RestoreTargets,
    /// The repository read from.
    pub repository: Repository,
    /// The private keys.
    pub identities: std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    /// The options.
    pub options: &'a RestoreOptions,
    /// Scrubs secrets.
    pub redactor: Redactor,
    /// Whether to draw progress bars.
    pub progress: bool,
    /// Cancelled on Ctrl-C or SIGTERM: a pg_restore in progress stops and
    /// its scratch database is dropped, a swap in progress completes or
    /// rolls back, and the items not started are not restored.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The cluster recovered for the databases restored to one point in
    /// time: recovered once, shared by them.
    pub recoveries: postgres::pitr::Recoveries,
}

/// Checks that `--as` and `--to` fit the selection.
pub fn check_options(choices: &[Choice], o: &RestoreOptions) -> Result<(), RestoreError> {
    let dbs = choices
        .iter()
        .filter(|c| c.artifact.kind == ArtifactKind::PostgresDump)
        .count();
    if o.as_name.is_some() && dbs != 1 {
        return Err(RestoreError::Options(format!(
            "--as renames one database, but {dbs} are selected: add --source postgres/NAME"
        )));
    }
    let to_targets = choices
        .iter()
        .filter(|c| {
            matches!(
                c.artifact.kind,
                ArtifactKind::File
                    | ArtifactKind::RedisAof
                    | ArtifactKind::RedisRdb
                    | ArtifactKind::PostgresCluster
                    | ArtifactKind::Directory
            )
        })
        .count();
    if o.to.is_some() && to_targets != 1 {
        return Err(RestoreError::Options(format!(
            "--to places one Redis, file, directory or cluster source, but {to_targets} are selected: add --source redis, --source files/NAME, --source directories/NAME or --source postgres/cluster"
        )));
    }
    Ok(())
}

/// Works out every target and checks it can be written, before anything is.
pub async fn prepare(
    ctx: &RestoreContext<'_>,
    choices: Vec<Choice>,
) -> Result<Vec<PlanItem>, RestoreError> {
    check_options(&choices, ctx.options)?;
    let mut items = Vec::new();
    for c in choices {
        items.push(plan_item(ctx, c).await);
    }
    Ok(items)
}

/// Works out one choice's target and checks it (the options must have
/// passed [`check_options`]).
pub async fn plan_item(ctx: &RestoreContext<'_>, c: Choice) -> PlanItem {
    let checked = match c.artifact.kind {
        ArtifactKind::PostgresGlobals => {
            postgres::globals::globals_target(ctx, &c).await.map(|t| {
                let resets =
                    matches!(&t, Target::Globals { roles: Some(p), .. } if !p.reset.is_empty());
                (t, resets)
            })
        }
        ArtifactKind::PostgresDump => postgres::preflight(ctx, &c).await,
        ArtifactKind::RedisAof | ArtifactKind::RedisRdb => redis::preflight(ctx, &c).await,
        ArtifactKind::File => files::preflight(ctx, &c),
        ArtifactKind::PostgresCluster => postgres::pitr::preflight(ctx, &c).await,
        ArtifactKind::Directory => directories::preflight(ctx, &c).await,
        ArtifactKind::Config => Err(RestoreError::Options(
            "the configuration is written back by `kompose-dr bootstrap --repository URL --identity FILE --public-key KEY --to DIR` \
             (or by hand: docs/RUNBOOK.md section B), never over the running one"
                .into(),
        )),
    };
    match checked {
        Ok((target, replaces)) => PlanItem::Ready(ReadyItem {
            choice: c,
            target,
            replaces,
        }),
        Err(why) => PlanItem::Refused(RefusedItem {
            choice: c,
            reason: ctx.redactor.scrub(&why.to_string()),
        }),
    }
}

/// Restores every item; one failing does not stop the others. Roles go
/// first (databases refer to them); the maintenance database (where the
/// other restores' sessions are) and a whole cluster go last, each on its
/// own; the other sources are independent and are restored up to
/// [`RestoreOptions::jobs`] at once. Results come in the items' order.
pub async fn execute<'i>(
    ctx: &RestoreContext<'_>,
    items: impl IntoIterator<Item = &'i ReadyItem>,
) -> Vec<ItemResult> {
    use futures::StreamExt;
    let items: Vec<&ReadyItem> = items.into_iter().collect();
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    for phase in [Phase::Roles, Phase::Independent, Phase::Alone] {
        let at_once = if phase == Phase::Independent {
            ctx.options.jobs()
        } else {
            1
        };
        let ran: Vec<(usize, ItemResult)> =
            futures::stream::iter(items.iter().enumerate().filter(|(_, item)| {
                Phase::of(&item.target, |db| postgres::holds_sessions(ctx, db)) == phase
            }))
            .map(|(i, item)| async move { (i, execute_unless_cancelled(ctx, item).await) })
            .buffer_unordered(at_once.max(1))
            .collect()
            .await;
        for (i, r) in ran {
            results[i] = Some(r);
        }
    }
    results.into_iter().flatten().collect()
}

/// When an item is restored relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Roles and tablespaces: before the databases that refer to them.
    Roles,
    /// Databases, Redis, files, directories: independent of each other.
    Independent,
    /// A whole cluster (it may stop the server), or the maintenance
    /// database: one at a time, last.
    Alone,
}

impl Phase {
    /// The phase of `target`; `holds_sessions` says whether a database is
    /// where the other restores' sessions are.
    fn of(target: &Target, holds_sessions: impl Fn(&str) -> bool) -> Phase {
        match target {
            Target::Globals { .. } => Phase::Roles,
            Target::Cluster { .. } | Target::ClusterContainer { .. } => Phase::Alone,
            Target::Database { name, .. } if holds_sessions(name) => Phase::Alone,
            _ => Phase::Independent,
        }
    }
}

/// [`execute_one`], or "not restored" when the restore was interrupted
/// before the item started.
async fn execute_unless_cancelled(ctx: &RestoreContext<'_>, item: &ReadyItem) -> ItemResult {
    if ctx.cancel.is_cancelled() {
        return ItemResult {
            source: item.choice.source.clone(),
            target: item.target.clone(),
            ok: false,
            bytes: 0,
            seconds: 0.0,
            message: format!("not restored (interrupted); {} is unchanged", item.target),
        };
    }
    execute_one(ctx, item).await
}

/// Restores one item into its target, logging and timing it.
pub async fn execute_one(ctx: &RestoreContext<'_>, item: &ReadyItem) -> ItemResult {
    let start = Instant::now();
    let source = &item.choice.source;
    tracing::info!(source = %source, snapshot = %item.choice.snapshot, target = %item.target, "restoring");
    // The target was worked out from the artifact's kind, so it says which
    // restore applies.
    let outcome = match &item.target {
        Target::Globals { .. } => postgres::globals::restore_globals(ctx, item).await,
        Target::Database { name, .. } => postgres::restore_database(ctx, item, name).await,
        Target::RedisDir { path } => redis::restore(ctx, item, path).await,
        Target::RedisContainer { dir, .. } => {
            let cfg = ctx
                .targets
                .redis
                .as_ref()
                .expect("a container target comes from [redis]");
            let c = cfg
                .container
                .as_ref()
                .expect("a container target has a container");
            redis::container::restore(ctx, item, cfg, c, dir).await
        }
        Target::File { path } => files::restore(ctx, item, path).await,
        Target::Cluster { path } => match &item.choice.recovery {
            Some(r) => postgres::pitr::restore_cluster(ctx, r, path).await,
            None => Err(RestoreError::Refused("no recovery was planned".into())),
        },
        Target::ClusterContainer { dir, .. } => match &item.choice.recovery {
            Some(r) => postgres::cluster_swap::restore(ctx, r, dir).await,
            None => Err(RestoreError::Refused("no recovery was planned".into())),
        },
        Target::Directory { path } => directories::restore(ctx, item, path).await,
        Target::Volume { volume, .. } => {
            let name = item.choice.source.trim_start_matches("directories/");
            match ctx.targets.directories.iter().find(|d| d.name == name) {
                Some(cfg) => directories::volume::restore(ctx, item, cfg, volume).await,
                None => Err(RestoreError::Refused(format!(
                    "no [[directories]] entry named `{name}`"
                ))),
            }
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let (ok, bytes, message) = match outcome {
        Ok((bytes, message)) => {
            tracing::info!(source = %source, bytes, seconds = format_args!("{seconds:.1}"), "{message}");
            (true, bytes, message)
        }
        Err(e) => {
            let message = ctx.redactor.scrub(&e.to_string());
            tracing::error!(source = %source, "{message}");
            (false, 0, message)
        }
    };
    ItemResult {
        source: source.clone(),
        target: item.target.clone(),
        ok,
        bytes,
        seconds,
        message,
    }
}

/// A progress bar for one artifact (hidden when not on a terminal).
pub fn progress_bar(ctx: &RestoreContext<'_>, item: &ReadyItem) -> indicatif::ProgressBar {
    if !ctx.progress {
        return indicatif::ProgressBar::hidden();
    }
    // One set of bars: sources restored at once draw below each other.
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    let pb = BARS
        .get_or_init(indicatif::MultiProgress::new)
        .add(indicatif::ProgressBar::new(
            item.choice.artifact.stored_bytes,
        ));
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(item.choice.source.clone());
    pb
}

/// A `VerifyingReader` over an artifact's stored bytes (blocking side of a
/// storage stream), reporting progress to `pb`.
pub async fn open_stored(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    pb: &indicatif::ProgressBar,
) -> Result<
    stream::VerifyingReader<tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>>,
    RestoreError,
> {
    open_artifact(&ctx.repository, &item.choice.artifact, pb).await
}

/// A `VerifyingReader` over the stored bytes of `artifact` in `repository`
/// (anything the repository records with a key, size and sha256: an
/// archive, or a WAL file through [`Artifact::of_wal`](crate::model::manifest::Artifact::of_wal)).
pub async fn open_artifact(
    repository: &Repository,
    artifact: &crate::model::manifest::Artifact,
    pb: &indicatif::ProgressBar,
) -> Result<
    stream::VerifyingReader<tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>>,
    RestoreError,
> {
    let pb = pb.clone();
    Ok(stream::VerifyingReader::new(
        open_raw(repository, artifact).await?,
        artifact,
        Box::new(move |n| pb.set_position(n)),
    ))
}

/// The stored bytes of `artifact` as they are in `repository`, for a
/// blocking reader that checks them.
pub async fn open_raw(
    repository: &Repository,
    artifact: &crate::model::manifest::Artifact,
) -> Result<tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>, RestoreError> {
    let key = artifact
        .path
        .as_deref()
        .ok_or_else(|| RestoreError::NoArchive(artifact.source.clone()))?;
    let reader = repository
        .backend()
        .open(key)
        .await
        .map_err(|source| RestoreError::Storage {
            label: stream::label(artifact),
            source,
        })?;
    Ok(tokio_util::io::SyncIoBridge::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::fixtures::artifact;

    fn choice() -> Choice {
        Choice {
            source: "files/acme".into(),
            snapshot: "s1".into(),
            artifact: artifact("files/acme", "2026-11-27T03:00:05Z", true),
            distance_seconds: None,
            skipped_failed: Vec::new(),
            facts: None,
            recovery: None,
            path_note: None,
        }
    }

    #[test]
    fn roles_go_first_the_maintenance_database_and_a_cluster_alone_last_the_rest_at_once() {
        let globals = Target::Globals {
            server: "s".into(),
            roles: None,
        };
        let maintenance = |db: &str| db == "postgres";
        assert_eq!(Phase::of(&globals, maintenance), Phase::Roles);
        let cluster = Target::Cluster { path: "/x".into() };
        assert_eq!(Phase::of(&cluster, maintenance), Phase::Alone);
        let db = |name: &str| Target::Database {
            name: name.into(),
            server: "s".into(),
        };
        assert_eq!(Phase::of(&db("postgres"), maintenance), Phase::Alone);
        assert_eq!(Phase::of(&db("umami"), maintenance), Phase::Independent);
        let file = Target::File {
            path: "/x/acme.json".into(),
        };
        assert_eq!(Phase::of(&file, maintenance), Phase::Independent);
        let o = RestoreOptions {
            jobs: Some(3),
            ..RestoreOptions::default_for("s")
        };
        assert_eq!((o.jobs(), o.pg_restore_jobs()), (3, 3));
        assert!(RestoreOptions::default_for("s").jobs() >= 1);
    }

    #[test]
    fn a_cluster_into_its_container_shows_every_step() {
        let t = Target::ClusterContainer {
            container: "core-postgres".into(),
            dir: "/var/lib/postgresql/data".into(),
            running: true,
        };
        let shown = t.to_string();
        for step in [
            "stop core-postgres",
            "/var/lib/postgresql/data/.kompose-dr-replaced-<time>/",
            "start core-postgres",
            "accepts connections",
        ] {
            assert!(shown.contains(step), "{shown}");
        }
        let stopped = Target::ClusterContainer {
            container: "core-postgres".into(),
            dir: "/var/lib/postgresql/data".into(),
            running: false,
        };
        assert!(!stopped.to_string().contains("stop core-postgres"));
        assert_eq!(
            serde_json::to_value(&t).unwrap()["kind"],
            "cluster-container"
        );
    }

    #[test]
    fn plan_items_serialise_as_one_shape_with_nulls() {
        let ready = serde_json::to_value(PlanItem::Ready(ReadyItem {
            choice: choice(),
            target: Target::File {
                path: "/x/acme.json".into(),
            },
            replaces: true,
        }))
        .unwrap();
        assert_eq!(ready["source"], "files/acme");
        assert_eq!(ready["snapshot"], "s1");
        assert_eq!(
            ready["target"],
            serde_json::json!({"kind": "file", "path": "/x/acme.json"})
        );
        assert_eq!(ready["replaces"], true);
        assert!(ready["refused"].is_null() && ready.get("refused").is_some());

        let refused = serde_json::to_value(PlanItem::Refused(RefusedItem {
            choice: choice(),
            reason: "it exists".into(),
        }))
        .unwrap();
        assert!(refused["target"].is_null() && refused.get("target").is_some());
        assert_eq!(refused["replaces"], false);
        assert_eq!(refused["refused"], "it exists");
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&ready), keys(&refused));
    }
}
