//! `kompose-dr doctor`: check the whole path of every configured source,
//! repository, broker, textfile and runtime (see [`crate::ops::doctor`]).
//! Exit 0 when all pass, 1 otherwise; `--json` prints
//! `{ok, checks: [{name, ok, message}]}`. `--as-user NAME` (as root)
//! runs it again as the units' user, through `setpriv`, with the backup
//! unit's ambient capabilities, so the checks see what the units see.

use super::{Globals, output};
use crate::error::{Failure, Outcome};

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check only this repository.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
    /// Check as this user (needs root), with the backup unit's ambient
    /// capabilities, as the systemd units run: `--as-user kompose-dr`.
    #[arg(long, value_name = "USER")]
    as_user: Option<String>,
}

#[derive(serde::Serialize)]
struct Report {
    ok: bool,
    checks: Vec<crate::ops::doctor::Check>,
}

/// Runs `doctor`: every health check of the configuration (or of one
/// `--repository`); exits 1 if any check fails.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    if let Some(user) = &args.as_user
        && let Some(mut again) = crate::ops::doctor::as_user_command(user)?
    {
        // This process becomes `setpriv … kompose-dr <the same arguments>`,
        // which finds itself already the user and runs the checks.
        use std::os::unix::process::CommandExt;
        let e = again.exec();
        return Err(crate::error::InvalidInput(format!("cannot run setpriv: {e}")).into());
    }
    let config = globals.load_config()?;
    if let Some(name) = &args.repository {
        config.repository_named(name)?;
    }
    let checks =
        crate::ops::doctor::run(&config, args.repository.as_deref(), args.as_user.as_deref()).await;
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
