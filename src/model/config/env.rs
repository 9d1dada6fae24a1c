//! `${VAR}` expansion and `KEY=value` env files.
//!
//! Values in the configuration may reference variables as `${NAME}` or
//! `${NAME:-default}`; `$$` is a literal `$`. A variable is looked up in the
//! process environment first, then in the `env_file` (the same precedence
//! as Docker Compose gives the shell over `.env`).

use std::collections::HashMap;
use std::path::Path;

/// Variables available to `${VAR}` expansion.
#[derive(Debug, Default, Clone)]
pub struct Vars {
    file: HashMap<String, String>,
}

/// Why a value could not be expanded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${NAME}` names a variable that is set nowhere.
    #[error("variable `{0}` is not set in the environment or env_file")]
    Unset(String),
    /// `${` without its `}`, or an empty or malformed name.
    #[error(
        "malformed variable reference `{0}` (write ${{NAME}}, ${{NAME:-default}}, or $$ for a literal $)"
    )]
    Malformed(String),
}

impl Vars {
    /// Variables from the process environment only.
    pub fn from_env() -> Self {
        Vars::default()
    }

    /// Adds the variables of an env file's text.
    pub fn with_env_file_text(mut self, text: &str) -> Result<Self, (usize, String)> {
        self.file = parse_env_file(text)?;
        Ok(self)
    }

    fn lookup(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.file.get(name).cloned())
    }

    /// Expands every `${…}` reference in `input`.
    pub fn expand(&self, input: &str) -> Result<String, ExpandError> {
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| ExpandError::Malformed(format!("${{{body}")))?;
                let inner = &body[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ExpandError::Malformed(format!("${{{inner}}}")));
                }
                match (self.lookup(name), default) {
                    (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                    (_, Some(d)) => out.push_str(d),
                    (None, None) => return Err(ExpandError::Unset(name.to_owned())),
                    (Some(v), None) => out.push_str(&v),
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Parses `KEY=value` lines: blank lines and `#` comments are skipped, an
/// optional `export ` prefix is allowed, and matching single or double quotes
/// around the value are removed. Errors carry the 1-based line number.
pub fn parse_env_file(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut vars = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, "expected KEY=value".to_owned()));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, format!("`{key}` is not a variable name")));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            value
        };
        vars.insert(key.to_owned(), value.to_owned());
    }
    Ok(vars)
}

/// Reads a secret from a file, trimming one trailing newline.
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let mut s = std::fs::read_to_string(path)?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vars {
        Vars::from_env().with_env_file_text(text).unwrap()
    }

    #[test]
    fn expands_from_env_file_and_defaults() {
        let v = vars("# comment\nexport DB_PASSWORD='s3cret'\nEMPTY=\n");
        assert_eq!(v.expand("pw=${DB_PASSWORD}").unwrap(), "pw=s3cret");
        assert_eq!(v.expand("${KDR_TEST_NOPE:-x}").unwrap(), "x");
        assert_eq!(v.expand("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(v.expand("${EMPTY}").unwrap(), "");
        assert_eq!(v.expand("a$$b $c").unwrap(), "a$b $c");
    }

    #[test]
    fn reports_unset_and_malformed() {
        let v = vars("");
        assert_eq!(
            v.expand("${KDR_TEST_UNSET_VAR}"),
            Err(ExpandError::Unset("KDR_TEST_UNSET_VAR".into()))
        );
        assert!(matches!(v.expand("${OPEN"), Err(ExpandError::Malformed(_))));
        assert!(matches!(v.expand("${a b}"), Err(ExpandError::Malformed(_))));
    }

    #[test]
    fn env_file_errors_name_the_line() {
        assert_eq!(parse_env_file("A=1\nnonsense\n").unwrap_err().0, 2);
    }
}
