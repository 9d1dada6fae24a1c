//! `[[directories]]`: a directory tree, or in container mode a named
//! volume, backed up as one tar, each as source `directories/<name>`
//! (docs/DESIGN.md §12).
//!
//! ```toml
//! [[directories]]
//! name = "vaultwarden"
//! path = "/var/local/data/vaultwarden"   # or: volume = "vault_data"
//! stop = ["vault_app"]                   # stopped for the copy's duration
//! pause = false                          # true: paused instead of stopped
//! sqlite = ["db.sqlite3"]                # copied with SQLite's online backup API
//! exclude = ["tmp/**", "*.log"]          # globs, relative to the root
//! ```
//!
//! Exactly one of `path` (absolute) and `volume` (a volume name the engine
//! knows; needs a `[docker]` section, even an empty one: container mode is
//! asked for, not guessed). `sqlite` paths are relative to the root and
//! never leave it (no `..`, no absolute path).

use std::path::{Component, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::cx::is_name;
use super::docker::{ContainerRef, DockerConfig};
use super::{ConfigError, Cx};

/// One `[[directories]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirectory {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    volume: Option<Spanned<String>>,
    #[serde(default)]
    stop: Vec<Spanned<String>>,
    pause: Option<Spanned<bool>>,
    #[serde(default)]
    sqlite: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    stall_timeout: Option<Spanned<String>>,
}

impl RawDirectory {
    /// The entry's name as written and its `stall_timeout`, validated with
    /// `[timeouts]`.
    pub(super) fn stall_timeout(&self) -> Option<(&str, &Spanned<String>)> {
        self.stall_timeout
            .as_ref()
            .map(|t| (self.name.get_ref().as_str(), t))
    }
}

/// Where a directory source's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryLocation {
    /// A directory on this host (absolute).
    Path(PathBuf),
    /// A named volume of the container engine.
    Volume {
        /// The volume's name (`vault_data`).
        name: String,
        /// The engine's address from `[docker] host`, if set.
        engine: Option<String>,
    },
}

/// How the `stop` containers are kept from writing during the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiesce {
    /// `docker stop` before, `docker start` after (the default).
    Stop,
    /// `docker pause` before, `docker unpause` after (`pause = true`).
    Pause,
}

/// A directory (or volume) to back up as a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Source name is `directories/<name>`.
    pub name: String,
    /// The directory or the volume.
    pub location: DirectoryLocation,
    /// Containers stopped (or paused) for the copy's duration; only those
    /// running are, and they are started again on every exit path.
    pub stop: Vec<ContainerRef>,
    /// Stop or pause.
    pub quiesce: Quiesce,
    /// SQLite databases inside, relative to the root, copied with the
    /// online backup API (their `-wal`, `-shm` and `-journal` files are
    /// left out).
    pub sqlite: Vec<PathBuf>,
    /// Globs of relative paths left out (`tmp/**`, `*.log`).
    pub exclude: Vec<String>,
}

impl DirectoryConfig {
    /// The engine of the configuration (for `volume` and `stop`).
    pub fn engine(&self) -> Option<&str> {
        match &self.location {
            DirectoryLocation::Volume { engine, .. } => engine.as_deref(),
            DirectoryLocation::Path(_) => self.stop.first().and_then(|c| c.engine.as_deref()),
        }
    }
}

/// Whether `p` is a plain relative path that stays inside its root.
fn is_inside(p: &std::path::Path) -> bool {
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

impl Cx<'_> {
    /// Validates every `[[directories]]` entry. `container_mode`: whether
    /// the configuration has a `[docker]` section, which `volume` and
    /// `stop` need.
    pub(super) fn directories(
        &self,
        raw: &[RawDirectory],
        docker: &DockerConfig,
        container_mode: bool,
    ) -> Result<Vec<DirectoryConfig>, ConfigError> {
        let mut out: Vec<DirectoryConfig> = Vec::new();
        for (i, d) in raw.iter().enumerate() {
            let key = format!("directories[{i}]");
            let name = self.string(&d.name, &format!("{key}.name"))?;
            if !is_name(&name) {
                return Err(self.err(
                    d.name.span(),
                    &format!("{key}.name"),
                    "use letters, digits, '-', '_' or '.'",
                ));
            }
            if out.iter().any(|x| x.name == name) {
                return Err(self.err(
                    d.name.span(),
                    &format!("{key}.name"),
                    format!("directories `{name}` is defined twice"),
                ));
            }
            let location = self.directory_location(d, &key, &name, docker, container_mode)?;
            let (stop, quiesce) = self.directory_stop(d, &key, docker, container_mode)?;
            let (sqlite, exclude) = self.directory_files(d, &key)?;
            out.push(DirectoryConfig {
                name,
                location,
                stop,
                quiesce,
                sqlite,
                exclude,
            });
        }
        Ok(out)
    }

    /// Where entry `key` (named `name`) is: exactly one of `path` and
    /// `volume`.
    fn directory_location(
        &self,
        d: &RawDirectory,
        key: &str,
        name: &str,
        docker: &DockerConfig,
        container_mode: bool,
    ) -> Result<DirectoryLocation, ConfigError> {
        match (&d.path, &d.volume) {
            (Some(p), None) => {
                let path = PathBuf::from(self.string(p, &format!("{key}.path"))?);
                if !path.is_absolute() {
                    return Err(self.err(p.span(), &format!("{key}.path"), "use an absolute path"));
                }
                Ok(DirectoryLocation::Path(path))
            }
            (None, Some(v)) => self.volume_location(v, key, docker, container_mode),
            _ => Err(self.err(
                d.name.span(),
                key,
                format!(
                    "directories `{name}`: set exactly one of path = \"/DIR\" or volume = \"NAME\""
                ),
            )),
        }
    }

    /// `key.volume = v`: a volume name, read through the engine of
    /// `[docker]`.
    fn volume_location(
        &self,
        v: &Spanned<String>,
        key: &str,
        docker: &DockerConfig,
        container_mode: bool,
    ) -> Result<DirectoryLocation, ConfigError> {
        let k = format!("{key}.volume");
        let vol = self.string(v, &k)?;
        let valid = vol.len() >= 2
            && vol.len() <= 255
            && vol
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && vol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(self.err(
                v.span(),
                &k,
                format!(
                    "`{vol}` is not a volume name: write the name `docker volume ls` shows, like vault_data"
                ),
            ));
        }
        if !container_mode {
            return Err(self.err(
                v.span(),
                &k,
                "a volume is read through the container engine: add a [docker] section \
                 (host = \"unix:///var/run/docker.sock\"), or use path = \"/DIR\"",
            ));
        }
        Ok(DirectoryLocation::Volume {
            name: vol,
            engine: docker.host.clone(),
        })
    }

    /// Entry `key`'s `stop` containers (each once) and how they are
    /// quiesced (`pause`).
    fn directory_stop(
        &self,
        d: &RawDirectory,
        key: &str,
        docker: &DockerConfig,
        container_mode: bool,
    ) -> Result<(Vec<ContainerRef>, Quiesce), ConfigError> {
        let mut stop = Vec::new();
        for (j, c) in d.stop.iter().enumerate() {
            let k = format!("{key}.stop[{j}]");
            if !container_mode {
                return Err(self.err(
                    c.span(),
                    &k,
                    "containers are stopped through the container engine: add a [docker] section \
                     (host = \"unix:///var/run/docker.sock\")",
                ));
            }
            let c = self.container(c, &k, docker)?;
            if !stop.contains(&c) {
                stop.push(c);
            }
        }
        let quiesce = match &d.pause {
            Some(p) if *p.get_ref() => {
                if stop.is_empty() {
                    return Err(self.err(
                        p.span(),
                        &format!("{key}.pause"),
                        "pause applies to the containers in stop = [...]: name them there",
                    ));
                }
                Quiesce::Pause
            }
            _ => Quiesce::Stop,
        };
        Ok((stop, quiesce))
    }

    /// Entry `key`'s `sqlite` paths (inside the root) and `exclude` globs.
    fn directory_files(
        &self,
        d: &RawDirectory,
        key: &str,
    ) -> Result<(Vec<PathBuf>, Vec<String>), ConfigError> {
        let mut sqlite = Vec::new();
        for (j, s) in d.sqlite.iter().enumerate() {
            let k = format!("{key}.sqlite[{j}]");
            let p = PathBuf::from(self.string(s, &k)?);
            if !is_inside(&p) {
                return Err(self.err(
                    s.span(),
                    &k,
                    "write the database's path relative to the directory, without `..` \
                     (db.sqlite3, data/app.db)",
                ));
            }
            sqlite.push(p);
        }
        let mut exclude = Vec::new();
        for (j, e) in d.exclude.iter().enumerate() {
            let k = format!("{key}.exclude[{j}]");
            let g = self.string(e, &k)?;
            if let Err(why) = globset::GlobBuilder::new(&g)
                .literal_separator(true)
                .build()
            {
                return Err(self.err(e.span(), &k, format!("not a glob: {why}")));
            }
            exclude.push(g);
        }
        Ok((sqlite, exclude))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::model::config::{Config, DirectoryLocation, Quiesce};

    fn load(text: &str) -> Result<Config, crate::model::config::ConfigError> {
        Config::from_toml(text, Path::new("/etc/kompose-dr/kompose-dr.toml"))
    }

    #[test]
    fn a_directory_with_sqlite_and_stop_is_read() {
        let c = load(
            "[docker]\n[[directories]]\nname = \"vw\"\npath = \"/srv/vw\"\nstop = [\"vault_app\"]\npause = true\nsqlite = [\"db.sqlite3\"]\nexclude = [\"tmp/**\"]\n",
        )
        .unwrap();
        let d = &c.directories[0];
        assert_eq!(d.location, DirectoryLocation::Path("/srv/vw".into()));
        assert_eq!(d.stop[0].name, "vault_app");
        assert_eq!(d.quiesce, Quiesce::Pause);
        assert_eq!(d.sqlite, vec![std::path::PathBuf::from("db.sqlite3")]);
    }

    #[test]
    fn bad_entries_are_refused_with_their_key_and_line() {
        let cases = [
            ("[[directories]]\nname = \"a\"\n", "exactly one of path"),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nvolume = \"v\"\n",
                "exactly one of path",
            ),
            ("[[directories]]\nname = \"a\"\npath = \"x\"\n", "absolute"),
            (
                "[[directories]]\nname = \"a\"\nvolume = \"vault_data\"\n",
                "[docker]",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nstop = [\"app\"]\n",
                "[docker]",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nsqlite = [\"../db\"]\n",
                "without `..`",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nsqlite = [\"/db\"]\n",
                "without `..`",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\npause = true\n",
                "stop = [...]",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nexclude = [\"[\"]\n",
                "not a glob",
            ),
            (
                "[[directories]]\nname = \"../a\"\npath = \"/x\"\n",
                "letters, digits",
            ),
            (
                "[[directories]]\nname = \"a\"\npath = \"/x\"\nfollow = true\n",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = load(text).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
    }
}
