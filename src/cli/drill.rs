//! `kompose-dr drill`: run restore drills and write their reports.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Globals, interruptible, output};
use crate::error::{Failure, Outcome};
use crate::ops::drill::Drill;

/// Arguments of `drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run this drill file instead of every one in drills_dir.
    #[arg(long, value_name = "FILE")]
    drill: Option<PathBuf>,
    /// Drill against this repository (for example the offsite one) instead
    /// of the one each drill file names (default: the first configured).
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Stack drills only: the drill files with `scope = "stack"` (or the
    /// `--drill` file, run as one), else a stack drill of every source
    /// without apps. The whole stack comes up in scratch containers from
    /// the offsite repository by default, and the RTO is measured.
    #[arg(long)]
    stack: bool,
}

/// The drills `--stack` runs: the file given, as a stack drill; else the
/// stack drills of drills_dir; else the default stack drill.
fn stack_drills(
    config: &crate::model::config::Config,
    file: Option<&std::path::Path>,
) -> Result<Vec<Drill>, Failure> {
    use crate::ops::drill::Scope;
    let mut drills = match crate::ops::drill::find(config, file) {
        Ok(d) => d,
        Err(
            crate::ops::drill::DrillError::NoDrills(_)
            | crate::ops::drill::DrillError::DrillsDir { .. },
        ) if file.is_none() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if file.is_some() {
        for d in &mut drills {
            if !d.checks.is_empty() || d.point_in_time_ago.is_some() {
                return Err(Failure::usage(format!(
                    "drill {}: --stack runs it as a stack drill, which judges the stack by its \
                     apps' health: leave out [[check]] and point_in_time, or run it without --stack",
                    d.name
                )));
            }
            d.scope = Scope::Stack;
        }
    } else {
        drills.retain(|d| d.scope == Scope::Stack);
    }
    if drills.is_empty() {
        drills.push(Drill::stack_default());
    }
    Ok(drills)
}

/// Runs `drill`.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let config = globals.load_config()?;
    let mut drills = if args.stack {
        stack_drills(&config, args.drill.as_deref())?
    } else {
        crate::ops::drill::find(&config, args.drill.as_deref())?
    };
    if let Some(name) = &args.repository {
        // A name that is not configured is a usage error (exit 2).
        config.repository_named(name)?;
        for d in &mut drills {
            d.repository = Some(name.clone());
        }
    }
    let identities = Arc::new(crate::ops::drill::identities(&config)?);
    let mut reports = Vec::new();
    let mut exit = Outcome::Success;
    for d in &drills {
        tracing::info!(drill = %d.name, "drill started");
        let result = interruptible(crate::ops::drill::run(&config, d, identities.clone())).await?;
        match result {
            Ok(r) => {
                if !r.ok {
                    exit = Outcome::Failed;
                }
                tracing::info!(drill = %d.name, ok = r.ok, report = %r.report_files.first().map(|p| p.display().to_string()).unwrap_or_default(), "drill finished");
                if !globals.json {
                    output::line(crate::ops::drill::markdown(&r));
                }
                reports.push(r);
            }
            // Exit 1 for anything that stops a drill, as this command always
            // did (an unknown repository name included).
            Err(e) => return Err(Failure::failed(format!("drill {}: {e}", d.name))),
        }
    }
    if globals.json {
        output::json(&reports);
    }
    Ok(exit)
}
