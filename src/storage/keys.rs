//! The repository's key layout (docs/DESIGN.md §4): every key kompose-dr
//! reads or writes is built here, from validated parts, never taken from a
//! document in the repository.
//!
//! ```text
//! kompose-dr.json                     marker
//! kompose-dr.json.minisig             its signature (minisign)
//! snapshots/<ID>.json                 manifests (the commit point)
//! snapshots/<ID>.json.minisig         their signatures, written first
//! data/<ID>/<kind>/<name>.<ext>       archives
//! data/<ID>/facts.json.zst.age        encrypted facts sidecar
//! locks/<host>-<pid>-<rand>.json      writer leases (S3)
//! wal/<sysid>/<TL>/<name>.zst.age     archived WAL (docs/DESIGN.md §11)
//! wal/<sysid>/<TL>/<name>.json        its record, written last
//! pruned/<ID>.json                    what one prune removed (signed)
//! ```

use crate::model::manifest::ArtifactKind;

/// Key of the repository marker.
pub const MARKER: &str = "kompose-dr.json";
/// Prefix of every manifest.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of every snapshot's data.
pub const DATA: &str = "data/";
/// Prefix of the writer leases; these objects are never retention-locked.
pub const LOCKS: &str = "locks/";

/// Prefix of prune's records of what it removed.
pub const PRUNED: &str = "pruned/";

/// The key of the record of the prune run `id` (an id of the snapshot-id
/// shape, made when the run started).
pub fn prune_record_key(id: &str) -> String {
    format!("{PRUNED}{id}.json")
}

/// Prefix of the archived WAL.
pub const WAL: &str = "wal/";

/// The prefix of one cluster's archived WAL: `wal/<system identifier>/`.
pub fn wal_cluster_prefix(system_identifier: &str) -> String {
    format!("{WAL}{system_identifier}/")
}

/// The key of an archived WAL file (`name` as PostgreSQL names it); a
/// partial segment's key carries `tag` so that a new shipment never
/// overwrites the one its record names.
pub fn wal_file_key(
    system_identifier: &str,
    timeline: u32,
    name: &str,
    partial_tag: Option<&str>,
) -> String {
    match partial_tag {
        None => format!("{WAL}{system_identifier}/{timeline:08X}/{name}.zst.age"),
        Some(t) => format!("{WAL}{system_identifier}/{timeline:08X}/{name}.partial-{t}.zst.age"),
    }
}

/// The key of an archived WAL file's record: `.partial.json` for the
/// segment being written, `.json` otherwise.
pub fn wal_record_key(system_identifier: &str, timeline: u32, name: &str, partial: bool) -> String {
    let suffix = if partial { ".partial" } else { "" };
    format!("{WAL}{system_identifier}/{timeline:08X}/{name}{suffix}.json")
}

/// The prefix holding one snapshot's data: `data/<ID>/`.
pub fn snapshot_data_prefix(snapshot: &str) -> String {
    format!("{DATA}{snapshot}/")
}

/// The key of an artifact's archive.
pub fn artifact_key(snapshot: &str, source: &str, kind: ArtifactKind) -> String {
    let (dir, name) = source.split_once('/').unwrap_or((source, source));
    let name = path_component(name);
    format!("{DATA}{snapshot}/{dir}/{name}.{}", kind.extension())
}

/// The key of a snapshot's facts sidecar.
pub fn facts_key(snapshot: &str) -> String {
    format!("{DATA}{snapshot}/facts.json.zst.age")
}

/// The key of a snapshot's manifest.
pub fn manifest_key(snapshot: &str) -> String {
    format!("{SNAPSHOTS}{snapshot}.json")
}

/// The key of the detached minisign signature of the object at `key`.
pub fn signature_key(key: &str) -> String {
    format!("{key}.minisig")
}

/// A name made safe as one path component: letters, digits, `-`, `_` and
/// `.` stay; anything else becomes `%XX`.
pub fn path_component(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let id = "20261127T030000Z-abcdef";
        assert_eq!(
            artifact_key(id, "postgres/keycloak", ArtifactKind::PostgresDump),
            "data/20261127T030000Z-abcdef/postgres/keycloak.dump.zst.age"
        );
        assert_eq!(
            artifact_key(id, "postgres/globals", ArtifactKind::PostgresGlobals),
            "data/20261127T030000Z-abcdef/postgres/globals.sql.zst.age"
        );
        assert_eq!(
            artifact_key(id, "redis", ArtifactKind::RedisAof),
            "data/20261127T030000Z-abcdef/redis/redis.tar.zst.age"
        );
        assert_eq!(
            artifact_key(id, "files/traefik-acme", ArtifactKind::File),
            "data/20261127T030000Z-abcdef/files/traefik-acme.zst.age"
        );
        assert_eq!(
            artifact_key(id, "directories/vaultwarden", ArtifactKind::Directory),
            "data/20261127T030000Z-abcdef/directories/vaultwarden.tar.zst.age"
        );
        assert_eq!(path_component("we ird/..db"), "we%20ird%2F..db");
        assert_eq!(path_component(".hidden"), "%2Ehidden");
    }
}
