//! Nothing read from a repository is trusted: anyone who can write to the
//! store can write anything there. Before a manifest is used its every
//! field that a reader acts on is checked against what kompose-dr itself
//! would have written — the id is the file's stem and has the id's shape,
//! every key is the one kompose-dr builds for that snapshot and source
//! (never taken as a path), source names follow the grammar, kinds match
//! their sources, digests are digests — and documents are bounded in size.
//! A manifest that fails is reported as damaged, never used. These are
//! real checks in release builds, not debug assertions.

use std::collections::BTreeSet;

use crate::model::manifest::{Artifact, ArtifactKind, Manifest};
use crate::model::selection::is_source_name;
use crate::model::time::is_snapshot_id;
use crate::storage::keys;

/// The largest manifest or marker read: far above any real one (a few KiB
/// per source), far below what would hurt.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// What in a document read from the repository is not as kompose-dr
/// writes it (the message names the field and what is wrong with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks the marker (`kompose-dr.json`, `size` bytes): kompose-dr's
/// format, and between 1 and 64 recipients that are age public keys.
pub fn marker(m: &super::Marker, size: usize) -> Result<(), Invalid> {
    if size as u64 > MAX_DOCUMENT {
        return Err(Invalid(format!(
            "{size} bytes is more than any marker kompose-dr writes"
        )));
    }
    if m.format != "kompose-dr" {
        return Err(Invalid(format!(
            "format `{}` is not kompose-dr's",
            m.format.escape_debug()
        )));
    }
    if m.recipients.is_empty() || m.recipients.len() > 64 {
        return Err(Invalid(format!(
            "{} recipients: kompose-dr writes 1 to 64",
            m.recipients.len()
        )));
    }
    for r in &m.recipients {
        if r.parse::<age::x25519::Recipient>().is_err() {
            return Err(Invalid(format!(
                "`{}` is not an age recipient",
                r.escape_debug()
            )));
        }
    }
    if let Some(legacy) = &m.legacy {
        if legacy.len() > super::listing::MAX_MANIFESTS {
            return Err(Invalid(format!(
                "{} snapshots written before stack ids is more than a repository holds",
                legacy.len()
            )));
        }
        if let Some(bad) = legacy.iter().find(|id| !is_snapshot_id(id)) {
            return Err(Invalid(format!(
                "`{}` is not a snapshot id",
                bad.escape_debug()
            )));
        }
    }
    match &m.stack {
        Some(s) if !super::stack::is_stack_id(s) => {
            return Err(Invalid(format!(
                "its stack `{}` is not a stack id",
                s.escape_debug()
            )));
        }
        None if m.version >= 2 => {
            return Err(Invalid(format!(
                "format version {} names no stack",
                m.version
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Checks a manifest read from `key` (`snapshots/<ID>.json`); the error
/// says what is wrong, for the operator.
pub fn manifest(m: &Manifest, key: &str) -> Result<(), Invalid> {
    let stem = key
        .strip_prefix(keys::SNAPSHOTS)
        .and_then(|k| k.strip_suffix(".json"))
        .unwrap_or_default();
    if !is_snapshot_id(stem) {
        return Err(Invalid(format!(
            "the file name is not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxx): {key}"
        )));
    }
    if m.id != stem {
        return Err(Invalid(format!(
            "its id `{}` is not its file name `{stem}`",
            m.id.escape_debug()
        )));
    }
    if let Some(stack) = &m.stack
        && !super::stack::is_stack_id(stack)
    {
        return Err(Invalid(format!(
            "its stack `{}` is not a stack id",
            stack.escape_debug()
        )));
    }
    if let Some(p) = &m.previous
        && !(is_snapshot_id(p) && p.get(..16) <= m.id.get(..16) && *p != m.id)
    {
        return Err(Invalid(format!(
            "its predecessor `{}` is not the id of an older snapshot",
            p.escape_debug()
        )));
    }
    if !m.artifacts.iter().any(|a| a.is_ok()) {
        return Err(Invalid(
            "it names no good artifact, and kompose-dr commits none such".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    for a in &m.artifacts {
        artifact(&m.id, a, &mut seen)?;
    }
    if let Some(f) = &m.facts {
        let expected = keys::facts_key(&m.id);
        if f.path != expected {
            return Err(Invalid(format!(
                "the facts sidecar is `{}`, not `{expected}`",
                f.path.escape_debug()
            )));
        }
        if !is_sha256(&f.sha256) {
            return Err(Invalid("the facts sidecar's digest is not a sha256".into()));
        }
    }
    Ok(())
}

/// Checks one artifact of snapshot `id`: its source (once in `seen`), its
/// kind, its key and its digest.
fn artifact<'m>(id: &str, a: &'m Artifact, seen: &mut BTreeSet<&'m str>) -> Result<(), Invalid> {
    let source = a.source.escape_debug().to_string();
    if !is_source_name(&a.source) {
        return Err(Invalid(format!(
            "`{source}` is not a source name kompose-dr writes"
        )));
    }
    if !seen.insert(a.source.as_str()) {
        return Err(Invalid(format!("source `{source}` is listed twice")));
    }
    if !kind_fits(&a.source, a.kind) {
        return Err(Invalid(format!(
            "source `{source}` cannot hold an artifact of kind {:?}",
            a.kind
        )));
    }
    if let Some(path) = &a.path {
        let expected = keys::artifact_key(id, &a.source, a.kind);
        if *path != expected {
            return Err(Invalid(format!(
                "source `{source}` names the archive `{}`, not `{expected}`",
                path.escape_debug()
            )));
        }
    }
    if let Some(sha) = &a.sha256
        && !is_sha256(sha)
    {
        return Err(Invalid(format!(
            "source `{source}`: `{}` is not a sha256",
            sha.escape_debug()
        )));
    }
    if let Some(p) = &a.pieces
        && (!crate::model::manifest::Pieces::SIZES.contains(&p.bytes)
            || p.sha256.len() > crate::model::manifest::Pieces::MAX
            || p.sha256.len() as u64 != p.count_for(a.stored_bytes)
            || !p.sha256.iter().all(|s| is_sha256(s)))
    {
        return Err(Invalid(format!(
            "source `{source}`: the digests of its archive's pieces ({} of {} bytes) do not fit its {} stored bytes",
            p.sha256.len(),
            p.bytes,
            a.stored_bytes
        )));
    }
    if a.is_ok() && (a.path.is_none() || a.sha256.is_none()) {
        return Err(Invalid(format!(
            "source `{source}` is ok but names no archive or digest"
        )));
    }
    Ok(())
}

/// Whether an artifact of `kind` can belong to `source`.
fn kind_fits(source: &str, kind: ArtifactKind) -> bool {
    match kind {
        ArtifactKind::PostgresGlobals => source == "postgres/globals",
        ArtifactKind::PostgresDump => {
            // A database named `cluster` was `postgres/cluster` before base
            // backups took the name; the kind tells them apart.
            source.starts_with("postgres/") && source != "postgres/globals"
        }
        ArtifactKind::PostgresCluster => source == "postgres/cluster",
        ArtifactKind::RedisAof | ArtifactKind::RedisRdb => source == "redis",
        ArtifactKind::File => source.starts_with("files/"),
        ArtifactKind::Directory => source.starts_with("directories/"),
        ArtifactKind::Config => source == crate::model::source_name::SourceName::CONFIG,
    }
}

pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::Pieces;
    use crate::model::manifest::fixtures::{artifact, manifest as fixture};

    const ID: &str = "20261127T030000Z-abcdef";

    fn good() -> Manifest {
        let mut a = artifact("postgres/app", "2026-11-27T03:00:00Z", true);
        a.path = Some(keys::artifact_key(
            ID,
            "postgres/app",
            ArtifactKind::PostgresDump,
        ));
        a.sha256 = Some("0".repeat(64));
        fixture(ID, "2026-11-27T03:00:00Z", vec![a])
    }

    #[test]
    fn a_marker_must_be_kompose_drs_with_age_recipients() {
        let r = age::x25519::Identity::generate().to_public().to_string();
        let m = |format: &str, recipients: Vec<String>| crate::repository::Marker {
            format: format.into(),
            version: 1,
            created_at: chrono::Utc::now(),
            recipients,
            stack: None,
            legacy: None,
        };
        assert!(marker(&m("kompose-dr", vec![r.clone()]), 300).is_ok());
        let v2 = |stack: Option<&str>| crate::repository::Marker {
            version: 2,
            stack: stack.map(str::to_owned),
            ..m("kompose-dr", vec![r.clone()])
        };
        assert!(marker(&v2(Some(&crate::repository::stack::new_id())), 300).is_ok());
        assert!(
            marker(&v2(None), 300).is_err(),
            "a version 2 marker names its stack"
        );
        assert!(marker(&v2(Some("../x")), 300).is_err());
        assert!(marker(&m("restic", vec![r.clone()]), 300).is_err());
        assert!(marker(&m("kompose-dr", vec![]), 300).is_err());
        assert!(marker(&m("kompose-dr", vec!["age1nonsense".into()]), 300).is_err());
        assert!(marker(&m("kompose-dr", vec![r]), 5 << 20).is_err());
    }

    fn key() -> String {
        keys::manifest_key(ID)
    }

    #[test]
    fn a_manifest_kompose_dr_wrote_passes() {
        manifest(&good(), &key()).unwrap();
    }

    #[test]
    fn every_forged_field_is_named() {
        type Forge = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Forge)> = vec![
            ("its id", Box::new(|m| m.id = "../../victim".into())),
            (
                "not a source name",
                Box::new(|m| m.artifacts[0].source = "files/../../x".into()),
            ),
            (
                "names the archive",
                Box::new(|m| m.artifacts[0].path = Some("/etc/shadow".into())),
            ),
            (
                "names the archive",
                Box::new(|m| {
                    m.artifacts[0].path = Some(keys::artifact_key(
                        "20250101T000000Z-000000",
                        "postgres/app",
                        ArtifactKind::PostgresDump,
                    ))
                }),
            ),
            (
                "cannot hold",
                Box::new(|m| m.artifacts[0].kind = ArtifactKind::PostgresGlobals),
            ),
            (
                "not a sha256",
                Box::new(|m| m.artifacts[0].sha256 = Some("x".into())),
            ),
            (
                "do not fit",
                Box::new(|m| {
                    m.artifacts[0].pieces = Some(Pieces {
                        bytes: 4096,
                        sha256: vec!["0".repeat(64); 2],
                    })
                }),
            ),
            (
                "do not fit",
                Box::new(|m| {
                    m.artifacts[0].pieces = Some(Pieces {
                        bytes: 1,
                        sha256: vec!["0".repeat(64); 5],
                    })
                }),
            ),
            (
                "do not fit",
                Box::new(|m| {
                    m.artifacts[0].pieces = Some(Pieces {
                        bytes: 4096,
                        sha256: vec!["x".into()],
                    })
                }),
            ),
            (
                "listed twice",
                Box::new(|m| {
                    let a = m.artifacts[0].clone();
                    m.artifacts.push(a)
                }),
            ),
        ];
        for (want, forge) in cases {
            let mut m = good();
            forge(&mut m);
            let e = manifest(&m, &key()).unwrap_err();
            assert!(e.0.contains(want), "{want}: {e}");
        }
        // Digests that fit are taken.
        let mut m = good();
        m.artifacts[0].pieces = Some(Pieces {
            bytes: 4096,
            sha256: vec!["0".repeat(64)],
        });
        manifest(&m, &key()).unwrap();
    }

    #[test]
    fn a_file_name_that_is_not_an_id_is_refused() {
        let e = manifest(&good(), "snapshots/..%2F..%2Fvictim.json").unwrap_err();
        assert!(e.0.contains("not a snapshot id"), "{e}");
    }
}
