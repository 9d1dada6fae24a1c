//! A configuration skeleton from snapshots that carry no configuration
//! (written before the `config` source): their manifests name the sources
//! (every source of every snapshot, the newest's path where they differ)
//! and, for files and directories, their paths; the repository, the
//! recipients and the public key are known. What the manifest cannot
//! know (server addresses, passwords, the signing key) is marked `TODO`.

use std::fmt::Write;

use crate::model::config::{Location, RepositoryConfig};
use crate::model::manifest::{ArtifactKind, Manifest};
use crate::model::source_name::SourceName;

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The `[[repository]]` entry bootstrap read.
fn repository(out: &mut String, repo: &RepositoryConfig) {
    out.push_str("[[repository]]\nname = \"offsite\"\n");
    match &repo.location {
        Location::Local(p) => {
            let _ = writeln!(out, "url = {}", quoted(&p.display().to_string()));
        }
        Location::S3(s3) => {
            let url = format!("s3://{}/{}", s3.bucket, s3.prefix.trim_end_matches('/'));
            let _ = writeln!(out, "url = {}", quoted(&url));
            if let Some(e) = &s3.endpoint {
                let _ = writeln!(out, "endpoint = {}", quoted(e));
            }
            let _ = writeln!(out, "region = {}", quoted(&s3.region));
            if s3.path_style {
                out.push_str("path_style = true\n");
            }
            out.push_str(
                "access_key_id_file = \"TODO: a file holding the access key id\"\n\
                 secret_access_key_file = \"TODO: a file holding the secret key\"\n",
            );
        }
    }
}

/// The configuration skeleton for the snapshots `all` (newest first, not
/// empty), read from `repo`.
pub fn from_manifests(
    all: &[Manifest],
    repo: &RepositoryConfig,
    recipients: &[String],
    public_key: &str,
) -> String {
    let Some(newest) = all.first() else {
        return String::new();
    };
    let mut out = format!(
        "# No snapshot carries kompose-dr's configuration (they predate the config source).\n\
         # The newest snapshot is {} (host {}, {}); the sources of every snapshot are below.\n\
         # Complete every TODO, then run `kompose-dr --config FILE doctor`.\n\n",
        newest.id,
        newest.hostname,
        newest
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    repository(&mut out, repo);
    let _ = writeln!(
        out,
        "\n[encryption]\nrecipients = [{}]\nidentity_file = \"TODO: the age identity, 0600\"\n",
        recipients
            .iter()
            .map(|r| quoted(r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "[signing]\npublic_key = {}\nkey_file = \"TODO: the signing key (or `kompose-dr init --generate-key FILE` for a new one)\"\n",
        quoted(public_key)
    );
    sources(&mut out, all);
    out
}

/// The source sections: PostgreSQL's databases, Redis, files and
/// directories.
fn sources(out: &mut String, all: &[Manifest]) {
    let mut artifacts: Vec<&crate::model::manifest::Artifact> = Vec::new();
    for a in all.iter().flat_map(|m| &m.artifacts) {
        if !artifacts.iter().any(|b| b.source == a.source) {
            artifacts.push(a);
        }
    }
    artifacts.sort_by(|a, b| a.source.cmp(&b.source));
    let names: Vec<SourceName> = artifacts
        .iter()
        .filter_map(|a| SourceName::parse(&a.source))
        .collect();
    let dbs: Vec<String> = names
        .iter()
        .filter_map(|n| n.database().map(quoted))
        .collect();
    if names.iter().any(SourceName::is_postgres) {
        let _ = writeln!(
            out,
            "[postgres]\nurl = \"TODO: postgres://USER@HOST:5432/postgres (or container = \\\"NAME\\\")\"\npassword_file = \"TODO\"\ndatabases = [{}]\nglobals = {}\n",
            dbs.join(", "),
            names.contains(&SourceName::PostgresGlobals)
        );
    }
    if names.contains(&SourceName::Redis) {
        out.push_str(
            "[redis]\nurl = \"TODO: redis://HOST:6379 (or container = \\\"NAME\\\")\"\n\n",
        );
    }
    for a in artifacts {
        let path = a.file.as_ref().map(|f| f.path.as_str());
        match (SourceName::parse(&a.source), a.kind) {
            (Some(SourceName::File(name)), ArtifactKind::File) => {
                let _ = writeln!(
                    out,
                    "[[files]]\nname = {}\npath = {}\n",
                    quoted(&name),
                    quoted(path.unwrap_or("TODO"))
                );
            }
            (Some(SourceName::Directory(name)), ArtifactKind::Directory) => {
                let place = match path.and_then(|p| p.strip_prefix("volume:")) {
                    Some(v) => format!("volume = {}", quoted(v)),
                    None => format!("path = {}", quoted(path.unwrap_or("TODO"))),
                };
                let _ = writeln!(out, "[[directories]]\nname = {}\n{place}\n", quoted(&name));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::FileMeta;
    use crate::model::manifest::fixtures::{artifact, manifest, t};

    #[test]
    fn the_skeleton_names_every_source_and_path() {
        let mut acme = artifact("files/acme", "2026-01-01T00:00:00Z", true);
        acme.file = Some(FileMeta {
            path: "/srv/traefik/acme.json".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: t("2026-01-01T00:00:00Z"),
        });
        let mut vw = artifact("directories/vaultwarden", "2026-01-01T00:00:00Z", true);
        vw.file = Some(FileMeta {
            path: "volume:vw-data".into(),
            ..acme.file.clone().unwrap()
        });
        let m = manifest(
            "20260101T000000Z-000000",
            "2026-01-01T00:00:00Z",
            vec![
                artifact("postgres/globals", "2026-01-01T00:00:00Z", true),
                artifact("postgres/umami", "2026-01-01T00:00:00Z", true),
                artifact("redis", "2026-01-01T00:00:00Z", true),
                acme,
                vw,
            ],
        );
        let repo =
            RepositoryConfig::from_flags("x", "/var/backups/kdr", None, None, false).unwrap();
        let text = from_manifests(&[m], &repo, &["age1abc".into()], "RWQ");
        for want in [
            "20260101T000000Z-000000",
            "databases = [\"umami\"]",
            "globals = true",
            "[redis]",
            "path = \"/srv/traefik/acme.json\"",
            "volume = \"vw-data\"",
            "url = \"/var/backups/kdr\"",
            "recipients = [\"age1abc\"]",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        // It parses as TOML.
        toml::from_str::<toml::Value>(&text).unwrap();
    }
}
