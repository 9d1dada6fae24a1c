//! `kompose-dr bootstrap`: the configuration back from a repository, with
//! no configuration file (the host is gone). The work is
//! [`crate::ops::bootstrap`]; this file parses the flags and prints.

use std::path::PathBuf;

use super::{Globals, output};
use crate::error::{Failure, Outcome};
use crate::model::config::RepositoryConfig;
use crate::ops::bootstrap::{self, BootstrapError, Report, Request};

/// Arguments of `bootstrap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository: a local path, or s3://bucket/prefix (credentials
    /// from the AWS environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "URL")]
    repository: String,
    /// The S3 endpoint (Garage, MinIO …): http(s)://host:port.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The S3 region (us-east-1 by default; Garage's is `garage`).
    #[arg(long)]
    region: Option<String>,
    /// Path-style S3 addressing, as most self-hosted stores need.
    #[arg(long)]
    path_style: bool,
    /// The age identity (private key) kept offline; it is never written to DIR.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The signing public key: its base64 line (RW…), or a minisign .pub file.
    #[arg(long, value_name = "KEY")]
    public_key: String,
    /// Where to write the configuration (its files keep their paths below DIR).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// DIR holds files: move it aside (DIR.replaced-<time>) instead of refusing.
    #[arg(long)]
    force: bool,
    /// Read this snapshot's configuration, not the newest one's.
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
}

/// Runs `bootstrap`; needs no configuration file.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let repository = RepositoryConfig::from_flags(
        "bootstrap",
        &args.repository,
        args.endpoint.as_deref(),
        args.region.as_deref(),
        args.path_style,
    )
    .map_err(BootstrapError::Flags)?;
    let req = Request {
        repository,
        url: args.repository,
        identity: args.identity,
        public_key: args.public_key,
        to: args.to,
        force: args.force,
        snapshot: args.snapshot,
    };
    let report = bootstrap::run(&req).await?;
    if globals.json {
        output::json(&report);
    } else {
        print_text(&report);
    }
    Ok(Outcome::verdict(report.ok()))
}

fn print_text(r: &Report) {
    if let Some(skeleton) = &r.skeleton {
        output::line(format!(
            "No snapshot in {} carries kompose-dr's configuration; the newest is {} (host {}). Nothing was written.\n\
             A configuration to start from, with its sources (complete every TODO):\n",
            r.repository, r.snapshot, r.hostname
        ));
        output::line(skeleton);
        return;
    }
    output::line(format!(
        "Configuration of snapshot {} (host {}) written:",
        r.snapshot, r.hostname
    ));
    for f in &r.files {
        output::line(format!(
            "  {:04o} {}  ({}{})",
            f.mode,
            f.path.display(),
            f.named_by,
            if f.secret { ", secret" } else { "" }
        ));
    }
    if let Some(aside) = &r.replaced {
        output::line(format!(
            "What was in the directory is now {}",
            aside.display()
        ));
    }
    if !r.outside.is_empty() {
        output::line("\nPaths the configuration names outside it (nothing was rewritten):");
        for o in &r.outside {
            output::line(format!("  {} = {}\n      {}", o.key, o.path, o.action));
        }
    }
    output::line("\nNext:");
    for n in &r.next {
        output::line(format!("  {n}"));
    }
}
