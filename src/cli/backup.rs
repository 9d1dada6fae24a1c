//! `kompose-dr backup`: one snapshot of every configured source, or of the
//! sources `--source` selects.

use super::{Globals, output};
use crate::error::{Failure, Outcome};
use crate::model::units::bytes;
use crate::ops::backup::{BackupOptions, RunStatus};

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Back up only these sources: names or globs (`postgres/*`, `redis`,
    /// `files/traefik-acme`).
    #[arg(long = "source", value_name = "NAME", num_args = 1.., conflicts_with = "policy")]
    sources: Vec<String>,
    /// Run this policy (policies_dir/*.toml): its sources and repositories,
    /// recorded in the manifest so prune applies its retention.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Wait this long for another writer's lock (`30s`, `10m`); default: fail at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    lock_wait: std::time::Duration,
}

/// Runs `backup`: one snapshot of the selected sources (or a policy's),
/// one line per source. Ctrl-C or SIGTERM leaves no manifest; a partial
/// run exits 3.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let progress = !globals.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let options = match &args.policy {
        Some(name) => {
            let policies = crate::model::policy::Policy::load_dir(&config.policies_dir)?;
            crate::ops::backup::policy_options(&config, &policies, name, args.lock_wait, progress)?
        }
        None => BackupOptions {
            sources: args.sources,
            policy: None,
            repositories: Vec::new(),
            lock_wait: args.lock_wait,
            progress,
            backfill: None,
        },
    };
    // Ctrl-C or SIGTERM drops the run: children are killed, uploads
    // aborted, and no manifest is written.
    let report =
        super::interruptible(crate::ops::backup::run_and_notify(&config, &options)).await??;
    if globals.json {
        output::json(&report);
    } else {
        for a in &report.artifacts {
            match &a.error {
                None => output::line(format!(
                    "  ok      {:<28} {:>10} -> {:>10}  {:.1}s",
                    a.source,
                    bytes(a.plaintext_bytes),
                    bytes(a.stored_bytes),
                    a.duration_seconds
                )),
                Some(e) => output::line(format!("  FAILED  {:<28} {e}", a.source)),
            }
        }
        for r in &report.repositories {
            for e in &r.errors {
                output::line(format!("  repository {}: {e}", r.name));
            }
        }
        if let Some(b) = &report.backfill {
            for c in &b.copies {
                for s in &c.snapshots {
                    output::line(format!(
                        "  backfill {} -> {}: {} {:?}{}",
                        c.from,
                        c.to,
                        s.snapshot,
                        s.status,
                        s.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
            }
            for e in &b.errors {
                output::line(format!("  backfill: {e}"));
            }
        }
        output::line(match report.status {
            RunStatus::Ok => format!("snapshot {} committed", report.snapshot),
            RunStatus::Partial => format!(
                "snapshot {} committed, but some sources or repositories failed (see above)",
                report.snapshot
            ),
            RunStatus::Failed => "no snapshot committed: nothing succeeded".to_owned(),
        });
    }
    if report.status == RunStatus::Partial {
        tracing::error!("partial backup: {}", failures(&report).join("; "));
    }
    Ok(report.outcome())
}

/// What failed in a partial run: the sources', then the repositories'
/// errors (a lost repository: `run kompose-dr init`).
fn failures(report: &crate::ops::backup::BackupReport) -> Vec<String> {
    report
        .artifacts
        .iter()
        .filter_map(|a| a.error.as_ref().map(|e| format!("{}: {e}", a.source)))
        .chain(report.repositories.iter().flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| format!("repository {}: {e}", r.name))
        }))
        .collect()
}
