//! `kompose-dr agent`: run policies, prune and drills on their schedules.

use super::Globals;
use crate::error::{Failure, Outcome};

/// Arguments of `agent`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `agent` until SIGTERM (exit 0).
pub async fn run(globals: &Globals, _args: Args) -> Result<Outcome, Failure> {
    globals.load_config()?;
    let (shutdown, reload) = crate::agent::signals()
        .map_err(|e| Failure::failed(format!("cannot watch for signals: {e}")))?;
    crate::agent::run(&globals.config, shutdown, reload).await?;
    Ok(Outcome::Success)
}
