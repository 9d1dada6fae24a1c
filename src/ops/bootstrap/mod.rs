//! `kompose-dr bootstrap`: the configuration back from a repository, with
//! no configuration file (docs/DESIGN.md §3, "The configuration in every
//! snapshot").
//!
//! The host is gone; the operator has the age identity, the signing public
//! key and the repository's address. Bootstrap reads the newest snapshot of
//! the repository that carries a `config` artifact — its marker and
//! manifest signed by `--public-key`, or refused — reads the archive
//! through the verifying reader (sizes, sha256, age, zstd), checks its
//! files against the snapshot's facts, and writes them under `--to DIR`
//! with their paths relative to `/` (`DIR/etc/kompose-dr/kompose-dr.toml`):
//! secrets 0600, the rest 0640 or 0600, directories 0700. Everything is
//! staged in a directory beside DIR and renamed into place at the end, so
//! any error leaves DIR as it was. A DIR that holds anything is refused
//! unless `--force`, which moves it aside (never deletes it).
//!
//! Nothing is rewritten: the paths in the configuration that point outside
//! DIR are listed with what to do ([`paths`]). Snapshots written before the
//! `config` source carry none: then the newest snapshot's sources are
//! printed as a configuration skeleton to start from ([`skeleton`]).

pub mod paths;
pub mod skeleton;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::config::{ConfigError, RepositoryConfig, Trust};
use crate::model::facts::{ConfigFileFacts, SourceFacts};
use crate::model::manifest::{Artifact, ArtifactKind, Manifest};
use crate::repository::{Repository, RepositoryError};
use crate::sources::config::{ArchivedFile, mismatch, read_archive};

/// The age identities that read the archive, shared with the reading thread.
pub type Identities = std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>;

/// A config archive larger than this is not one kompose-dr wrote.
pub const MAX_CONFIG_ARCHIVE: u64 = 256 * 1024 * 1024;

/// What `bootstrap` is asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// The repository (from `--repository`, `--endpoint`, `--region`,
    /// `--path-style`; [`RepositoryConfig::from_flags`]).
    pub repository: RepositoryConfig,
    /// What `--repository` said, for messages and the next commands.
    pub url: String,
    /// `--identity FILE`: the age identity.
    pub identity: PathBuf,
    /// `--public-key KEY`: base64, or a minisign `.pub` file.
    pub public_key: String,
    /// `--to DIR`.
    pub to: PathBuf,
    /// `--force`: move a DIR that holds anything aside.
    pub force: bool,
    /// `--snapshot ID`: that snapshot, not the newest with a configuration.
    pub snapshot: Option<String>,
}

/// Why nothing was written. Every message is one line naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A flag is wrong (the URL, the public key, the identity file).
    #[error("{0}")]
    Usage(String),
    /// The repository flags do not describe a repository.
    #[error("{}: {}", .0.key.as_deref().unwrap_or("--repository"), .0.message)]
    Flags(#[source] ConfigError),
    /// DIR holds something and `--force` was not given.
    #[error(
        "{} already holds files (a configuration?): nothing was written; pass --force to move it aside to {}.replaced-<time>, or choose another --to",
        dir.display(),
        dir.display()
    )]
    Occupied {
        /// DIR.
        dir: PathBuf,
    },
    /// The repository cannot be read, is not one, or is not signed by the key.
    #[error("{message}")]
    Repository {
        /// What is wrong and the fix.
        message: String,
        /// The repository's error.
        #[source]
        source: RepositoryError,
    },
    /// The repository holds no snapshot.
    #[error(
        "repository {0} holds no snapshot of this stack: nothing to bootstrap from; check --repository (another prefix?), or write the configuration by hand (docs/RUNBOOK.md)"
    )]
    NoSnapshots(String),
    /// `--snapshot ID` is not there, or carries no configuration.
    #[error("{0}")]
    Snapshot(String),
    /// The archive or its facts could not be read or do not agree.
    #[error("{0}")]
    Archive(String),
    /// DIR could not be written.
    #[error("cannot write {}: {source}; nothing was written to {}", path.display(), dir.display())]
    Write {
        /// What was being written.
        path: PathBuf,
        /// DIR.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for BootstrapError {
    fn class(&self) -> crate::error::Class {
        match self {
            BootstrapError::Usage(_)
            | BootstrapError::Flags(_)
            | BootstrapError::Occupied { .. }
            | BootstrapError::Snapshot(_) => crate::error::Class::Usage,
            _ => crate::error::Class::Failure,
        }
    }
}

/// One file written.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Where it is now (under DIR).
    pub path: PathBuf,
    /// Where it was on the old host.
    pub original: PathBuf,
    /// What named it (`config`, `policies_dir`, a key).
    pub named_by: String,
    /// Whether it holds a secret.
    pub secret: bool,
    /// Its mode now.
    pub mode: u32,
}

/// What bootstrap did, or why it could not.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The repository read.
    pub repository: String,
    /// The snapshot the configuration came from (or, without one, the
    /// newest snapshot).
    pub snapshot: String,
    /// When that snapshot was taken.
    pub snapshot_started_at: chrono::DateTime<chrono::Utc>,
    /// The host that took it.
    pub hostname: String,
    /// The configuration file written (under DIR); absent when none was.
    pub config: Option<PathBuf>,
    /// Every file written.
    pub files: Vec<Written>,
    /// Where an occupied DIR was moved (`--force`).
    pub replaced: Option<PathBuf>,
    /// The paths of the configuration outside DIR, with what to do.
    pub outside: Vec<paths::Outside>,
    /// The commands to run next.
    pub next: Vec<String>,
    /// No snapshot carries a configuration: a skeleton from the newest
    /// snapshot's sources, to complete by hand.
    pub skeleton: Option<String>,
}

impl Report {
    /// Whether a configuration was written.
    pub fn ok(&self) -> bool {
        self.config.is_some()
    }
}

/// Runs bootstrap: reads, verifies, stages and writes the configuration,
/// or returns why nothing was written.
pub async fn run(req: &Request) -> Result<Report, BootstrapError> {
    let identities = load_identity(&req.identity)?;
    let public_key = public_key(&req.public_key)?;
    check_dir(&req.to, req.force)?;
    let mut rc = req.repository.clone();
    rc.trust = Trust {
        public_key: Some(public_key.clone()),
        signing_key: None,
        allow_unsigned: false,
        seen_dir: None,
    };
    let repo = Repository::open(&rc);
    let marker = repo
        .marker()
        .await
        .map_err(|e| repository_error(&req.url, e))?;
    let listing = repo
        .listing()
        .await
        .map_err(|e| repository_error(&req.url, e))?;
    for d in &listing.damaged {
        tracing::warn!(manifest = %d.key, error = %d.message, "snapshot left out: it cannot be read or is not signed by --public-key");
    }
    let Some(newest) = listing.ours.first() else {
        return Err(match listing.damaged.first() {
            Some(d) => BootstrapError::Archive(format!(
                "repository {}: no readable snapshot ({}: {}); is --public-key the key that signed them?",
                req.url, d.key, d.message
            )),
            None => BootstrapError::NoSnapshots(req.url.clone()),
        });
    };
    let Some((manifest, artifact)) = choose(&listing.ours, req.snapshot.as_deref())? else {
        let recipients = marker.recipients.clone();
        return Ok(without_config(
            req,
            newest,
            &listing.ours,
            &recipients,
            &public_key,
        ));
    };
    let files = read_config(&repo, manifest, artifact, &identities).await?;
    write_all(req, manifest, files)
}

/// The snapshot and its `config` artifact: `--snapshot ID`'s, or the
/// newest that has one; `None` when no snapshot has one.
fn choose<'m>(
    ours: &'m [Manifest],
    wanted: Option<&str>,
) -> Result<Option<(&'m Manifest, &'m Artifact)>, BootstrapError> {
    let config_of = |m: &'m Manifest| {
        m.artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::Config && a.is_ok())
            .map(|a| (m, a))
    };
    match wanted {
        Some(id) => {
            let m = ours.iter().find(|m| m.id == id).ok_or_else(|| {
                BootstrapError::Snapshot(format!(
                    "no snapshot {id} in the repository: leave out --snapshot for the newest with a configuration, or pick one `kompose-dr snapshots` lists"
                ))
            })?;
            config_of(m).map(Some).ok_or_else(|| {
                BootstrapError::Snapshot(format!(
                    "snapshot {id} carries no configuration (it predates the config source, or it failed there): leave out --snapshot"
                ))
            })
        }
        None => Ok(ours.iter().find_map(config_of)),
    }
}

/// The one-line error for a repository that cannot be used, naming the fix.
fn repository_error(url: &str, e: RepositoryError) -> BootstrapError {
    let message = match &e {
        RepositoryError::NotInitialised { .. } => format!(
            "{url} is not a kompose-dr repository (no kompose-dr.json): check --repository, and for S3 the bucket/prefix, --endpoint and --region"
        ),
        RepositoryError::Signature { .. } => format!(
            "repository {url} is not signed by --public-key ({e}): pass the public key of the backup host's signing key (the public_key line of its configuration, or the .pub file `init --generate-key` wrote)"
        ),
        RepositoryError::Storage { .. } => format!(
            "cannot read repository {url}: {e}; check --repository, --endpoint, --region, --path-style and the AWS credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        ),
        _ => format!("repository {url}: {e}"),
    };
    BootstrapError::Repository { message, source: e }
}

/// The age identities of `--identity FILE` (refused unread while group
/// or others can read it).
fn load_identity(path: &Path) -> Result<Identities, BootstrapError> {
    let body = crate::model::config::keyfile::read(path, "identity file")
        .map_err(|e| BootstrapError::Usage(format!("--identity: {e}")))?;
    let unusable = |why: String| {
        BootstrapError::Usage(format!(
            "--identity {}: {why}; pass the age identity file (AGE-SECRET-KEY-…) kept offline",
            path.display()
        ))
    };
    let ids = age::IdentityFile::from_buffer(body.as_slice())
        .map_err(|e| unusable(e.to_string()))?
        .into_identities()
        .map_err(|e| unusable(e.to_string()))?;
    if ids.is_empty() {
        return Err(unusable("it holds no identity".into()));
    }
    Ok(std::sync::Arc::new(ids))
}

/// `--public-key`: the base64 key, or a minisign `.pub` file holding it.
fn public_key(arg: &str) -> Result<String, BootstrapError> {
    let text = match std::fs::read_to_string(arg) {
        Ok(t) => t,
        Err(_) => arg.to_owned(),
    };
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .find_map(|l| l.strip_prefix("public_key = ").or(Some(l)))
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    minisign::PublicKey::from_base64(&line).map_err(|_| {
        BootstrapError::Usage(
            "--public-key is not a minisign public key: pass the base64 line (RW…) of the backup host's [signing] public_key, or its .pub file"
                .into(),
        )
    })?;
    Ok(line)
}

/// Refuses a DIR that holds anything, unless `force`.
fn check_dir(dir: &Path, force: bool) -> Result<(), BootstrapError> {
    let occupied = match std::fs::read_dir(dir) {
        Ok(mut rd) => rd.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(BootstrapError::Usage(format!(
                "--to {} is a file, not a directory: choose a directory",
                dir.display()
            )));
        }
        Err(source) => {
            return Err(BootstrapError::Write {
                path: dir.to_owned(),
                dir: dir.to_owned(),
                source,
            });
        }
    };
    if occupied && !force {
        return Err(BootstrapError::Occupied {
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Reads the `config` archive through the verifying reader and checks its
/// files against the snapshot's facts: the files, and their facts.
pub async fn read_config(
    repo: &Repository,
    manifest: &Manifest,
    artifact: &Artifact,
    identities: &Identities,
) -> Result<Vec<(ArchivedFile, ConfigFileFacts)>, BootstrapError> {
    let tar = decrypt(repo, artifact, identities).await?;
    let facts = config_facts(repo, manifest, identities).await?;
    let files = read_archive(&tar).map_err(|e| {
        BootstrapError::Archive(format!(
            "the config archive of snapshot {} is not one kompose-dr wrote: {e}",
            manifest.id
        ))
    })?;
    if let Some(why) = mismatch(&files, &facts) {
        return Err(BootstrapError::Archive(format!(
            "the config archive of snapshot {} does not match its facts ({why}): it is damaged; pass --snapshot with an older one",
            manifest.id
        )));
    }
    Ok(files.into_iter().zip(facts).collect())
}

/// The archive's plaintext (a tar), checked on the way: sizes, sha256,
/// age, zstd.
async fn decrypt(
    repo: &Repository,
    artifact: &Artifact,
    identities: &Identities,
) -> Result<Vec<u8>, BootstrapError> {
    if artifact.plaintext_bytes > MAX_CONFIG_ARCHIVE {
        return Err(BootstrapError::Archive(format!(
            "the config archive claims {} bytes, more than kompose-dr writes: refusing it",
            artifact.plaintext_bytes
        )));
    }
    let stored = crate::restore::open_artifact(repo, artifact, &indicatif::ProgressBar::hidden())
        .await
        .map_err(|e| BootstrapError::Archive(e.to_string()))?;
    let (ids, size) = (identities.clone(), artifact.plaintext_bytes as usize);
    let copied = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(size);
        crate::restore::stream::copy_archive(stored, &ids, &mut out).map(|_| out)
    })
    .await
    .map_err(|e| BootstrapError::Archive(format!("the reading thread failed: {e}")))?;
    match copied {
        Ok(out) => Ok(out),
        Err(crate::restore::stream::ReadError::WrongKey(label)) => {
            Err(BootstrapError::Usage(format!(
                "--identity cannot decrypt {label}: pass the age identity whose public key is among the repository's recipients (kompose-dr.json)"
            )))
        }
        Err(e) => Err(BootstrapError::Archive(format!(
            "{e}; pass --snapshot with an older snapshot"
        ))),
    }
}

/// The `config` source's facts in the snapshot's sidecar.
async fn config_facts(
    repo: &Repository,
    manifest: &Manifest,
    identities: &Identities,
) -> Result<Vec<ConfigFileFacts>, BootstrapError> {
    let stored = manifest.facts.as_ref().ok_or_else(|| {
        BootstrapError::Archive(format!("snapshot {} has no facts sidecar", manifest.id))
    })?;
    let facts = repo.facts(stored, identities).await.map_err(|e| {
        BootstrapError::Archive(format!(
            "the facts of snapshot {} cannot be read: {e}",
            manifest.id
        ))
    })?;
    match facts.sources.get(crate::sources::config::SOURCE) {
        Some(SourceFacts::Config { files }) => Ok(files.clone()),
        _ => Err(BootstrapError::Archive(format!(
            "the facts of snapshot {} list no config files: it is damaged; pass --snapshot with an older one",
            manifest.id
        ))),
    }
}

/// The mode a file is written with: 0600 for a secret, else 0640 if its
/// group could read it on the old host, else 0600.
fn mode_for(secret: bool, recorded: u32) -> u32 {
    if !secret && recorded & 0o040 != 0 {
        0o640
    } else {
        0o600
    }
}

/// Stages every file beside DIR, then renames the stage into place.
fn write_all(
    req: &Request,
    manifest: &Manifest,
    files: Vec<(ArchivedFile, ConfigFileFacts)>,
) -> Result<Report, BootstrapError> {
    let dir = crate::sources::config::absolute(&req.to);
    let parent = dir.parent().unwrap_or(Path::new("/")).to_owned();
    let failed = |path: &Path| {
        let (path, dir) = (path.to_owned(), dir.clone());
        move |source| BootstrapError::Write { path, dir, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(failed(&parent))?;
    let stage = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.bootstrap-",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ))
        .tempdir_in(&parent)
        .map_err(failed(&parent))?;
    let mut written = Vec::new();
    for (f, facts) in &files {
        let mode = mode_for(facts.secret, f.mode);
        write_one(stage.path(), &f.path, &f.data, mode).map_err(failed(&dir.join(&f.path)))?;
        written.push(Written {
            path: dir.join(&f.path),
            original: Path::new("/").join(&f.path),
            named_by: facts.named_by.clone(),
            secret: facts.secret,
            mode,
        });
    }
    let replaced = put_in_place(stage, &dir).map_err(failed(&dir))?;
    let config = written
        .iter()
        .find(|w| w.named_by == "config")
        .map(|w| w.path.clone());
    let (outside, next) = match &config {
        Some(c) => paths::review(c, &dir, &written, &req.url),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Report {
        repository: req.url.clone(),
        snapshot: manifest.id.clone(),
        snapshot_started_at: manifest.started_at,
        hostname: manifest.hostname.clone(),
        config,
        files: written,
        replaced,
        outside,
        next,
        skeleton: None,
    })
}

/// Writes `data` at `rel` under `root` with `mode`, its directories 0700.
fn write_one(root: &Path, rel: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let path = root.join(rel);
    if let Some(p) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

/// Renames the stage to DIR: an empty DIR is removed first, an occupied
/// one (`--force`) moved aside, and its new name returned.
fn put_in_place(stage: tempfile::TempDir, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    std::fs::set_permissions(stage.path(), std::fs::Permissions::from_mode(0o700))?;
    let mut replaced = None;
    match std::fs::read_dir(dir).map(|mut rd| rd.next().is_none()) {
        Ok(true) => std::fs::remove_dir(dir)?,
        Ok(false) => {
            let aside = PathBuf::from(format!(
                "{}.replaced-{}",
                dir.display(),
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ));
            std::fs::rename(dir, &aside)?;
            replaced = Some(aside);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let stage = stage.keep();
    if let Err(e) = std::fs::rename(&stage, dir) {
        if let Some(aside) = &replaced {
            let _ = std::fs::rename(aside, dir);
        }
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    Ok(replaced)
}

/// No snapshot carries a configuration: the newest snapshot, and a
/// skeleton from the sources of all of them (`ours`, newest first).
fn without_config(
    req: &Request,
    newest: &Manifest,
    ours: &[Manifest],
    recipients: &[String],
    public_key: &str,
) -> Report {
    Report {
        repository: req.url.clone(),
        snapshot: newest.id.clone(),
        snapshot_started_at: newest.started_at,
        hostname: newest.hostname.clone(),
        config: None,
        files: Vec::new(),
        replaced: None,
        outside: Vec::new(),
        next: Vec::new(),
        skeleton: Some(skeleton::from_manifests(
            ours,
            &req.repository,
            recipients,
            public_key,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_secrecy() {
        assert_eq!(mode_for(true, 0o644), 0o600);
        assert_eq!(mode_for(false, 0o644), 0o640);
        assert_eq!(mode_for(false, 0o600), 0o600);
    }

    #[test]
    fn a_public_key_is_read_from_its_line_or_file() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let b64 = kp.pk.to_base64();
        assert_eq!(public_key(&b64).unwrap(), b64);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pub");
        std::fs::write(
            &f,
            format!("untrusted comment: minisign public key\n{b64}\n"),
        )
        .unwrap();
        assert_eq!(public_key(f.to_str().unwrap()).unwrap(), b64);
        assert!(public_key("nonsense").is_err());
    }

    #[test]
    fn an_occupied_dir_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path(), false).unwrap();
        check_dir(&dir.path().join("new"), false).unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        assert!(matches!(
            check_dir(dir.path(), false),
            Err(BootstrapError::Occupied { .. })
        ));
        check_dir(dir.path(), true).unwrap();
    }
}
