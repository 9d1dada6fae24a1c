//! `kompose-dr backup`: one snapshot of every configured source, or of the
//! sources `--source` selects.

use super::{Globals, output};
use crate::backup::{BackupOptions, RunStatus};
use crate::error::{Exit, Failure};
use crate::time::bytes;

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Back up only these sources: names or globs (`postgres/*`, `redis`,
    /// `files/traefik-acme`).
    #[arg(long = "source", value_name = "NAME", num_args = 1..)]
    sources: Vec<String>,
}

/// Runs `backup`.
pub async fn run(globals: &Globals, args: Args) -> Result<Exit, Failure> {
    let config = globals.load_config()?;
    let report = crate::backup::run(
        &config,
        &BackupOptions {
            sources: args.sources,
            policy: None,
        },
    )
    .await?;
    crate::events::after_backup(&config, &report).await;
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
        let failed: Vec<String> = report
            .artifacts
            .iter()
            .filter_map(|a| a.error.as_ref().map(|e| format!("{}: {e}", a.source)))
            .collect();
        tracing::error!("partial backup: {}", failed.join("; "));
    }
    Ok(report.exit())
}
