//! `kompose-dr verify`: restore a snapshot into scratch instances and check
//! it against the facts recorded at backup time.

use std::sync::Arc;

use super::{Globals, interruptible, output, pick_repository};
use crate::error::{Class, Classify, Failure, Outcome};
use crate::ops::verify::{self, Which};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot to verify: an id, `latest` (default) or `oldest`.
    #[arg(long, value_name = "ID", default_value = "latest")]
    snapshot: String,
    /// Verify only these sources: names or globs.
    #[arg(long = "source", value_name = "NAME", num_args = 1..)]
    sources: Vec<String>,
    /// Read this repository (default: the first configured one that answers).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

/// Why the snapshot to verify was not had: exit 2 for a snapshot that is
/// not there or is refused, as this command always did; a store that
/// cannot be read (a lost connection, a failing disk) is a failure, exit
/// 1, not a usage error.
fn not_found(e: verify::VerifyError) -> Failure {
    match &e {
        verify::VerifyError::Repository(r) if r.class() == Class::Failure => {
            Failure::failed(e.to_string())
        }
        _ => Failure::usage(e.to_string()),
    }
}

/// Runs `verify`.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let repo = pick_repository(&config, args.repository.as_deref()).await?;
    let identities = Arc::new(crate::pipeline::load_identities(&config)?);
    let runtime = crate::scratch::runtime(&config);
    let manifest = verify::find_snapshot(&repo, &Which::parse(&args.snapshot))
        .await
        .map_err(not_found)?;
    tracing::info!(snapshot = %manifest.id, repository = repo.name(), "verifying in scratch instances");
    let work = verify::run(
        &config,
        &repo,
        identities,
        runtime.as_ref(),
        &manifest,
        &args.sources,
    );
    // Exit 1 for anything that stops the verification, as this command
    // always did (a bad --source pattern included).
    let (report, restored) = interruptible(work)
        .await?
        .map_err(|e| Failure::failed(e.to_string()))?;
    drop(restored); // tear the scratch instances down before reporting
    if globals.json {
        output::json(&report);
    } else {
        print(&report);
    }
    Ok(if report.ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// Prints a verify report for people.
pub fn print(report: &verify::VerifyReport) {
    output::line(format!(
        "snapshot {} in repository {}:",
        report.snapshot, report.repository
    ));
    for v in &report.sources {
        output::line(format!(
            "  {}  {:<24} restored in {:.1}s",
            if v.ok { "ok    " } else { "FAILED" },
            v.source,
            v.restore_seconds
        ));
        for c in &v.checks {
            let mark = if c.ok {
                "ok"
            } else if c.warning {
                "WARNING"
            } else {
                "FAILED"
            };
            output::line(format!("      {mark:<8} {}: {}", c.name, c.detail));
        }
    }
    output::line(if report.ok {
        "verified: every source restores and matches what was recorded"
    } else {
        "verification FAILED"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::RepositoryError;
    use crate::storage::StorageError;

    #[test]
    fn a_store_that_cannot_be_read_fails_and_a_missing_snapshot_is_usage() {
        let cut = verify::VerifyError::Repository(RepositoryError::Storage {
            name: "offsite".into(),
            source: StorageError::Remote {
                op: "read",
                location: "snapshots/x.json".into(),
                message: "the connection ended at byte 0".into(),
            },
        });
        assert_eq!(not_found(cut).class, Class::Failure);
        let missing = verify::VerifyError::NoSuchSnapshot {
            id: "x".into(),
            repository: "offsite".into(),
        };
        assert_eq!(not_found(missing).class, Class::Usage);
    }
}
