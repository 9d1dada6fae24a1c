//! `kompose-dr snapshots`: list snapshots, newest first.

use serde::Serialize;

use super::{Globals, output, pick_repository};
use crate::error::{Failure, Outcome};
use crate::model::manifest::Manifest;
use crate::model::time::local;
use crate::model::units::bytes;

/// Arguments of `snapshots`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read this repository (default: the first configured one that answers).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

#[derive(Serialize)]
struct Damaged {
    key: String,
    error: String,
}

#[derive(Serialize)]
struct Report<'a> {
    repository: &'a str,
    stack: Option<&'a str>,
    snapshots: &'a [Manifest],
    other_stacks: &'a [Manifest],
    damaged: Vec<Damaged>,
    vanished: &'a [crate::repository::listing::Vanished],
    behind: Option<&'a crate::repository::listing::Behind>,
}

/// Runs `snapshots`: lists one repository's snapshots of this stack, newest
/// first, then other stacks' apart, and reports damaged manifests and
/// deleted snapshots (exit 1 if there is any).
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let repo = pick_repository(&config, args.repository.as_deref()).await?;
    let listing = repo.listing().await?;
    for d in &listing.damaged {
        tracing::error!(manifest = %d.key, error = %d.message, "damaged manifest");
    }
    if globals.json {
        output::json(&Report {
            repository: repo.name(),
            stack: listing.stack.as_deref(),
            snapshots: &listing.ours,
            other_stacks: &listing.others,
            damaged: listing
                .damaged
                .iter()
                .map(|d| Damaged {
                    key: d.key.clone(),
                    error: d.message.clone(),
                })
                .collect(),
            vanished: &listing.vanished,
            behind: listing.behind.as_ref(),
        });
    } else {
        print_text(&repo, &listing);
    }
    Ok(if listing.damaged.is_empty() && !listing.deletion_shows() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

fn print_text(repo: &crate::repository::Repository, listing: &crate::repository::Listing) {
    if listing.ours.is_empty() {
        output::line(format!(
            "no snapshots in repository {} ({})",
            repo.name(),
            repo.location()
        ));
    } else {
        print_table(&listing.ours);
    }
    if !listing.others.is_empty() {
        output::line(format!(
            "\n{} snapshot(s) of other stacks (written for another host or repository; used only when named with --snapshot):",
            listing.others.len()
        ));
        print_table(&listing.others);
    }
    for line in output::deletions(&listing.vanished, listing.behind.as_ref()) {
        output::line(line);
    }
}

fn print_table(snapshots: &[Manifest]) {
    output::line(format!(
        "{:<24} {:<19} {:<8} {:>10}  SOURCES",
        "ID", "TIME", "STATUS", "SIZE"
    ));
    for m in snapshots {
        let sources: Vec<String> = m
            .artifacts
            .iter()
            .map(|a| {
                if a.is_ok() {
                    format!("{} {}", a.source, bytes(a.stored_bytes))
                } else {
                    format!("{} FAILED", a.source)
                }
            })
            .collect();
        output::line(format!(
            "{:<24} {:<19} {:<8} {:>10}  {}",
            m.id,
            local(m.started_at),
            format!("{:?}", m.status).to_lowercase(),
            bytes(m.stored_bytes()),
            sources.join(", ")
        ));
    }
}
