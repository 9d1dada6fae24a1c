//! One way into restore: the planning every restore shares and the restore
//! the `restore` command runs.
//!
//! [`plan`] is the one sequence from a request to checked choices: choose
//! per source ([`crate::restore::plan::choose`]), leave out a whole
//! cluster unless it is named (it goes to a new data directory, never over
//! the running server), attach the recovery path of base backups and WAL
//! ([`crate::restore::postgres::pitr::attach`]), and check `--as` / `--to`
//! against what was chosen ([`crate::restore::check_options`]). The
//! `restore` command goes through [`prepare`] and [`Prepared::execute`];
//! `verify` and drills plan through [`plan`] and restore single items
//! through [`restore_one`]. The CLI only parses arguments, asks and prints.

use std::sync::Arc;

use crate::error::{Class, Classify, InvalidInput};
use crate::model::config::Config;
use crate::model::manifest::{ArtifactKind, Manifest};
use crate::repository::{Listing, Repository, RepositoryError};
use crate::restore::plan::{self, Choice, PlanError, Selector};
use crate::restore::{
    self, ItemResult, PlanItem, RestoreContext, RestoreError, RestoreOptions, RestoreTargets,
};

/// The source name of a whole PostgreSQL cluster (base backup + WAL).
const CLUSTER: &str = "postgres/cluster";

/// Why a restore could not be planned, or was refused before anything was
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreRunError {
    /// A `--source` pattern is not a glob, or the private key is unusable.
    #[error(transparent)]
    Input(#[from] InvalidInput),
    /// The snapshots could not be listed.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// Nothing could be chosen as asked.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The recovery path or the options do not fit the choice.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The snapshot asked for (or the only one there is) is refused.
    #[error("repository {repository}: refusing {key}: {message}")]
    Damaged {
        /// The repository read.
        repository: String,
        /// The refused manifest's key.
        key: String,
        /// Why it is refused.
        message: String,
    },
    /// Some planned items are refused by their target: nothing was changed.
    #[error("nothing was changed: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// A point-in-time recovery could not be planned (no base backup, no
    /// recovery path).
    #[error("{0}")]
    NoRecovery(&'static str),
}

impl Classify for RestoreRunError {
    /// Wrapped errors keep their class; refusals failed while working.
    fn class(&self) -> Class {
        match self {
            RestoreRunError::Input(e) => e.class(),
            RestoreRunError::Repository(e) => e.class(),
            RestoreRunError::Plan(e) => e.class(),
            RestoreRunError::Restore(e) => e.class(),
            RestoreRunError::Damaged { .. }
            | RestoreRunError::Refused(_)
            | RestoreRunError::NoRecovery(_) => Class::Failure,
        }
    }
}

/// What to plan: the snapshots to choose from and how.
pub struct Request<'a> {
    /// The repository the snapshots are in (the WAL archive too).
    pub repository: &'a Repository,
    /// The snapshots to choose from, newest first.
    pub snapshots: &'a [Manifest],
    /// The sources asked for (names or globs; empty: every source).
    pub sources: &'a [String],
    /// The options; their selector says which snapshot or time.
    pub options: &'a RestoreOptions,
}

/// Plans a restore: choose → leave out an unnamed cluster → attach the
/// recovery paths → check the options against the choice. A database named
/// by `--source postgres/NAME` that no dump holds is recovered from a base
/// backup when one covers the selection.
pub async fn plan(request: &Request<'_>) -> Result<Vec<Choice>, RestoreRunError> {
    let selector = &request.options.selector;
    let (listed, unlisted) = split_unlisted(request.snapshots, selector, request.sources);
    let mut choices = if listed.is_empty() && !unlisted.is_empty() {
        Vec::new()
    } else {
        let matcher = crate::model::selection::matcher(&listed)?;
        plan::choose(
            request.snapshots,
            selector,
            matcher.as_ref().map(|m| (m, listed.as_slice())),
        )?
    };
    // A whole cluster is recovered only when named: it goes to a new data
    // directory (or, with --replace, into the server's container), not
    // over the running server by accident.
    if !request.sources.iter().any(|s| s == CLUSTER) {
        choices.retain(|c| c.artifact.kind != ArtifactKind::PostgresCluster);
    }
    let mut choices =
        restore::postgres::pitr::attach(request.repository, request.snapshots, selector, choices)
            .await?;
    choices.extend(
        restore::postgres::pitr::attach_unlisted(
            request.repository,
            request.snapshots,
            selector,
            &unlisted,
        )
        .await?,
    );
    if let Selector::Newest { at } = selector {
        note_newest(&mut choices, *at);
    }
    restore::check_options(&choices, request.options)?;
    Ok(choices)
}

/// Splits `--source` patterns into those to choose among the archives and
/// the databases named literally (`postgres/NAME`) that no archive of the
/// selected snapshots holds: those are recovered from a base backup.
fn split_unlisted(
    snapshots: &[Manifest],
    selector: &Selector,
    sources: &[String],
) -> (Vec<String>, Vec<String>) {
    let in_scope: Vec<&Manifest> = match selector {
        Selector::Snapshot(id) => snapshots.iter().filter(|m| &m.id == id).collect(),
        Selector::Latest => snapshots.iter().take(1).collect(),
        _ => snapshots.iter().collect(),
    };
    let has_base = snapshots.iter().any(|m| {
        m.artifacts
            .iter()
            .any(|a| a.kind == ArtifactKind::PostgresCluster && a.wal.is_some())
    });
    let archived = |s: &str| {
        in_scope
            .iter()
            .any(|m| m.artifacts.iter().any(|a| a.source == s))
    };
    let literal = |s: &str| !s.contains(['*', '?', '[', '{']);
    sources.iter().cloned().partition(|s| {
        !(has_base
            && literal(s)
            && crate::model::selection::source_database(s).is_some()
            && !archived(s))
    })
}

/// Says, for every choice of the newest state that is not a recovery, how
/// old it is: what "newest" means for it.
fn note_newest(choices: &mut [Choice], at: chrono::DateTime<chrono::Utc>) {
    for c in choices
        .iter_mut()
        .filter(|c| c.recovery.is_none() && c.path_note.is_none())
    {
        let captured = c.artifact.captured_at;
        c.path_note = Some(format!(
            "the newest backup, captured {} ({} before now){}",
            captured
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into()),
            captured
                .map(|t| restore::postgres::pitr::ago((at - t).num_seconds()))
                .unwrap_or_else(|| "-".into()),
            if c.artifact.kind == ArtifactKind::PostgresDump {
                " (no archived WAL carries it further)"
            } else {
                ""
            }
        ));
    }
}

/// What the `restore` command asks for.
pub struct Asked<'o> {
    /// The configuration.
    pub config: &'o Config,
    /// The repository to restore from.
    pub repository: Repository,
    /// The sources asked for (names or globs; empty: every source).
    pub sources: &'o [String],
    /// The options, with the selector.
    pub options: &'o RestoreOptions,
    /// Only plan: no private key is needed.
    pub dry_run: bool,
    /// Draw progress bars.
    pub progress: bool,
}

/// A restore planned and checked against its targets, not started.
pub struct Prepared<'o> {
    /// What the restore runs with; cancel it to stop at a safe point.
    pub ctx: RestoreContext<'o>,
    /// Every item: ready, or refused with the reason.
    pub items: Vec<PlanItem>,
}

/// Lists the repository, plans as asked and checks every target: nothing
/// is written.
pub async fn prepare(asked: Asked<'_>) -> Result<Prepared<'_>, RestoreRunError> {
    let selector = &asked.options.selector;
    let listing = asked.repository.listing().await?;
    let snapshots = named_or_ours(&listing, selector);
    refuse_damaged(&asked.repository, &listing, selector, snapshots.is_empty())?;
    let choices = plan(&Request {
        repository: &asked.repository,
        snapshots: &snapshots,
        sources: asked.sources,
        options: asked.options,
    })
    .await?;
    // A dry run needs no key, but with one at hand the plan can say which
    // roles the roles archive creates and which it leaves alone.
    let identities = if asked.dry_run {
        crate::pipeline::load_identities(asked.config).unwrap_or_default()
    } else {
        crate::pipeline::load_identities(asked.config)?
    };
    let ctx = RestoreContext {
        targets: RestoreTargets::from_config(asked.config),
        repository: asked.repository,
        identities: Arc::new(identities),
        options: asked.options,
        redactor: asked.config.redactor(),
        progress: asked.progress,
        cancel: tokio_util::sync::CancellationToken::new(),
        recoveries: Default::default(),
    };
    let items = restore::prepare(&ctx, choices).await?;
    Ok(Prepared { ctx, items })
}

impl Prepared<'_> {
    /// `source: reason` of every refused item.
    pub fn refusals(&self) -> Vec<String> {
        self.items
            .iter()
            .filter_map(PlanItem::refused)
            .map(|r| format!("{}: {}", r.choice.source, r.reason))
            .collect()
    }

    /// Fails, changing nothing, when any item is refused.
    pub fn none_refused(&self) -> Result<(), RestoreRunError> {
        let refused = self.refusals();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(RestoreRunError::Refused(refused))
        }
    }

    /// Restores every ready item in order; one failing does not stop the
    /// others.
    pub async fn execute(&self) -> Vec<ItemResult> {
        restore::execute(&self.ctx, self.items.iter().filter_map(PlanItem::ready)).await
    }
}

/// Warns of deletions and refused manifests; fails when the snapshot asked
/// for by id is refused, or when a refused one is all there is.
fn refuse_damaged(
    repository: &Repository,
    listing: &Listing,
    selector: &Selector,
    nothing_else: bool,
) -> Result<(), RestoreRunError> {
    for line in crate::ops::check::deletions(&listing.vanished, listing.behind.as_ref()) {
        tracing::warn!(repository = repository.name(), "{}", line.trim());
    }
    for d in &listing.damaged {
        // Never chosen, but the operator should know why it is not there.
        tracing::warn!(repository = repository.name(), manifest = %d.key, "refused: {}", d.message);
    }
    let asked = match selector {
        Selector::Snapshot(id) => listing
            .damaged
            .iter()
            .find(|d| d.key == crate::storage::keys::manifest_key(id)),
        _ if nothing_else => listing.damaged.first(),
        _ => None,
    };
    match asked {
        Some(d) => Err(RestoreRunError::Damaged {
            repository: repository.name().to_owned(),
            key: d.key.clone(),
            message: d.message.clone(),
        }),
        None => Ok(()),
    }
}

/// The snapshots a restore chooses from: this stack's, plus a snapshot of
/// another stack when it is named by id (said in the log).
fn named_or_ours(listing: &Listing, selector: &Selector) -> Vec<Manifest> {
    let mut snapshots = listing.ours.clone();
    if let Selector::Snapshot(id) = selector
        && let Some(m) = listing.others.iter().find(|m| &m.id == id)
    {
        tracing::warn!(
            snapshot = %id,
            stack = m.stack.as_deref().unwrap_or("-"),
            "this snapshot belongs to another stack (written for another host or repository): used because it was named"
        );
        snapshots.push(m.clone());
    }
    snapshots
}

/// What became of one choice restored on its own.
#[derive(Debug, Clone)]
pub struct Single {
    /// Whether it was restored.
    pub ok: bool,
    /// The restore's message, or why it was refused or failed.
    pub message: String,
}

/// Checks the options against one choice, plans its target and restores
/// it: what `verify` does for each source.
pub async fn restore_one(ctx: &RestoreContext<'_>, choice: &Choice) -> Single {
    let failed = |message: String| Single { ok: false, message };
    if let Err(e) = restore::check_options(std::slice::from_ref(choice), ctx.options) {
        return failed(e.to_string());
    }
    match restore::plan_item(ctx, choice.clone()).await {
        PlanItem::Refused(r) => failed(r.reason),
        PlanItem::Ready(item) => {
            let r = restore::execute_one(ctx, &item).await;
            Single {
                ok: r.ok,
                message: r.message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_keep_their_class_and_refusals_fail() {
        let usage = RestoreRunError::Input(InvalidInput("`--source [` is not a glob".into()));
        assert_eq!(usage.class(), Class::Usage);
        let options = RestoreRunError::Restore(RestoreError::Options("--as".into()));
        assert_eq!(options.class(), Class::Usage);
        let refused = RestoreRunError::Refused(vec!["redis: it runs".into()]);
        assert_eq!(refused.class(), Class::Failure);
        assert_eq!(refused.to_string(), "nothing was changed: redis: it runs");
        let damaged = RestoreRunError::Damaged {
            repository: "local".into(),
            key: "snapshots/x.json".into(),
            message: "unsigned".into(),
        };
        assert_eq!(damaged.class(), Class::Failure);
        assert_eq!(
            damaged.to_string(),
            "repository local: refusing snapshots/x.json: unsigned"
        );
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::model::manifest::fixtures::{artifact, manifest};

    fn snaps(with_base: bool) -> Vec<Manifest> {
        let mut arts = vec![
            artifact("postgres/app", "2026-11-27T03:00:00Z", true),
            artifact("redis", "2026-11-27T03:00:00Z", true),
        ];
        if with_base {
            let mut base = artifact("postgres/cluster", "2026-11-27T03:00:00Z", true);
            base.wal = Some(crate::model::wal::BasePosition {
                system_identifier: "1".into(),
                timeline: 1,
                start_lsn: crate::model::wal::Lsn(40),
                end_lsn: crate::model::wal::Lsn(100),
                segment_size: 16 << 20,
            });
            arts.push(base);
        }
        vec![manifest(
            "20261127T030000Z-000001",
            "2026-11-27T03:00:00Z",
            arts,
        )]
    }

    #[test]
    fn a_database_in_no_dump_is_recovered_only_when_named_and_a_base_backup_exists() {
        let sel = Selector::Newest {
            at: chrono::Utc::now(),
        };
        let asked: Vec<String> = ["postgres/app", "postgres/later", "postgres/*", "redis"]
            .map(String::from)
            .to_vec();
        let (listed, unlisted) = split_unlisted(&snaps(true), &sel, &asked);
        assert_eq!(listed, ["postgres/app", "postgres/*", "redis"]);
        assert_eq!(unlisted, ["postgres/later"]);
        // Without a base backup the name stays, and the plan says it
        // matches nothing.
        let (listed, unlisted) = split_unlisted(&snaps(false), &sel, &asked);
        assert_eq!(listed.len(), 4);
        assert!(unlisted.is_empty());
        // The roles and the cluster are never databases.
        let (_, unlisted) = split_unlisted(
            &snaps(true),
            &sel,
            &["postgres/globals".to_owned(), "files/x".to_owned()],
        );
        assert!(unlisted.is_empty());
    }
}
