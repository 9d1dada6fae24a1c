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

pub mod files;
pub mod plan;
pub mod postgres;
pub mod redis;
pub mod stream;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::model::config::{Config, PgEndpoint};
use crate::model::manifest::ArtifactKind;
use crate::model::secret::Redactor;
use crate::repository::Repository;
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
    /// `--jobs N`: parallel pg_restore (stages the dump in a temporary file).
    pub jobs: Option<usize>,
    /// Restore without ownership and privileges (`--no-owner
    /// --no-privileges`): for scratch servers that lack the roles.
    pub no_owner: bool,
}

/// Where one artifact goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// Roles and tablespaces, applied to a server.
    Globals {
        /// `host:port`.
        server: String,
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
    /// A file.
    File {
        /// The path.
        path: PathBuf,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Globals { server } => write!(f, "roles on {server}"),
            Target::Database { name, server } => write!(f, "database {name} on {server}"),
            Target::RedisDir { path } => write!(f, "Redis data directory {}", path.display()),
            Target::File { path } => write!(f, "file {}", path.display()),
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// What is restored from where.
    #[serde(flatten)]
    pub choice: Choice,
    /// Where it goes (unknown only when refused before it was worked out).
    pub target: Option<Target>,
    /// Whether existing data will be replaced.
    pub replaces: bool,
    /// Why this item cannot be restored as asked (nothing is restored then).
    pub refused: Option<String>,
}

impl PlanItem {
    /// The target, which every item that is not refused has.
    pub fn target(&self) -> &Target {
        self.target
            .as_ref()
            .expect("only refused items lack a target")
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
    /// The configuration.
    pub config: &'a Config,
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
}

/// Checks that `--as` and `--to` fit the selection.
pub fn check_options(choices: &[Choice], o: &RestoreOptions) -> Result<(), String> {
    let dbs = choices
        .iter()
        .filter(|c| c.artifact.kind == ArtifactKind::PostgresDump)
        .count();
    if o.as_name.is_some() && dbs != 1 {
        return Err(format!(
            "--as renames one database, but {dbs} are selected: add --source postgres/NAME"
        ));
    }
    let to_targets = choices
        .iter()
        .filter(|c| {
            matches!(
                c.artifact.kind,
                ArtifactKind::File | ArtifactKind::RedisAof | ArtifactKind::RedisRdb
            )
        })
        .count();
    if o.to.is_some() && to_targets != 1 {
        return Err(format!(
            "--to places one Redis or file source, but {to_targets} are selected: add --source redis or --source files/NAME"
        ));
    }
    Ok(())
}

/// Works out every target and checks it can be written, before anything is.
pub async fn prepare(
    ctx: &RestoreContext<'_>,
    choices: Vec<Choice>,
) -> Result<Vec<PlanItem>, String> {
    check_options(&choices, ctx.options)?;
    let mut items = Vec::new();
    for c in choices {
        let checked = match c.artifact.kind {
            ArtifactKind::PostgresGlobals => postgres::globals_target(ctx).map(|t| (t, false)),
            ArtifactKind::PostgresDump => postgres::preflight(ctx, &c).await,
            ArtifactKind::RedisAof | ArtifactKind::RedisRdb => redis::preflight(ctx, &c).await,
            ArtifactKind::File => files::preflight(ctx, &c),
        };
        items.push(match checked {
            Ok((target, replaces)) => PlanItem {
                choice: c,
                target: Some(target),
                replaces,
                refused: None,
            },
            Err(why) => PlanItem {
                choice: c,
                target: None,
                replaces: false,
                refused: Some(ctx.redactor.scrub(&why)),
            },
        });
    }
    Ok(items)
}

/// Restores every item in order; one failing does not stop the others.
pub async fn execute(ctx: &RestoreContext<'_>, items: &[PlanItem]) -> Vec<ItemResult> {
    let mut results = Vec::new();
    for item in items {
        let start = Instant::now();
        tracing::info!(source = %item.choice.source, snapshot = %item.choice.snapshot, target = %item.target(), "restoring");
        let outcome = match item.choice.artifact.kind {
            ArtifactKind::PostgresGlobals => postgres::restore_globals(ctx, item).await,
            ArtifactKind::PostgresDump => postgres::restore_database(ctx, item).await,
            ArtifactKind::RedisAof | ArtifactKind::RedisRdb => redis::restore(ctx, item).await,
            ArtifactKind::File => files::restore(ctx, item).await,
        };
        let seconds = start.elapsed().as_secs_f64();
        let result = match outcome {
            Ok((bytes, message)) => {
                tracing::info!(source = %item.choice.source, bytes, seconds = format_args!("{seconds:.1}"), "{message}");
                ItemResult {
                    source: item.choice.source.clone(),
                    target: item.target().clone(),
                    ok: true,
                    bytes,
                    seconds,
                    message,
                }
            }
            Err(message) => {
                let message = ctx.redactor.scrub(&message);
                tracing::error!(source = %item.choice.source, "{message}");
                ItemResult {
                    source: item.choice.source.clone(),
                    target: item.target().clone(),
                    ok: false,
                    bytes: 0,
                    seconds,
                    message,
                }
            }
        };
        results.push(result);
    }
    results
}

/// A progress bar for one artifact (hidden when not on a terminal).
pub fn progress_bar(ctx: &RestoreContext<'_>, item: &PlanItem) -> indicatif::ProgressBar {
    if !ctx.progress {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(item.choice.artifact.stored_bytes);
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
    item: &PlanItem,
    pb: &indicatif::ProgressBar,
) -> Result<
    stream::VerifyingReader<tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>>,
    String,
> {
    let key = item
        .choice
        .artifact
        .path
        .as_deref()
        .ok_or_else(|| format!("{}: the manifest names no archive", item.choice.source))?;
    let reader = ctx
        .repository
        .backend()
        .open(key)
        .await
        .map_err(|e| format!("{}: {e}", stream::label(&item.choice.artifact)))?;
    let pb = pb.clone();
    Ok(stream::VerifyingReader::new(
        tokio_util::io::SyncIoBridge::new(reader),
        &item.choice.artifact,
        Box::new(move |n| pb.set_position(n)),
    ))
}
