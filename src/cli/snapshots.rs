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
    snapshots: &'a [Manifest],
    damaged: Vec<Damaged>,
}

/// Runs `snapshots`: lists one repository's snapshots, newest first, and
/// reports damaged manifests (exit 1 if there is any).
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let repo = pick_repository(&config, args.repository.as_deref()).await?;
    let (snapshots, damaged) = repo.snapshots().await?;
    for d in &damaged {
        tracing::error!(manifest = %d.key, error = %d.message, "damaged manifest");
    }
    if globals.json {
        output::json(&Report {
            repository: repo.name(),
            snapshots: &snapshots,
            damaged: damaged
                .iter()
                .map(|d| Damaged {
                    key: d.key.clone(),
                    error: d.message.clone(),
                })
                .collect(),
        });
    } else if snapshots.is_empty() {
        output::line(format!(
            "no snapshots in repository {} ({})",
            repo.name(),
            repo.location()
        ));
    } else {
        output::line(format!(
            "{:<24} {:<19} {:<8} {:>10}  SOURCES",
            "ID", "TIME", "STATUS", "SIZE"
        ));
        for m in &snapshots {
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
    Ok(if damaged.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}
