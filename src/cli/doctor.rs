//! `kompose-dr doctor`: check that every repository is reachable, the
//! credentials valid and writes permitted, and that the identity file is
//! readable. Exit 0 when all pass, 1 otherwise.

use super::{Globals, output};
use crate::error::{Failure, Outcome};

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check only this repository.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

#[derive(serde::Serialize)]
struct Report {
    ok: bool,
    checks: Vec<crate::ops::doctor::Check>,
}

/// Runs `doctor`: every health check of the configuration (or of one
/// `--repository`); exits 1 if any check fails.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    if let Some(name) = &args.repository {
        config.repository_named(name)?;
    }
    let checks = crate::ops::doctor::run(&config, args.repository.as_deref()).await;
    let ok = checks.iter().all(|c| c.ok);
    if globals.json {
        output::json(&Report { ok, checks });
    } else {
        for c in &checks {
            output::line(format!(
                "{:4} {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.message
            ));
        }
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}
