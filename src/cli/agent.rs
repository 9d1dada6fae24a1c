//! `kompose-dr agent`: run policies, prune and drills on their schedules.

use super::Globals;
use crate::error::{Failure, Outcome};

/// Arguments of `agent`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `agent` until SIGTERM (exit 0).
pub async fn run(globals: &Globals, _args: Args) -> Result<Outcome, Failure> {
    globals.load_config()?;
    crate::agent::run(&globals.config)
        .await
        .map_err(Failure::failed)?;
    Ok(Outcome::Success)
}
