//! `kompose-dr copy`: snapshots from one repository to another, as stored
//! (no key needed), every sha256 checked on the way.

use super::{Globals, output};
use crate::error::{Failure, Outcome};
use crate::model::units::bytes;
use crate::ops::copy::{CopyOptions, CopyReport, CopyStatus, Selection, SnapshotCopy};
use crate::repository::Repository;

/// Arguments of `copy`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false).args(["snapshots", "missing"])))]
pub struct Args {
    /// The repository to copy from (its configured name).
    #[arg(long, value_name = "NAME")]
    from: String,
    /// The repository to copy to (its configured name).
    #[arg(long, value_name = "NAME")]
    to: String,
    /// Copy these snapshots (ids as `snapshots` lists them); one the target
    /// already has is skipped.
    #[arg(long = "snapshot", value_name = "ID", num_args = 1..)]
    snapshots: Vec<String>,
    /// Copy every snapshot of the source the target lacks, oldest first.
    #[arg(long)]
    missing: bool,
    /// Show what would be copied without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Wait this long for another writer's lock on the target (`30s`,
    /// `10m`); default: fail at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    lock_wait: std::time::Duration,
}

/// Runs `copy`: one line per snapshot; any snapshot not copied exits 1.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let from = Repository::open(config.repository_named(&args.from)?);
    let to = Repository::open(config.repository_named(&args.to)?);
    let opts = CopyOptions {
        selection: if args.missing {
            Selection::Missing
        } else {
            Selection::Snapshots(args.snapshots)
        },
        dry_run: args.dry_run,
        lock_wait: args.lock_wait,
    };
    // Stopped (Ctrl-C, SIGTERM): the object being written is aborted and
    // the snapshot it belongs to is not committed.
    let report = super::interruptible(crate::ops::copy::copy(&from, &to, &opts)).await??;
    if globals.json {
        output::json(&report);
    } else {
        for s in &report.snapshots {
            output::line(line(&report, s));
        }
        output::line(format!(
            "{} {} from `{}` to `{}`{}{}",
            report.count(if report.dry_run {
                CopyStatus::WouldCopy
            } else {
                CopyStatus::Copied
            }),
            if report.dry_run {
                "snapshots would be copied"
            } else {
                "snapshots copied"
            },
            report.from,
            report.to,
            match report.replaced() {
                0 => String::new(),
                n => format!(
                    ", {n} damaged {} replaced",
                    if n == 1 { "manifest" } else { "manifests" }
                ),
            },
            match report.failed() {
                0 => String::new(),
                n => format!(", {n} failed (see above)"),
            }
        ));
    }
    Ok(report.outcome())
}

/// The line of one snapshot in the text report.
fn line(report: &CopyReport, s: &SnapshotCopy) -> String {
    let replaced = s
        .replaced
        .as_deref()
        .map(|why| {
            format!(
                "; {} the damaged manifest in `{}` ({why})",
                if report.dry_run {
                    "would replace"
                } else {
                    "replaced"
                },
                report.to
            )
        })
        .unwrap_or_default();
    match s.status {
        CopyStatus::Copied => format!(
            "  copied      {}  {} objects, {}{}{replaced}",
            s.snapshot,
            s.objects,
            bytes(s.bytes),
            if s.objects_present > 0 {
                format!(" ({} already there, kept)", s.objects_present)
            } else {
                String::new()
            }
        ),
        CopyStatus::WouldCopy => format!(
            "  would copy  {}  {} objects, {}{replaced}",
            s.snapshot,
            s.objects,
            bytes(s.bytes)
        ),
        CopyStatus::Skipped => format!(
            "  skipped     {}  (repository `{}` has it)",
            s.snapshot, report.to
        ),
        CopyStatus::Failed => format!(
            "  FAILED      {}  {}",
            s.snapshot,
            s.error.as_deref().unwrap_or("")
        ),
    }
}
