//! `kompose-dr init`: create the repositories, optionally generating an age
//! identity first.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde::Serialize;

use super::{Globals, output};
use crate::error::{Failure, Outcome};
use crate::repository::{Repository, RepositoryError};

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write a new age identity (private key, mode 0600) to this file and
    /// print its public recipient.
    #[arg(long, value_name = "PATH")]
    generate_key: Option<PathBuf>,
    /// Initialise only this repository.
    #[arg(long, value_name = "NAME")]
    repository: Option<String>,
}

#[derive(Serialize)]
struct RepoResult {
    name: String,
    location: String,
    created: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    recipient: Option<String>,
    identity_file: Option<PathBuf>,
    repositories: Vec<RepoResult>,
}

fn write_identity(path: &Path) -> Result<String, Failure> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::usage(format!(
                "{} already exists: refusing to overwrite an identity (it may be the only key to your backups)",
                path.display()
            )),
            _ => Failure::failed(format!("cannot create {}: {e}", path.display())),
        })?;
    let body = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    f.write_all(body.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(recipient)
}

/// Runs `init`: writes a new age identity first if `--generate-key` asks, then
/// creates each selected repository. One that already exists is left unchanged
/// and makes the exit 2 (1 if another repository failed).
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let mut report = Report {
        recipient: None,
        identity_file: None,
        repositories: Vec::new(),
    };
    if let Some(path) = &args.generate_key {
        let recipient = write_identity(path)?;
        tracing::info!(path = %path.display(), "age identity written (mode 0600): keep a copy offline, it is the only key to the backups");
        if !globals.json {
            output::line(&recipient);
        }
        report.recipient = Some(recipient);
        report.identity_file = Some(path.clone());
        if !globals.config.exists() {
            tracing::info!(
                config = %globals.config.display(),
                "no configuration yet: put the recipient above in [encryption] recipients, then run `kompose-dr init`"
            );
            if globals.json {
                output::json(&report);
            }
            return Ok(Outcome::Success);
        }
    }

    let config = globals.load_config()?;
    let encryption = config.encryption.as_ref().ok_or_else(|| {
        Failure::usage(format!(
            "configuration {}: [encryption] recipients are needed to create a repository",
            config.path.display()
        ))
    })?;
    let targets: Vec<_> = match &args.repository {
        Some(name) => vec![config.repository_named(name)?],
        None => config.repositories.iter().collect(),
    };
    if targets.is_empty() {
        return Err(Failure::usage(format!(
            "no [[repository]] is configured in {}",
            config.path.display()
        )));
    }
    let mut exit = Outcome::Success;
    for rc in targets {
        let repo = Repository::open(rc);
        let result = repo.init(&encryption.recipients).await;
        match &result {
            Ok(_) => {
                tracing::info!(repository = repo.name(), location = %repo.location(), "repository created");
                if !globals.json {
                    output::line(format!(
                        "created repository {} at {}",
                        repo.name(),
                        repo.location()
                    ));
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                exit = match (exit, e) {
                    (Outcome::Failed, _) => Outcome::Failed,
                    (_, RepositoryError::AlreadyInitialised { .. }) => Outcome::Refused,
                    _ => Outcome::Failed,
                };
            }
        }
        report.repositories.push(RepoResult {
            name: repo.name().to_owned(),
            location: repo.location(),
            created: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
        });
    }
    if globals.json {
        output::json(&report);
    }
    Ok(exit)
}
