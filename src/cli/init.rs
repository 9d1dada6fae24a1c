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
    /// Write a new age identity (private key, mode 0600) to this file and a
    /// new signing key to FILE.sign (0600), and print the lines to paste
    /// into the configuration. Never overwrites either.
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
    public_key: Option<String>,
    signing_key_file: Option<PathBuf>,
    repositories: Vec<RepoResult>,
}

/// Creates `path` (0600, never over an existing file) with `body`.
fn write_private(path: &Path, body: &str, what: &str) -> Result<(), Failure> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::usage(format!(
                "{} already exists: refusing to overwrite {what}",
                path.display()
            )),
            _ => Failure::failed(format!("cannot create {}: {e}", path.display())),
        })?;
    f.write_all(body.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

/// Writes a new minisign signing key (unencrypted: the backup host signs
/// unattended) to `path`; returns its public key.
fn write_signing_key(path: &Path) -> Result<String, Failure> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| Failure::failed(format!("cannot make a signing key: {e}")))?;
    let body = kp
        .sk
        .to_box(Some(
            "kompose-dr signing key (minisign); keep on the backup host only",
        ))
        .map_err(|e| Failure::failed(format!("cannot encode the signing key: {e}")))?
        .into_string();
    write_private(path, &body, "a signing key")?;
    Ok(kp.pk.to_base64())
}

fn write_identity(path: &Path) -> Result<String, Failure> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let body = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    write_private(
        path,
        &body,
        "an identity (it may be the only key to your backups)",
    )?;
    Ok(recipient)
}

/// The key files this run wrote; dropped without [`Generated::keep`], it
/// removes them (only them: a file that existed was never written), so a
/// run that fails half way leaves no key that nothing uses behind.
struct Generated {
    files: Vec<PathBuf>,
    kept: bool,
}

impl Generated {
    /// Keeps the files.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Generated {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for f in &self.files {
            match std::fs::remove_file(f) {
                Ok(()) => tracing::warn!(
                    path = %f.display(),
                    "removed the key file this run wrote: init failed, nothing uses it; run init --generate-key again once the failure is fixed"
                ),
                Err(e) => tracing::error!(
                    path = %f.display(),
                    error = %e,
                    "cannot remove the key file this run wrote although init failed: remove it by hand"
                ),
            }
        }
    }
}

/// Writes a new age identity to `path` and a new signing key to
/// `path.sign`, both 0600 and never over an existing file; on failure,
/// nothing written is left.
fn generate(path: &Path, report: &mut Report) -> Result<Generated, Failure> {
    let mut sign_path = path.to_path_buf().into_os_string();
    sign_path.push(".sign");
    let sign_path = PathBuf::from(sign_path);
    if sign_path.exists() {
        return Err(Failure::usage(format!(
            "{} already exists: refusing to overwrite a signing key",
            sign_path.display()
        )));
    }
    let recipient = write_identity(path)?;
    let mut written = Generated {
        files: vec![path.to_path_buf()],
        kept: false,
    };
    tracing::info!(path = %path.display(), "age identity written (mode 0600): keep a copy offline, it is the only key to the backups");
    let public_key = write_signing_key(&sign_path)?;
    written.files.push(sign_path.clone());
    tracing::info!(path = %sign_path.display(), "signing key written (mode 0600): it stays on the backup host; readers need only its public key");
    report.recipient = Some(recipient);
    report.identity_file = Some(path.to_path_buf());
    report.public_key = Some(public_key);
    report.signing_key_file = Some(sign_path);
    Ok(written)
}

/// Prints the configuration lines for the keys `generate` wrote.
fn print_keys(report: &Report) {
    let (Some(recipient), Some(sign), Some(public_key)) = (
        &report.recipient,
        &report.signing_key_file,
        &report.public_key,
    ) else {
        return;
    };
    output::line("# paste into the configuration: [encryption]");
    output::line(format!("recipients = [\"{recipient}\"]"));
    output::line("# [signing]");
    output::line(format!("key_file = \"{}\"", sign.display()));
    output::line(format!("public_key = \"{public_key}\""));
}

/// Runs `init`: writes a new age identity first if `--generate-key` asks, then
/// creates each selected repository that does not exist (a lost local one
/// is re-created with the stack id of those that remain). One that already
/// exists is left unchanged; when every one does, the exit is 2 (1 if
/// another repository failed). Keys written by
/// a run that fails, and creates no repository, are removed again.
pub async fn run(globals: &Globals, args: Args) -> Result<Outcome, Failure> {
    let mut report = Report {
        recipient: None,
        identity_file: None,
        public_key: None,
        signing_key_file: None,
        repositories: Vec::new(),
    };
    let generated = match &args.generate_key {
        Some(path) => Some(generate(path, &mut report)?),
        None => None,
    };
    let result = if generated.is_some() && !globals.config.exists() {
        tracing::info!(
            config = %globals.config.display(),
            "no configuration yet: put the recipient above in [encryption] recipients, then run `kompose-dr init`"
        );
        Ok(Outcome::Success)
    } else {
        create(globals, &args, &mut report).await
    };
    if let Some(generated) = generated {
        // A repository created in this run may already be signed with the
        // new key (a configuration naming FILE.sign): keep it then.
        if matches!(result, Ok(Outcome::Success)) || report.repositories.iter().any(|r| r.created) {
            generated.keep();
            if !globals.json {
                print_keys(&report);
            }
        } else {
            drop(generated);
            report.recipient = None;
            report.identity_file = None;
            report.public_key = None;
            report.signing_key_file = None;
        }
    }
    if globals.json {
        output::json(&report);
    }
    result
}

/// Creates each selected repository, recording each in `report`.
async fn create(globals: &Globals, args: &Args, report: &mut Report) -> Result<Outcome, Failure> {
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
    let stack = configured_stack(&config).await;
    let mut exit = Outcome::Success;
    let mut existing = 0;
    for rc in targets {
        let repo = Repository::open(rc);
        let result = repo.init(&encryption.recipients, &stack).await;
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
            Err(e @ RepositoryError::AlreadyInitialised { .. }) => {
                // After a host loss: the offsite copy is there, the local
                // one is re-created beside it.
                tracing::info!("{e}");
                if !globals.json {
                    output::line(format!(
                        "repository {} at {} exists already: left as it is",
                        repo.name(),
                        repo.location()
                    ));
                }
                existing += 1;
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
    // Nothing to do at all (every repository exists) is a refusal; one
    // re-created beside those that exist is what init is for.
    if existing == report.repositories.len() {
        return Ok(Outcome::Refused);
    }
    Ok(exit)
}

/// The stack id new repositories get: the one an existing repository of
/// this configuration has (so that snapshots copied between them stay
/// this stack's), else a new one.
async fn configured_stack(config: &crate::model::config::Config) -> String {
    let mut markers = Vec::new();
    for rc in &config.repositories {
        if let Ok(m) = Repository::open(rc).marker().await {
            markers.push(m);
        }
    }
    crate::repository::stack::choose(&markers)
}
