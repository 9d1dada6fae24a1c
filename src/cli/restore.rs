//! `kompose-dr restore`: by snapshot or point in time, per source, plan
//! first, nothing overwritten without `--replace`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use serde::Serialize;

use super::{Globals, output, pick_repository};
use crate::error::{Failure, Outcome};
use crate::model::time::local;
use crate::model::units::bytes;
use crate::ops::restore;
use crate::restore::plan::{self, Selector};
use crate::restore::{ItemResult, PlanItem, RestoreOptions};

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Restore this snapshot (an id, or `latest`).
    #[arg(long, value_name = "ID", conflicts_with = "point_in_time")]
    snapshot: Option<String>,
    /// Per source, the newest good backup captured at or before this time:
    /// RFC 3339 (2026-11-27T03:00:00Z) or "YYYY-MM-DD HH:MM[:SS]" local time.
    /// Default: now.
    #[arg(long, value_name = "TIME")]
    point_in_time: Option<String>,
    /// Restore only these sources: names or globs (postgres/*, redis, files/NAME).
    #[arg(long = "source", value_name = "NAME", num_args = 1..)]
    sources: Vec<String>,
    /// Read this repository (default: the first configured one that answers).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Restore the one selected database under this name.
    #[arg(long = "as", value_name = "NAME")]
    as_name: Option<String>,
    /// Write the one selected file, or Redis' files, here instead.
    #[arg(long, value_name = "PATH")]
    to: Option<PathBuf>,
    /// Restore databases into this server instead of the configured one
    /// (postgres://USER@HOST:PORT/DB; its password is postgres.password).
    #[arg(long, value_name = "URL")]
    target_url: Option<String>,
    /// Replace existing non-empty databases, Redis data or files.
    #[arg(long)]
    replace: bool,
    /// Reset roles that exist on the target to the snapshot's attributes,
    /// passwords, settings and memberships. Without it existing roles are
    /// left as they are and only missing ones are created.
    #[arg(long)]
    overwrite_roles: bool,
    /// Restore databases without their owner and privileges: objects
    /// belong to the restoring user (for a server that lacks the roles).
    #[arg(long)]
    no_owner: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Restore up to N sources at once (roles first, a whole cluster last),
    /// and run each pg_restore with N jobs from the verified plaintext
    /// spool (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
}

#[derive(Serialize)]
struct Report<'a> {
    repository: &'a str,
    requested: String,
    dry_run: bool,
    plan: &'a [PlanItem],
    results: &'a [ItemResult],
    /// The recovery time: from the start of the first item to the end of
    /// the last (the RTO of this restore), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    /// How many scratch clusters were recovered from base backups (several
    /// databases to one point share one).
    recoveries: usize,
}

fn distance(seconds: i64) -> String {
    let d = humantime::format_duration(std::time::Duration::from_secs(seconds.unsigned_abs()))
        .to_string();
    let d: Vec<&str> = d.split(' ').take(2).collect();
    format!("{} before", d.join(" "))
}

fn print_plan(requested: &str, items: &[PlanItem]) {
    output::line(format!("Restore plan ({requested}):"));
    output::line(format!(
        "  {:<22} {:<24} {:<19} {:>16} {:>10}  TARGET",
        "SOURCE", "SNAPSHOT", "CAPTURED AT", "DISTANCE", "SIZE"
    ));
    for i in items {
        let c = i.choice();
        output::line(format!(
            "  {:<22} {:<24} {:<19} {:>16} {:>10}  {}{}",
            c.source,
            c.snapshot,
            c.artifact.captured_at.map(local).unwrap_or_default(),
            c.distance_seconds
                .map(distance)
                .unwrap_or_else(|| "-".into()),
            bytes(c.artifact.plaintext_bytes),
            i.ready()
                .map_or_else(|| "-".to_owned(), |r| r.target.to_string()),
            if i.ready().is_some_and(|r| r.replaces) {
                "  (REPLACES existing data)"
            } else {
                ""
            }
        ));
        if let Some(r) = i.refused() {
            output::line(format!("  {:<22} REFUSED: {}", "", r.reason));
        }
        if let Some(r) = &c.recovery {
            output::line(format!(
                "  {:<22} path: base backup {} ({}) + WAL {} … {} ({} file(s)); the archive covers until {}{}",
                "",
                r.base_snapshot,
                r.base_captured_at.map(local).unwrap_or_default(),
                r.first_wal.as_deref().unwrap_or("-"),
                r.last_wal.as_deref().unwrap_or("-"),
                r.wal_files,
                r.covered_until.map(local).unwrap_or_else(|| "-".into()),
                match (r.target, r.covered_until) {
                    (Some(t), Some(u)) => format!(
                        ", {} after the target",
                        distance((u - t).num_seconds()).trim_end_matches(" before")
                    ),
                    _ => String::new(),
                }
            ));
        }
        if let Some(n) = &c.path_note {
            output::line(format!(
                "  {:<22} {}{n}",
                "",
                if c.recovery.is_some() { "" } else { "path: " }
            ));
        } else if c.recovery.is_none()
            && c.artifact.kind == crate::model::manifest::ArtifactKind::PostgresDump
        {
            output::line(format!("  {:<22} path: dump", ""));
        }
        if !c.skipped_failed.is_empty() {
            output::line(format!(
                "  {:<22} newer backup(s) failed and were skipped: {}",
                "",
                c.skipped_failed.join(", ")
            ));
        }
    }
}

fn confirm(n: usize) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "refusing to restore without confirmation: there is no terminal to ask on; check the plan with --dry-run, then pass --yes",
        ));
    }
    eprint!("Restore {n} item(s) as planned above? Type 'yes' to go on: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::failed(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(Failure::failed("declined: nothing was changed"))
    }
}

impl Args {
    /// `--snapshot`, `--point-in-time` or, by default, now.
    fn selector(&self) -> Result<Selector, Failure> {
        Ok(match (&self.snapshot, &self.point_in_time) {
            (Some(s), _) if s == "latest" => Selector::Latest,
            (Some(s), _) => Selector::Snapshot(s.clone()),
            (None, Some(t)) => Selector::PointInTime(
                plan::parse_time(t).map_err(|e| Failure::from(e).context("--point-in-time"))?,
            ),
            (None, None) => Selector::Newest {
                at: chrono::Utc::now(),
            },
        })
    }

    /// The options these arguments ask for; `--target-url` must not carry
    /// a password.
    fn options(&self, selector: Selector) -> Result<RestoreOptions, Failure> {
        let target = match &self.target_url {
            None => None,
            Some(u) => {
                let (ep, pw) = crate::model::config::parse_postgres_url(u)
                    .map_err(|e| Failure::usage(format!("--target-url: {e}")))?;
                if pw.is_some() {
                    return Err(Failure::usage(
                        "--target-url must not carry a password (command lines are visible to every user): the target uses postgres.password",
                    ));
                }
                Some(ep)
            }
        };
        Ok(RestoreOptions {
            selector,
            sources: self.sources.clone(),
            as_name: self.as_name.clone(),
            to: self.to.clone(),
            target,
            replace: self.replace,
            jobs: self.jobs.map(usize::from),
            no_owner: self.no_owner,
            overwrite_roles: self.overwrite_roles,
        })
    }
}

/// What was asked for, in words (`snapshot ID`, `point in time T`).
fn requested(selector: &Selector) -> String {
    match selector {
        Selector::Latest => "latest snapshot".to_owned(),
        Selector::Snapshot(id) => format!("snapshot {id}"),
        Selector::PointInTime(t) => format!(
            "point in time {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        Selector::Newest { .. } => "the newest state".to_owned(),
    }
}

/// Runs `restore`: plans through [`crate::ops::restore`], prints the plan,
/// asks, restores and prints what became of each item.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let selector = args.selector()?;
    let requested = requested(&selector);
    let options = args.options(selector)?;
    let repository = pick_repository(&config, args.repository.as_deref()).await?;
    let prepared = restore::prepare(restore::Asked {
        config: &config,
        repository,
        sources: &args.sources,
        options: &options,
        dry_run: args.dry_run,
        progress: std::io::stderr().is_terminal() && !globals.json,
    })
    .await?;
    if !globals.json {
        print_plan(&requested, &prepared.items);
    }
    if args.dry_run {
        dry_run(globals, &prepared, requested);
        return Ok(Outcome::Success);
    }
    prepared.none_refused()?;
    if !args.yes {
        confirm(prepared.items.len())?;
    }
    let watch = watch_signals(prepared.ctx.cancel.clone())?;
    let started = std::time::Instant::now();
    let results = prepared.execute().await;
    let seconds = started.elapsed().as_secs_f64();
    watch.abort();
    let recoveries = prepared.ctx.recoveries.made();
    if globals.json {
        output::json(&Report {
            repository: prepared.ctx.repository.name(),
            requested,
            dry_run: false,
            plan: &prepared.items,
            results: &results,
            seconds: Some(seconds),
            recoveries,
        });
    } else {
        print_results(&results);
        output::line(format!(
            "{} of {} item(s) restored in {seconds:.1}s (the recovery time){}",
            results.iter().filter(|r| r.ok).count(),
            results.len(),
            match recoveries {
                0 => String::new(),
                n => format!("; {n} scratch recovery(ies) from base backups"),
            }
        ));
    }
    Ok(Outcome::verdict(results.iter().all(|r| r.ok)))
}

/// Reports a dry run: the plan (already printed for people), and how many
/// items would be refused.
fn dry_run(globals: &Globals, prepared: &restore::Prepared<'_>, requested: String) {
    let refused = prepared.refusals();
    if !refused.is_empty() {
        tracing::warn!(
            "dry run: {} item(s) would be refused as asked",
            refused.len()
        );
    }
    if globals.json {
        output::json(&Report {
            repository: prepared.ctx.repository.name(),
            requested,
            dry_run: true,
            plan: &prepared.items,
            results: &[],
            seconds: None,
            recoveries: 0,
        });
    } else {
        output::line("dry run: nothing was changed");
    }
}

/// Cancels `cancel` on the first Ctrl-C or SIGTERM; the restore then
/// stops at a safe point (see [`crate::restore::RestoreContext::cancel`]) and reports. A
/// second signal ends the process at once.
fn watch_signals(
    cancel: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::failed(format!("cannot watch for SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::failed(format!("cannot watch for Ctrl-C: {e}")))?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!(
            "interrupted: stopping at a safe point (a swap in progress completes or rolls back; a scratch database is dropped); signal again to exit at once"
        );
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::error!(
            "interrupted twice: exiting now; a scratch database left behind is dropped by the next restore"
        );
        std::process::exit(130);
    }))
}

/// Prints each item's outcome for people.
fn print_results(results: &[ItemResult]) {
    for r in results {
        output::line(format!(
            "  {}  {:<22} {} ({:.1}s)",
            if r.ok { "ok    " } else { "FAILED" },
            r.source,
            r.message,
            r.seconds
        ));
    }
}
