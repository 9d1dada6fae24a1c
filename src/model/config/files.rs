//! `[[files]]`: plain files backed up as they are, each as source
//! `files/<name>`.
//!
//! Paths must be absolute: a relative one would depend on the directory the
//! timer or the operator happened to start in.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::cx::is_name;
use super::{ConfigError, Cx};

/// One `[[files]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    name: Spanned<String>,
    path: Spanned<String>,
    stall_timeout: Option<Spanned<String>>,
}

impl RawFile {
    /// The entry's name as written (validated by [`Cx::files`]) and its
    /// `stall_timeout`, validated with `[timeouts]`.
    pub(super) fn stall_timeout(&self) -> Option<(&str, &Spanned<String>)> {
        self.stall_timeout
            .as_ref()
            .map(|t| (self.name.get_ref().as_str(), t))
    }
}

/// A plain file to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// Source name is `files/<name>`.
    pub name: String,
    /// The file to back up. Always absolute (validation refuses a relative
    /// path), so it never depends on the working directory.
    pub path: PathBuf,
}

impl Cx<'_> {
    /// Validates every `[[files]]` entry: usable, distinct names and
    /// absolute paths.
    pub(super) fn files(&self, raw: &[RawFile]) -> Result<Vec<FileConfig>, ConfigError> {
        let mut files: Vec<FileConfig> = Vec::new();
        for (i, f) in raw.iter().enumerate() {
            let key = format!("files[{i}]");
            let name = self.string(&f.name, &format!("{key}.name"))?;
            if !is_name(&name) {
                return Err(self.err(
                    f.name.span(),
                    &format!("{key}.name"),
                    "use letters, digits, '-', '_' or '.'",
                ));
            }
            if files.iter().any(|x| x.name == name) {
                return Err(self.err(
                    f.name.span(),
                    &format!("{key}.name"),
                    format!("files `{name}` is defined twice"),
                ));
            }
            let path = PathBuf::from(self.string(&f.path, &format!("{key}.path"))?);
            if !path.is_absolute() {
                return Err(self.err(
                    f.path.span(),
                    &format!("{key}.path"),
                    "use an absolute path",
                ));
            }
            files.push(FileConfig { name, path });
        }
        Ok(files)
    }
}
