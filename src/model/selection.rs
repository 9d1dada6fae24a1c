//! Selecting sources by name: `--source` arguments, a policy's `sources`
//! and a drill's `sources` are names or globs (`postgres/*`) matched
//! against source names (`postgres/<db>`, `redis`, `files/<name>`).

use super::source_name::SourceName;
use crate::error::InvalidInput;

pub use super::source_name::{is_name, is_source_name};

/// The source name of database `db`: `postgres/<db>`, except that a
/// database named `globals` (which would be the roles' `postgres/globals`),
/// `cluster` (the base backups' `postgres/cluster`) or starting with `~` gets one `~` in front (`postgres/~globals`), so
/// every database has a name of its own.
pub fn database_source(db: &str) -> String {
    SourceName::PostgresDatabase(db.to_owned()).to_string()
}

/// The database a `postgres/…` source name (other than `postgres/globals`)
/// stands for: the inverse of [`database_source`].
pub fn source_database(source: &str) -> Option<&str> {
    let name = source.strip_prefix("postgres/")?;
    if source == SourceName::POSTGRES_GLOBALS || source == SourceName::POSTGRES_CLUSTER {
        return None;
    }
    Some(name.strip_prefix('~').unwrap_or(name))
}

/// Compiles `--source` patterns (names or globs such as `postgres/*`).
pub fn matcher(patterns: &[String]) -> Result<Option<globset::GlobSet>, InvalidInput> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| InvalidInput(format!("--source {p}: {e}")))?,
        );
    }
    b.build().map(Some).map_err(|e| InvalidInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_named_globals_does_not_take_the_roles_name() {
        for db in ["keycloak", "globals", "~globals", "~", "glob~als"] {
            let s = database_source(db);
            assert_ne!(s, "postgres/globals");
            assert_eq!(source_database(&s), Some(db), "{s}");
            assert!(is_source_name(&s), "{s}");
        }
        assert_eq!(database_source("globals"), "postgres/~globals");
        assert_eq!(source_database("postgres/globals"), None);
    }

    #[test]
    fn only_source_names_kompose_dr_writes_are_accepted() {
        for good in [
            "redis",
            "postgres/globals",
            "postgres/Keycloak DB",
            "files/traefik-acme",
        ] {
            assert!(is_source_name(good), "{good}");
        }
        for bad in [
            "",
            "postgres/",
            "postgres/..",
            "postgres/a/b",
            "postgres/a\nb",
            "files/../../etc/passwd",
            "files/.hidden",
            "files/",
            "redis/x",
            "../redis",
            "mysql/a",
        ] {
            assert!(!is_source_name(bad), "{bad:?}");
        }
        assert!(!is_source_name(&format!("postgres/{}", "x".repeat(64))));
    }

    #[test]
    fn globs_match_source_names() {
        let m = matcher(&["postgres/*".into(), "redis".into()])
            .unwrap()
            .unwrap();
        assert!(m.is_match("postgres/keycloak"));
        assert!(m.is_match("redis"));
        assert!(!m.is_match("files/acme"));
        assert!(matcher(&[]).unwrap().is_none());
    }
}
