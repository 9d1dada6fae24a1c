//! What bootstrap tells the operator after writing the configuration: the
//! paths it names outside DIR (it rewrites none of them), with what to do
//! about each, and the commands to run next.
//!
//! Relative paths in the configuration resolve from its own folder, which
//! bootstrap restored with everything else, so they need nothing. Absolute
//! ones still point where they pointed on the old host: a restored secret
//! file must be copied there (or the key edited), the identity installed
//! from its offline copy, a directory created, a lost local repository
//! re-created by `init`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Written;

/// One path of the configuration outside DIR.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outside {
    /// The key that names it (`postgres.password_file`,
    /// `repository[0].url`, `policies_dir (default)`).
    pub key: String,
    /// The path, as the configuration names it.
    pub path: String,
    /// What to do.
    pub action: String,
}

/// The keys whose values are paths (besides a local repository's `url`).
fn is_path_key(name: &str) -> bool {
    name.ends_with("_file") || name.ends_with("_dir")
}

/// Every string value of `v` under a path key, with its dotted key.
fn path_values(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::String(s)
                        if is_path_key(k) || (prefix.starts_with("repository[") && k == "url") =>
                    {
                        out.push((key, s.clone()));
                    }
                    _ => path_values(&key, v, out),
                }
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path_values(&format!("{prefix}[{i}]"), v, out);
            }
        }
        _ => {}
    }
}

/// What to do about `key = path` (absolute), given the files written.
fn action(key: &str, path: &str, dir: &Path, written: &[Written]) -> Option<String> {
    if key == "encryption.identity_file" {
        return Some(format!(
            "the age identity is never in a snapshot: install your offline copy there (install -D -m 0600 IDENTITY {path}), or edit {key}"
        ));
    }
    if key.starts_with("repository[") && key.ends_with(".url") {
        if path.contains("://") && !path.starts_with("file://") {
            return None;
        }
        return Some(format!(
            "the local repository: if it was lost with the host, `kompose-dr init` re-creates it (empty; restore from the offsite one); or edit {key}"
        ));
    }
    let restored = dir.join(path.trim_start_matches('/'));
    if let Some(w) = written.iter().find(|w| w.path == restored) {
        return Some(format!(
            "restored as {}: copy it there (install -D -m {:04o} {} {path}) or point {key} at it",
            w.path.display(),
            w.mode,
            w.path.display()
        ));
    }
    if key.ends_with("_dir") && restored.is_dir() {
        return Some(format!(
            "restored under {}: copy it there (cp -a {} {path}) or point {key} at it",
            restored.display(),
            restored.display()
        ));
    }
    if key.ends_with("_dir") {
        return Some(format!(
            "create it (install -d -m 0700 {path}) or edit {key}"
        ));
    }
    Some(format!(
        "not in the snapshot: put the file there, or edit {key}"
    ))
}

/// The paths of the configuration at `config` (written under `dir`)
/// that point outside `dir`, and the commands to run next; `url` is what
/// `--repository` said.
pub fn review(
    config: &Path,
    dir: &Path,
    written: &[Written],
    url: &str,
) -> (Vec<Outside>, Vec<String>) {
    let doc: toml::Value = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or(toml::Value::Table(toml::Table::new()));
    let mut values = Vec::new();
    path_values("", &doc, &mut values);
    let mut outside: Vec<Outside> = values
        .iter()
        .filter(|(_, p)| p.starts_with('/') || p.starts_with("file://") || p.contains("${"))
        .filter_map(|(key, p)| {
            let action = if p.contains("${") {
                Some(format!(
                    "it expands from the environment: set the variable (or env_file) before running, or edit {key}"
                ))
            } else {
                action(key, p.trim_start_matches("file://"), dir, written)
            };
            action.map(|action| Outside {
                key: key.clone(),
                path: p.clone(),
                action,
            })
        })
        .collect();
    outside.extend(default_dirs(&doc, dir, written));
    outside.extend(credentials(written, &outside));
    let next = next_commands(config, &doc, url);
    (outside, next)
}

/// The policies and drills restored from a default directory the
/// configuration does not name.
fn default_dirs(doc: &toml::Value, dir: &Path, written: &[Written]) -> Vec<Outside> {
    let mut out = Vec::new();
    for key in ["policies_dir", "drills_dir"] {
        if doc.get(key).is_some() {
            continue;
        }
        let Some(w) = written.iter().find(|w| w.named_by == key) else {
            continue;
        };
        let original = w.original.parent().unwrap_or(Path::new("/"));
        let restored = dir.join(original.strip_prefix("/").unwrap_or(original));
        out.push(Outside {
            key: format!("{key} (default)"),
            path: original.display().to_string(),
            action: format!(
                "restored under {}: copy it there (cp -a {} {}) or set {key} = \"{}\"",
                restored.display(),
                restored.display(),
                original.display(),
                restored.display()
            ),
        });
    }
    out
}

/// The files read as systemd credentials (`*_credential`, or a path under
/// `/run/credentials/`, `$CREDENTIALS_DIRECTORY` as the unit saw it) that
/// no entry lists yet: they go where the units' `LoadCredential=` reads
/// them.
fn credentials(written: &[Written], listed: &[Outside]) -> Vec<Outside> {
    written
        .iter()
        .filter(|w| {
            w.named_by.ends_with("_credential") || w.original.starts_with("/run/credentials")
        })
        .filter(|w| !listed.iter().any(|o| Path::new(&o.path) == w.original))
        .map(|w| {
            let name = w.original.file_name().unwrap_or_default().to_string_lossy();
            Outside {
                key: w.named_by.clone(),
                path: w.original.display().to_string(),
                action: format!(
                    "a systemd credential as the service saw it: install {} where the units' LoadCredential={name}:… reads it \
                     (the shipped units: /etc/kompose-dr/credentials/{name}, root 0600; secrets.env: /opt/kompose/secrets.env)",
                    w.path.display()
                ),
            }
        })
        .collect()
}

/// The repository of the configuration that `url` names (`s3://b/p` or
/// a path), else the first S3 one, else the first.
fn repository_name(doc: &toml::Value, url: &str) -> String {
    let repos: Vec<(&str, &str)> = doc
        .get("repository")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| Some((r.get("name")?.as_str()?, r.get("url")?.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let norm = |u: &str| {
        let u = u.trim_start_matches("file://").trim_end_matches('/');
        if u.starts_with("s3://") {
            u.to_owned()
        } else {
            crate::sources::config::absolute(Path::new(u))
                .display()
                .to_string()
        }
    };
    repos
        .iter()
        .find(|(_, u)| norm(u) == norm(url))
        .or_else(|| repos.iter().find(|(_, u)| u.starts_with("s3://")))
        .or(repos.first())
        .map_or_else(|| "NAME".to_owned(), |(n, _)| (*n).to_owned())
}

/// The commands to run next, with the restored configuration.
fn next_commands(config: &Path, doc: &toml::Value, url: &str) -> Vec<String> {
    let c = config.display();
    let mut next = vec![format!(
        "kompose-dr --config {c} doctor    # after the paths above are in place"
    )];
    let local: Vec<PathBuf> = doc
        .get("repository")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("url")?.as_str())
                .filter(|u| !u.contains("://") || u.starts_with("file://"))
                .map(|u| PathBuf::from(u.trim_start_matches("file://")))
                .collect()
        })
        .unwrap_or_default();
    if !local.is_empty() {
        next.push(format!(
            "kompose-dr --config {c} init    # re-creates a lost local repository ({})",
            local
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    next.push(format!(
        "kompose-dr --config {c} restore --repository {} --yes",
        repository_name(doc, url)
    ));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_listed_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("boot");
        let cfg = root.join("etc/kompose-dr/kompose-dr.toml");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(
            &cfg,
            "state_dir = \"/var/lib/kompose-dr\"\n\
             [[repository]]\nname = \"local\"\nurl = \"/var/backups/kdr\"\n\
             [[repository]]\nname = \"offsite\"\nurl = \"s3://bucket/kdr\"\n\
             [encryption]\nrecipients = []\nidentity_file = \"/etc/kompose-dr/identity.txt\"\n\
             [postgres]\npassword_file = \"/etc/kompose-dr/secrets/pg\"\n\
             [redis]\npassword_file = \"secrets/redis\"\n",
        )
        .unwrap();
        let written = vec![Written {
            path: root.join("etc/kompose-dr/secrets/pg"),
            original: "/etc/kompose-dr/secrets/pg".into(),
            named_by: "postgres.password_file".into(),
            secret: true,
            mode: 0o600,
        }];
        let (outside, next) = review(&cfg, &root, &written, "s3://bucket/kdr/");
        let keys: Vec<&str> = outside.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "encryption.identity_file",
                "postgres.password_file",
                "repository[0].url",
                "state_dir"
            ],
            "{outside:?}"
        );
        assert!(
            outside[1].action.contains("install -D -m 0600"),
            "{outside:?}"
        );
        assert!(outside[0].action.contains("never in a snapshot"));
        assert!(outside[2].action.contains("kompose-dr init"));
        assert!(outside[3].action.contains("install -d"));
        assert!(
            next[2].ends_with("restore --repository offsite --yes"),
            "{next:?}"
        );
        assert!(next[1].contains("init"), "{next:?}");
    }

    #[test]
    fn a_systemd_credential_is_named_with_where_the_units_read_it() {
        let written = vec![Written {
            path: "/boot/run/credentials/kompose-dr-backup.service/db_password".into(),
            original: "/run/credentials/kompose-dr-backup.service/db_password".into(),
            named_by: "postgres.password_credential".into(),
            secret: true,
            mode: 0o600,
        }];
        let found = credentials(&written, &[]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].action.contains("LoadCredential=db_password")
                && found[0]
                    .action
                    .contains("/etc/kompose-dr/credentials/db_password"),
            "{found:?}"
        );
    }
}
