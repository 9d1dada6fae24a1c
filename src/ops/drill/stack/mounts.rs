//! Where a clone's mounts go: a production volume that a `[[directories]]`
//! entry backs up becomes its restored scratch copy, any other volume a
//! fresh empty one, a bind of a backed-up file or directory its restored
//! scratch copy, and any other bind stays, read-only. Nothing of
//! production is ever mounted writable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::engine::clone::Mount;

/// What the drill restored, by production name.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// Production volume → its restored copy (a scratch directory's path,
    /// bind-mounted, or a scratch volume's name).
    pub volumes: BTreeMap<String, String>,
    /// Production path (file or directory) → its restored scratch copy.
    pub paths: BTreeMap<PathBuf, PathBuf>,
}

/// Where one mount goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remapped {
    /// `SOURCE:DEST[:ro]`, ready to use.
    Bind(String),
    /// A fresh empty volume is needed at this destination (`rw` or not).
    FreshVolume {
        /// Where inside.
        destination: String,
        /// Mounted read-write.
        rw: bool,
    },
}

fn suffix(rw: bool) -> &'static str {
    if rw { "" } else { ":ro" }
}

impl Restored {
    /// The restored copy of the production path `source`, if it is (or
    /// lies under) a backed-up file or directory.
    fn path_for(&self, source: &Path) -> Option<PathBuf> {
        self.paths.iter().find_map(|(prod, scratch)| {
            let rest = source.strip_prefix(prod).ok()?;
            Some(if rest.as_os_str().is_empty() {
                scratch.clone()
            } else {
                scratch.join(rest)
            })
        })
    }

    /// Where `m` goes in a clone. `data` says the clone is a database
    /// server: a bind of a directory that was not restored becomes a fresh
    /// volume there (a server cannot start on a read-only data directory).
    pub fn remap(&self, m: &Mount, data: bool) -> Remapped {
        match m {
            Mount::Volume {
                name,
                destination,
                rw,
            } => match self.volumes.get(name) {
                Some(scratch) => Remapped::Bind(format!("{scratch}:{destination}{}", suffix(*rw))),
                None => Remapped::FreshVolume {
                    destination: destination.clone(),
                    rw: *rw,
                },
            },
            Mount::Bind {
                source,
                destination,
                rw,
            } => match self.path_for(Path::new(source)) {
                Some(p) => Remapped::Bind(format!("{}:{destination}{}", p.display(), suffix(*rw))),
                None if data && Path::new(source).is_dir() => Remapped::FreshVolume {
                    destination: destination.clone(),
                    rw: *rw,
                },
                None => Remapped::Bind(format!("{source}:{destination}:ro")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored() -> Restored {
        Restored {
            volumes: BTreeMap::from([("vault_data".into(), "kdr-vol-1".into())]),
            paths: BTreeMap::from([
                (
                    "/srv/acme.json".into(),
                    "/tmp/s/files/acme/acme.json".into(),
                ),
                ("/srv/uploads".into(), "/tmp/s/dirs/uploads".into()),
            ]),
        }
    }

    #[test]
    fn backed_up_volumes_and_paths_go_to_their_scratch_copies() {
        let r = restored();
        let v = Mount::Volume {
            name: "vault_data".into(),
            destination: "/vault".into(),
            rw: true,
        };
        assert_eq!(
            r.remap(&v, false),
            Remapped::Bind("kdr-vol-1:/vault".into())
        );
        let f = Mount::Bind {
            source: "/srv/acme.json".into(),
            destination: "/acme.json".into(),
            rw: false,
        };
        assert_eq!(
            r.remap(&f, false),
            Remapped::Bind("/tmp/s/files/acme/acme.json:/acme.json:ro".into())
        );
        let under = Mount::Bind {
            source: "/srv/uploads/2026".into(),
            destination: "/u".into(),
            rw: true,
        };
        assert_eq!(
            r.remap(&under, false),
            Remapped::Bind("/tmp/s/dirs/uploads/2026:/u".into())
        );
    }

    #[test]
    fn anything_else_is_fresh_or_read_only() {
        let r = restored();
        let v = Mount::Volume {
            name: "cache".into(),
            destination: "/cache".into(),
            rw: true,
        };
        assert_eq!(
            r.remap(&v, false),
            Remapped::FreshVolume {
                destination: "/cache".into(),
                rw: true
            }
        );
        let b = Mount::Bind {
            source: "/etc/app.conf".into(),
            destination: "/app.conf".into(),
            rw: true,
        };
        assert_eq!(
            r.remap(&b, false),
            Remapped::Bind("/etc/app.conf:/app.conf:ro".into())
        );
    }
}
