//! Selecting sources by name: `--source` arguments, a policy's `sources`
//! and a drill's `sources` are names or globs (`postgres/*`) matched
//! against source names (`postgres/<db>`, `redis`, `files/<name>`).

use crate::error::InvalidInput;

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
/// `redis`, or `files/<name>` with a name [`is_name`] accepts. Anything
/// else read from a repository is refused.
pub fn is_source_name(s: &str) -> bool {
    if s == "redis" {
        return true;
    }
    if let Some(name) = s.strip_prefix("files/") {
        return is_name(name);
    }
    if let Some(db) = s.strip_prefix("postgres/") {
        return !db.is_empty()
            && db.len() <= 63
            && db != "."
            && db != ".."
            && !db.contains('/')
            && !db.chars().any(char::is_control);
    }
    false
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
