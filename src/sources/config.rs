//! The `config` source: kompose-dr's own configuration, in every snapshot,
//! so that a host that lost everything gets it back from the offsite copy
//! (`kompose-dr bootstrap`, docs/DESIGN.md §3).
//!
//! One tar holds the configuration file as read, the policies
//! (`policies_dir/*.toml`) and drills (`drills_dir/*.toml`) it uses, and
//! every file the configuration named and read
//! ([`Config::named_files`](crate::model::config::Config::named_files):
//! password and token files, the S3 key files, the signing key, `env_file`,
//! systemd credentials, `mqtt.ca_file`). Entries are the files' paths on the
//! host relative to `/` (`etc/kompose-dr/kompose-dr.toml`), with their modes,
//! owners and mtimes, so stock `age -d | zstd -d | tar -x` puts them back.
//!
//! The age identity is never in it: a file at the identity's path, or any
//! file holding an age secret key, is left out with a warning. Files the
//! configuration names but that cannot be read (a missing `mqtt.ca_file`, a
//! policies directory not made yet) are left out with a warning too; the
//! snapshot's facts list exactly what the tar holds, with each file's
//! sha256.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{SourceContext, SourceError, SourceRun, timed};
use crate::model::config::Config;
use crate::model::facts::{ConfigFileFacts, SourceFacts};
use crate::model::manifest::ArtifactKind;
use crate::model::source_name::SourceName;
use crate::pipeline;
use crate::pipeline::tar::{Stamp, header};
use crate::storage::keys::artifact_key;

/// The source's name.
pub const SOURCE: &str = SourceName::CONFIG;

/// A file larger than this is not a configuration file (a misnamed path):
/// it is left out with a warning.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// The text every age secret key starts with: a file holding one is the
/// identity (or a copy of it) and never goes into a snapshot.
const AGE_SECRET: &[u8] = b"AGE-SECRET-KEY-";

/// One file to carry.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The path on the host (absolute, lexically normal).
    pub path: PathBuf,
    /// What named it (`config`, `policies_dir`, `drills_dir`, or the key).
    pub named_by: String,
    /// Whether it holds a secret.
    pub secret: bool,
    /// Its content.
    pub data: Vec<u8>,
    /// Its mode, owner and mtime.
    pub stamp: Stamp,
}

/// A file named but left out, and why (logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path.
    pub path: PathBuf,
    /// Why it is not in the snapshot.
    pub why: String,
}

/// `p` made absolute (from the working directory) and lexically normal:
/// no `.`, no `..` (symlinks are kept as named: the path is the one the
/// configuration uses).
pub fn absolute(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The tar entry name of an absolute path: relative to `/`.
pub fn entry_name(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

/// The `*.toml` files of `dir`, sorted; none if it cannot be listed.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file the `config` source carries, and those left out: the
/// configuration file, its policies and drills, and the files it named.
/// The identity is never collected.
pub fn collect(config: &Config) -> (Vec<Collected>, Vec<Skipped>) {
    let identity = config
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_deref())
        .map(|p| (absolute(p), std::fs::canonicalize(p).ok()));
    let mut wanted: Vec<(PathBuf, String, bool)> =
        vec![(config.path.clone(), "config".into(), false)];
    wanted.extend(
        toml_files(&config.policies_dir)
            .into_iter()
            .map(|p| (p, "policies_dir".into(), false)),
    );
    wanted.extend(
        toml_files(&config.drills_dir)
            .into_iter()
            .map(|p| (p, "drills_dir".into(), false)),
    );
    wanted.extend(
        config
            .named_files
            .iter()
            .map(|n| (n.path.clone(), n.key.clone(), n.secret)),
    );
    let (mut files, mut skipped) = (Vec::<Collected>::new(), Vec::<Skipped>::new());
    for (path, named_by, secret) in wanted {
        let path = absolute(&path);
        if files.iter().any(|f| f.path == path) {
            continue;
        }
        let is_identity = identity.as_ref().is_some_and(|(abs, canon)| {
            *abs == path
                || (canon.is_some() && std::fs::canonicalize(&path).ok().as_ref() == canon.as_ref())
        });
        if is_identity {
            skipped.push(Skipped {
                path,
                why: format!("it is the age identity ({named_by}): the identity never goes into a snapshot; keep it offline"),
            });
            continue;
        }
        match read_one(&path) {
            Ok((data, _)) if data.windows(AGE_SECRET.len()).any(|w| w == AGE_SECRET) => {
                skipped.push(Skipped {
                    path,
                    why: format!("it holds an age secret key ({named_by}): the identity never goes into a snapshot"),
                });
            }
            Ok((data, stamp)) => files.push(Collected {
                path,
                named_by,
                secret,
                data,
                stamp,
            }),
            Err(why) => skipped.push(Skipped {
                path,
                why: why.to_string(),
            }),
        }
    }
    (files, skipped)
}

/// Why a named file is left out of the `config` archive.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// It could not be opened, inspected or read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// It is a directory, a device, a FIFO.
    #[error("it is not a regular file")]
    NotAFile,
    /// It is larger than a configuration file is.
    #[error("it is {0} bytes, more than a configuration file holds ({MAX_FILE})")]
    TooLarge(u64),
}

/// A regular file's content and stamp, or why it is left out.
fn read_one(path: &Path) -> Result<(Vec<u8>, Stamp), Unreadable> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Unreadable::NotAFile);
    }
    if meta.size() > MAX_FILE {
        return Err(Unreadable::TooLarge(meta.size()));
    }
    let mut data = Vec::with_capacity(meta.size() as usize);
    f.by_ref().take(MAX_FILE + 1).read_to_end(&mut data)?;
    Ok((data, Stamp::of(&meta)))
}

/// The tar of `files` (entries relative to `/`), and their facts.
pub fn archive(files: &[Collected]) -> std::io::Result<(Vec<u8>, Vec<ConfigFileFacts>)> {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut facts = Vec::with_capacity(files.len());
    for f in files {
        let name = entry_name(&f.path);
        let mut h = header(::tar::EntryType::Regular, f.data.len() as u64, &f.stamp);
        b.append_data(&mut h, &name, f.data.as_slice())?;
        facts.push(ConfigFileFacts {
            path: name,
            named_by: f.named_by.clone(),
            secret: f.secret,
            mode: f.stamp.mode,
            bytes: f.data.len() as u64,
            sha256: hex::encode(Sha256::digest(&f.data)),
        });
    }
    Ok((b.into_inner()?, facts))
}

/// One file read back from a `config` archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// Its path relative to `/`, checked plain (no `..`, not absolute).
    pub path: PathBuf,
    /// Its permission bits as recorded.
    pub mode: u32,
    /// Its content.
    pub data: Vec<u8>,
}

/// The files of a `config` tar, trusting nothing in it: regular files
/// only, plain relative names, each once.
pub fn read_archive(tar: &[u8]) -> std::io::Result<Vec<ArchivedFile>> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut out: Vec<ArchivedFile> = Vec::new();
    for entry in ::tar::Archive::new(tar).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let shown = path.display().to_string();
        if entry.header().entry_type() != ::tar::EntryType::Regular {
            return Err(bad(format!("{shown}: not a regular file")));
        }
        if path.as_os_str().is_empty()
            || !path.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!("{shown}: not a plain relative path")));
        }
        if out.iter().any(|f| f.path == path) {
            return Err(bad(format!("{shown}: listed twice")));
        }
        let mode = entry.header().mode()? & 0o777;
        let mut data = Vec::new();
        entry.by_ref().take(MAX_FILE + 1).read_to_end(&mut data)?;
        if data.len() as u64 > MAX_FILE {
            return Err(bad(format!("{shown}: larger than {MAX_FILE} bytes")));
        }
        out.push(ArchivedFile { path, mode, data });
    }
    Ok(out)
}

/// What is wrong when the files of an archive are not those its facts
/// list (path, size and sha256 of each, in order); `None` when they are.
pub fn mismatch(files: &[ArchivedFile], facts: &[ConfigFileFacts]) -> Option<String> {
    if files.len() != facts.len() {
        return Some(format!(
            "the archive holds {} files, the facts list {}",
            files.len(),
            facts.len()
        ));
    }
    files.iter().zip(facts).find_map(|(f, x)| {
        let sha = hex::encode(Sha256::digest(&f.data));
        (f.path != Path::new(&x.path) || sha != x.sha256 || f.data.len() as u64 != x.bytes)
            .then(|| format!("{} differs from the facts' {}", f.path.display(), x.path))
    })
}

/// Backs up the configuration: always, whatever the run's sources.
pub async fn backup(ctx: &SourceContext, config: &Config) -> SourceRun {
    timed(async {
        let mut run = SourceRun::failed(SOURCE, ArtifactKind::Config, "");
        let (files, skipped) = collect(config);
        for s in &skipped {
            tracing::warn!(path = %s.path.display(), "left out of the config snapshot: {}", s.why);
        }
        run.captured_at = Some(Utc::now());
        let result = async {
            // Without the configuration file itself the rest is no use.
            if let Some(s) = skipped.iter().find(|s| s.path == absolute(&config.path)) {
                return Err(SourceError::Data(format!(
                    "the configuration file {} could not be read again: {}",
                    s.path.display(),
                    s.why
                )));
            }
            let (tar, facts) =
                archive(&files).map_err(SourceError::io("cannot build the config tar"))?;
            run.facts = Some(SourceFacts::Config { files: facts });
            let key = artifact_key(&ctx.snapshot, SOURCE, ArtifactKind::Config);
            let encoded = ctx
                .encode(&key, pipeline::input_from_bytes(Bytes::from(tar)))
                .await?;
            ctx.finish(&key, encoded, Ok(())).await
        }
        .await;
        run.result = result.map_err(|e| crate::sources::Failed(e.to_string()));
        run
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A configuration in `dir` naming a password file, the signing key
    /// and the identity (as `identity_file`, and once more as a password
    /// file: a mistake that must not put it in a snapshot).
    fn setup(dir: &Path) -> Config {
        let write = |name: &str, body: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let id = age::x25519::Identity::generate();
        let identity = write(
            "identity.txt",
            &format!(
                "{}\n",
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            ),
            0o600,
        );
        write("pg.pw", "hunter2\n", 0o600);
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        write(
            "key.sign",
            &kp.sk.to_box(None).unwrap().into_string(),
            0o600,
        );
        std::fs::create_dir(dir.join("policies")).unwrap();
        write("policies/nightly.toml", "sources = [\"*\"]\n", 0o640);
        let text = format!(
            "policies_dir = \"policies\"\ndrills_dir = \"nodrills\"\n\
             [[repository]]\nname = \"local\"\nurl = \"/var/backups\"\n\
             [encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n\
             [signing]\nkey_file = \"key.sign\"\npublic_key = \"{}\"\n\
             [redis]\nurl = \"redis://127.0.0.1:6379\"\npassword_file = \"identity.txt\"\n\
             [postgres]\nurl = \"postgres://u@127.0.0.1/x\"\npassword_file = \"pg.pw\"\n",
            id.to_public(),
            identity.display(),
            kp.pk.to_base64()
        );
        let path = write("kompose-dr.toml", &text, 0o640);
        Config::load(&path).unwrap()
    }

    #[test]
    fn the_identity_is_never_collected() {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let (files, skipped) = collect(&config);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["kompose-dr.toml", "nightly.toml", "key.sign", "pg.pw"],
            "{skipped:?}"
        );
        assert!(
            files
                .iter()
                .all(|f| !String::from_utf8_lossy(&f.data).contains("AGE-SECRET-KEY"))
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].path.ends_with("identity.txt"));
        assert!(
            skipped[0].why.contains("age identity"),
            "{}",
            skipped[0].why
        );
        let pw = files.iter().find(|f| f.path.ends_with("pg.pw")).unwrap();
        assert!(pw.secret);
        assert_eq!(pw.named_by, "postgres.password_file");
    }

    #[test]
    fn a_copy_of_the_identity_elsewhere_is_left_out_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = setup(dir.path());
        // The identity not configured at all: its content still gives it away.
        config.encryption.as_mut().unwrap().identity_file = None;
        let (files, skipped) = collect(&config);
        assert!(files.iter().all(|f| !f.path.ends_with("identity.txt")));
        assert!(skipped[0].why.contains("age secret key"), "{skipped:?}");
    }

    #[test]
    fn the_archive_reads_back_with_its_facts() {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let (files, _) = collect(&config);
        let (tar, facts) = archive(&files).unwrap();
        let back = read_archive(&tar).unwrap();
        assert_eq!(mismatch(&back, &facts), None);
        assert_eq!(back[0].path, Path::new(&entry_name(&files[0].path)));
        assert!(!back[0].path.is_absolute());
        assert_eq!(back[0].mode, 0o640);
        assert_eq!(back[0].data, files[0].data);
        let mut other = facts.clone();
        other[1].sha256 = "0".repeat(64);
        assert!(mismatch(&back, &other).is_some());
    }

    #[test]
    fn paths_are_made_absolute_and_normal() {
        assert_eq!(
            absolute(Path::new("/etc/a/../b/./c")),
            Path::new("/etc/b/c")
        );
        assert!(absolute(Path::new("x")).is_absolute());
        assert_eq!(
            entry_name(Path::new("/etc/kompose-dr/k.toml")),
            "etc/kompose-dr/k.toml"
        );
    }
}
