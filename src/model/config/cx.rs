//! The validation context shared by every section's validator.
//!
//! [`Cx`] holds what a validator needs besides the raw value: the source text
//! (to turn a byte span into a line number), the file's path (for error
//! messages and to resolve relative paths) and the variables `${VAR}`
//! references expand from. Its helpers are the only way a validator reads a
//! string, a path or a secret, so every value is expanded the same way and
//! every error names the file, the line and the key.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ConfigError;
use super::env::{self, Vars};
use crate::model::secret::Secret;

/// Validation context: the source text (for line numbers) and variables.
pub(super) struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
    vars: Vars,
    /// The files read so far besides the configuration ([`Cx::note_file`]).
    named: std::cell::RefCell<Vec<super::NamedFile>>,
}

pub(super) use crate::model::selection::is_name;

/// Decodes `%XX` escapes in a URL component (user names, passwords,
/// database names); invalid UTF-8 is replaced rather than refused.
pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl<'a> Cx<'a> {
    /// A context for `text`, read from `file`, expanding variables from the
    /// process environment only (see [`Cx::load_env_file`]).
    pub(super) fn new(text: &'a str, file: &'a Path) -> Self {
        Cx {
            text,
            file,
            vars: Vars::from_env(),
            named: std::cell::RefCell::default(),
        }
    }

    /// Notes a file the configuration read (named by `key`), for the
    /// `config` source: the one place every such file is collected.
    pub(super) fn note_file(&self, key: &str, path: &Path, secret: bool) {
        let mut named = self.named.borrow_mut();
        if !named.iter().any(|n| n.path == path) {
            named.push(super::NamedFile {
                key: key.to_owned(),
                path: path.to_owned(),
                secret,
            });
        }
    }

    /// The files noted so far.
    pub(super) fn named_files(&self) -> Vec<super::NamedFile> {
        self.named.borrow().clone()
    }

    /// The configuration file's path.
    pub(super) fn file(&self) -> &'a Path {
        self.file
    }

    /// Adds the variables of the top-level `env_file` to the environment's,
    /// so that later `${VAR}` references can use them.
    pub(super) fn load_env_file(
        &mut self,
        env_file: &Option<Spanned<String>>,
    ) -> Result<(), ConfigError> {
        let Some(env_file) = env_file else {
            return Ok(());
        };
        let p = self.path(env_file, "env_file")?;
        let text = std::fs::read_to_string(&p).map_err(|e| {
            self.err(
                env_file.span(),
                "env_file",
                format!("cannot read env file {}: {e}", p.display()),
            )
        })?;
        self.vars = Vars::from_env()
            .with_env_file_text(&text)
            .map_err(|(line, msg)| {
                self.err(
                    env_file.span(),
                    "env_file",
                    format!("{} line {line}: {msg}", p.display()),
                )
            })?;
        self.note_file("env_file", &p, true);
        Ok(())
    }

    /// The 1-based line of the file on which `span` starts.
    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    /// An error at `span`, naming `key`.
    pub(super) fn err(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line_of(&span)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// The value with `${VAR}` references expanded.
    pub(super) fn string(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        self.vars
            .expand(v.get_ref())
            .map_err(|e| self.err(v.span(), key, e.to_string()))
    }

    /// A path, expanded, relative paths taken from the config file's folder.
    pub(super) fn path(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            return Err(self.err(v.span(), key, "empty path"));
        }
        Ok(self.relative_to_file(PathBuf::from(s)))
    }

    /// `p` itself if absolute, else taken from the config file's folder.
    pub(super) fn relative_to_file(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        } else {
            p
        }
    }

    /// A secret from exactly one of `password`, `password_file`,
    /// `password_credential` of `section`; none if none is set, or if the
    /// inline password expands to the empty string.
    pub(super) fn secret(
        &self,
        section: &str,
        inline: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        credential: &Option<Spanned<String>>,
    ) -> Result<Option<Secret>, ConfigError> {
        if let Some(span) = [inline, file, credential]
            .into_iter()
            .flatten()
            .nth(1)
            .map(|s| s.span())
        {
            return Err(self.err(
                span,
                &format!("{section}.password"),
                "set only one of password, password_file, password_credential",
            ));
        }
        if let Some(v) = inline {
            // An empty value (`${REDIS_PASSWORD:-}`) means no password.
            let value = self.string(v, &format!("{section}.password"))?;
            return Ok((!value.is_empty()).then(|| Secret::new(value)));
        }
        if let Some(v) = file {
            let key = format!("{section}.password_file");
            let p = self.path(v, &key)?;
            let s = env::read_secret_file(&p).map_err(|e| {
                self.err(v.span(), &key, format!("cannot read {}: {e}", p.display()))
            })?;
            self.note_file(&key, &p, true);
            return Ok(Some(Secret::new(s)));
        }
        match credential {
            Some(v) => self.credential(v, section),
            None => Ok(None),
        }
    }

    /// A systemd credential (`LoadCredential=`) read from
    /// `$CREDENTIALS_DIRECTORY` (see [`read_credential`]).
    fn credential(
        &self,
        v: &Spanned<String>,
        section: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        let key = if section == "signing" {
            "signing.key_credential".to_owned()
        } else {
            format!("{section}.password_credential")
        };
        let name = self.string(v, &key)?;
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let read = read_credential(dir.as_deref(), &name, section == "signing")
            .map_err(|m| self.err(v.span(), &key, m))?;
        if let (Some(dir), Some(_)) = (&dir, &read) {
            self.note_file(&key, &dir.join(&name), true);
        }
        Ok(read)
    }
}

/// The credential `name` in `dir` (`$CREDENTIALS_DIRECTORY`). One that was
/// not passed in — no such file, or an empty one (the units'
/// `SetCredential=NAME:\n` default when the source file is absent) —
/// counts as not set: the units pass every credential optionally, and a
/// unit that does not use a secret (prune has no signing key) must still
/// load the configuration. Without a directory at all (a run by hand) a
/// credential is an error naming the fix, unless `optional` (the signing
/// key: only a backup needs it, and says so).
fn read_credential(
    dir: Option<&Path>,
    name: &str,
    optional: bool,
) -> Result<Option<Secret>, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "`{name}` is not a credential name (a file name in $CREDENTIALS_DIRECTORY)"
        ));
    }
    let Some(dir) = dir else {
        if optional {
            return Ok(None);
        }
        return Err(
            "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential= or use password_file"
                .to_owned(),
        );
    };
    let p = dir.join(name);
    match env::read_secret_file(&p) {
        Ok(s) if s.is_empty() => Ok(None),
        Ok(s) => Ok(Some(Secret::new(s))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read credential {name} ({}): {e}",
            p.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::read_credential;

    #[test]
    fn a_credential_not_passed_in_is_not_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db_password"), "pw\n").unwrap();
        // The units' default when the source file is absent: one newline.
        std::fs::write(dir.path().join("redis_password"), "\n").unwrap();
        let read = |name: &str| read_credential(Some(dir.path()), name, false);
        assert_eq!(read("db_password").unwrap().unwrap().expose(), "pw");
        assert!(read("redis_password").unwrap().is_none());
        assert!(read("mqtt_password").unwrap().is_none());
        assert!(read("../etc/passwd").is_err());
        // Run by hand, outside systemd: a password is an error, the signing
        // key (needed by backups alone) is just absent.
        let e = read_credential(None, "db_password", false).unwrap_err();
        assert!(e.contains("$CREDENTIALS_DIRECTORY is not set"), "{e}");
        assert!(
            read_credential(None, "signing_key", true)
                .unwrap()
                .is_none()
        );
    }
}
