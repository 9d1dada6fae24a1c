//! [`SourceName`]: a source's name as manifests, archive keys, `--source`
//! and messages spell it (`postgres/globals`, `postgres/<db>`, `redis`,
//! `files/<name>`, `directories/<name>`), typed so that code builds and
//! matches names by variant instead of by hand-written strings. It
//! serialises as the same string, so the manifest's format is unchanged.

use std::fmt;

/// A name kompose-dr accepts for a repository or a `[[files]]` entry: 1 to
/// 64 of letters, digits, `-`, `_` and `.`, not starting with `.` — so it is
/// always one harmless path component.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
}

/// Whether `s` is a source name kompose-dr could have written:
/// `postgres/globals`, `postgres/<database>` (a PostgreSQL identifier of at
/// most 63 bytes without `/` or control characters, not `.` or `..`),
/// `redis`, or `files/<name>` or `directories/<name>` with a name
/// [`is_name`] accepts. Anything
/// else read from a repository is refused.
pub fn is_source_name(s: &str) -> bool {
    if s == "redis" || s == SourceName::CONFIG {
        return true;
    }
    if let Some(name) = s.strip_prefix("files/") {
        return is_name(name);
    }
    if let Some(name) = s.strip_prefix("directories/") {
        return is_name(name);
    }
    if let Some(db) = s.strip_prefix("postgres/") {
        let db = db.strip_prefix('~').unwrap_or(db);
        return !db.is_empty()
            && db.len() <= 63
            && db != "."
            && db != ".."
            && !db.contains('/')
            && !db.chars().any(char::is_control);
    }
    false
}

/// A source's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceName {
    /// `postgres/globals`: roles and tablespaces (`pg_dumpall --globals-only`).
    PostgresGlobals,
    /// `postgres/cluster`: the server's base backups.
    PostgresCluster,
    /// `postgres/<db>`: one database, holding its name as the server spells
    /// it. Written with a `~` in front of `globals`, `cluster` and names
    /// starting with `~`, so every database has a name of its own.
    PostgresDatabase(String),
    /// `redis`.
    Redis,
    /// `files/<name>`: one `[[files]]` entry.
    File(String),
    /// `directories/<name>`: one `[[directories]]` entry.
    Directory(String),
    /// `config`: kompose-dr's own configuration and the files it names.
    Config,
}

impl SourceName {
    /// The name of the roles' and tablespaces' source.
    pub const POSTGRES_GLOBALS: &'static str = "postgres/globals";
    /// The name of the base backups' source.
    pub const POSTGRES_CLUSTER: &'static str = "postgres/cluster";
    /// The name of the Redis source.
    pub const REDIS: &'static str = "redis";
    /// The name of kompose-dr's own configuration's source.
    pub const CONFIG: &'static str = "config";

    /// The name `s` stands for, if it is one kompose-dr could have written
    /// ([`is_source_name`]).
    pub fn parse(s: &str) -> Option<SourceName> {
        if !is_source_name(s) {
            return None;
        }
        Some(match s {
            Self::POSTGRES_GLOBALS => SourceName::PostgresGlobals,
            Self::POSTGRES_CLUSTER => SourceName::PostgresCluster,
            Self::REDIS => SourceName::Redis,
            Self::CONFIG => SourceName::Config,
            _ => {
                if let Some(n) = s.strip_prefix("files/") {
                    SourceName::File(n.to_owned())
                } else if let Some(n) = s.strip_prefix("directories/") {
                    SourceName::Directory(n.to_owned())
                } else {
                    let db = s.strip_prefix("postgres/")?;
                    SourceName::PostgresDatabase(db.strip_prefix('~').unwrap_or(db).to_owned())
                }
            }
        })
    }

    /// The database a `postgres/<db>` name stands for.
    pub fn database(&self) -> Option<&str> {
        match self {
            SourceName::PostgresDatabase(db) => Some(db),
            _ => None,
        }
    }

    /// Whether the source is PostgreSQL's (globals, cluster or a database).
    pub fn is_postgres(&self) -> bool {
        matches!(
            self,
            SourceName::PostgresGlobals
                | SourceName::PostgresCluster
                | SourceName::PostgresDatabase(_)
        )
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceName::PostgresGlobals => f.write_str(Self::POSTGRES_GLOBALS),
            SourceName::PostgresCluster => f.write_str(Self::POSTGRES_CLUSTER),
            SourceName::PostgresDatabase(db)
                if db == "globals" || db == "cluster" || db.starts_with('~') =>
            {
                write!(f, "postgres/~{db}")
            }
            SourceName::PostgresDatabase(db) => write!(f, "postgres/{db}"),
            SourceName::Redis => f.write_str(Self::REDIS),
            SourceName::File(n) => write!(f, "files/{n}"),
            SourceName::Directory(n) => write!(f, "directories/{n}"),
            SourceName::Config => f.write_str(Self::CONFIG),
        }
    }
}

impl From<SourceName> for String {
    fn from(n: SourceName) -> String {
        n.to_string()
    }
}

impl serde::Serialize for SourceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SourceName, D::Error> {
        let s = String::deserialize(d)?;
        SourceName::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a source name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_text() {
        for s in [
            "postgres/globals",
            "postgres/cluster",
            "postgres/app",
            "postgres/~globals",
            "postgres/~cluster",
            "postgres/~~x",
            "redis",
            "files/acme",
            "directories/uploads",
        ] {
            let n = SourceName::parse(s).unwrap();
            assert_eq!(n.to_string(), s);
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<SourceName>(&json).unwrap(), n);
        }
        assert_eq!(
            SourceName::parse("postgres/~globals").unwrap().database(),
            Some("globals")
        );
        assert_eq!(
            SourceName::parse("postgres/globals").unwrap().database(),
            None
        );
        assert!(SourceName::parse("postgres/").is_none());
        assert!(SourceName::parse("files/../x").is_none());
        assert!(SourceName::parse("nonsense").is_none());
    }
}
