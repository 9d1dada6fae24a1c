//! Selecting sources by name: `--source` arguments, a policy's `sources`
//! and a drill's `sources` are names or globs (`postgres/*`) matched
//! against source names (`postgres/<db>`, `redis`, `files/<name>`).

use crate::error::InvalidInput;

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
