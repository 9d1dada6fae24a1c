//! `kompose-dr prune`: apply the retention policies; `--dry-run` shows
//! what would go and which rule decided.

use super::{Globals, output};
use crate::error::{Failure, Outcome};
use crate::model::policy::Policy;
use crate::ops::prune::PruneOptions;

/// Arguments of `prune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show what would be removed, and why, without removing anything.
    #[arg(long)]
    dry_run: bool,
    /// Prune this repository only (default: every configured one).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Only snapshots made by this policy.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Wait this long for another writer's lock (`30s`, `10m`); default: fail at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    lock_wait: std::time::Duration,
    /// Unreferenced data younger than this is left alone.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
}

/// Runs `prune` on each selected repository in turn and prints every decision
/// with its reasons; an unknown `--policy` is a usage error.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let policies = Policy::load_dir(&config.policies_dir)?;
    if let Some(p) = &args.policy
        && !policies.iter().any(|q| &q.name == p)
    {
        return Err(Failure::usage(format!(
            "no policy `{p}` in {}",
            config.policies_dir.display()
        )));
    }
    let targets: Vec<_> = match &args.repository {
        Some(name) => vec![config.repository_named(name)?],
        None => config.repositories.iter().collect(),
    };
    let opts = PruneOptions {
        dry_run: args.dry_run,
        policy: args.policy.clone(),
        grace: args.grace,
    };
    let mut reports = Vec::new();
    for rc in targets {
        // Stopped (systemctl stop, Ctrl-C): the work is dropped and its S3
        // lease released on the way out, like backup's.
        let report = super::interruptible(crate::ops::prune::prune_repository(
            &config,
            &policies,
            rc,
            &opts,
            args.lock_wait,
        ))
        .await??;
        if !globals.json {
            output::line(format!(
                "repository {}{}:",
                report.repository,
                if report.dry_run {
                    " (dry run: nothing removed)"
                } else {
                    ""
                }
            ));
            for d in &report.snapshots {
                output::line(format!(
                    "  {}  {:<24} {}",
                    if d.keep { "keep  " } else { "remove" },
                    d.snapshot,
                    d.reasons.join("; ")
                ));
            }
            for u in &report.unreferenced {
                output::line(format!("  remove  {u} (no manifest names it)"));
            }
            for a in &report.abandoned {
                output::line(format!(
                    "  remove  {a} (unfinished write older than the grace period)"
                ));
            }
            if !report.wal.is_empty() {
                output::line(format!(
                    "  remove  {} WAL file(s) no retained base backup needs ({} … {})",
                    report.wal.len(),
                    report.wal.first().map(String::as_str).unwrap_or_default(),
                    report.wal.last().map(String::as_str).unwrap_or_default()
                ));
            }
        }
        reports.push(report);
    }
    if globals.json {
        output::json(&reports);
    }
    Ok(Outcome::Success)
}
