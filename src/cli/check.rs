//! `kompose-dr check`: repository integrity; `--read-data` also decrypts
//! and decompresses every archive.

use std::sync::Arc;

use super::{Globals, output, pick_repository};
use crate::error::{Failure, Outcome};

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also decrypt and decompress every archive (needs the identity).
    #[arg(long)]
    read_data: bool,
    /// Check this repository (default: the first configured one that answers).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

/// Runs `check` on one repository and lists what is damaged or unreferenced;
/// any damage exits 1.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let repo = pick_repository(&config, args.repository.as_deref()).await?;
    let identities = if args.read_data {
        Some(Arc::new(crate::pipeline::load_identities(&config)?))
    } else {
        None
    };
    let report = crate::ops::check::run(&repo, identities).await?;
    if let Some(mc) = &config.metrics
        && let Err(e) = crate::events::metrics::Metrics::update(&mc.textfile, |m| {
            m.record_deletions(repo.name(), report.vanished.len(), report.behind.is_some())
        })
    {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
    if globals.json {
        output::json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// Prints the check's report for people: the damage, the WAL archives,
/// deletions, other stacks' snapshots and what no manifest names.
fn print_report(report: &crate::ops::check::CheckReport) {
    output::line(format!(
        "repository {}: {} snapshot(s), {} archive(s) checked{}",
        report.repository,
        report.snapshots,
        report.archives,
        if report.read_data {
            " and read end to end"
        } else {
            " (size and sha256)"
        }
    ));
    for d in &report.damaged {
        output::line(format!(
            "  DAMAGED  {} {} ({}): {}",
            d.snapshot.as_deref().unwrap_or("-"),
            d.source,
            d.path,
            d.problem
        ));
    }
    for w in &report.wal {
        output::line(format!(
            "  WAL of cluster {}: {} file(s), {} … {}, covers until {}{}",
            w.system_identifier,
            w.files,
            w.first.as_deref().unwrap_or("-"),
            w.last.as_deref().unwrap_or("-"),
            w.covered_until
                .map(crate::model::time::local)
                .unwrap_or_else(|| "-".into()),
            if w.gaps.is_empty() {
                String::new()
            } else {
                format!("; GAPS at {}", w.gaps.join(", "))
            }
        ));
    }
    for line in output::deletions(&report.vanished, report.behind.as_ref()) {
        output::line(line);
    }
    if !report.other_stacks.is_empty() {
        output::line(format!(
            "  {} snapshot(s) of other stacks (used only when named): {}",
            report.other_stacks.len(),
            report.other_stacks.join(", ")
        ));
    }
    for u in &report.unreferenced {
        output::line(format!(
            "  unreferenced  {u} (no manifest names it; prune removes it)"
        ));
    }
    output::line(if report.ok {
        "no damage found"
    } else {
        "DAMAGE FOUND"
    });
}
