//! What the systemd units allow: the user they run as, the capabilities
//! they grant it, and the sandbox (`ProtectSystem=`, `ReadWritePaths=`,
//! `ProtectHome=`) every path kompose-dr writes or reads must fit in.
//!
//! The installed unit files are read (`/etc/systemd/system`, then
//! `/lib/systemd/system`, `/usr/lib/systemd/system`; `KOMPOSE_DR_UNIT_DIR`
//! names another folder); where none is installed, the units shipped in
//! `systemd/` stand in for the user and capabilities, and the sandbox is
//! not judged (nothing runs in it yet).

use std::path::{Path, PathBuf};

use super::{Check, Verdict, check};
use crate::model::config::{Config, Location};

/// The shipped backup unit, for a host where none is installed.
const SHIPPED_BACKUP: &str = include_str!("../../../systemd/kompose-dr-backup.service");

/// Where installed units are looked for.
fn unit_dirs() -> Vec<PathBuf> {
    match std::env::var_os("KOMPOSE_DR_UNIT_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect(),
    }
}

/// The settings of one unit that decide what its process may do.
#[derive(Debug, Clone, Default)]
pub(super) struct Unit {
    /// The unit's file name.
    pub name: String,
    /// Where it was read from; `None` for the shipped default.
    pub path: Option<PathBuf>,
    /// `User=` (root when absent).
    pub user: String,
    /// `AmbientCapabilities=`, lower-case without `cap_` (`dac_read_search`).
    pub ambient_caps: Vec<String>,
    /// `ProtectSystem=`: `strict`, `full`, `yes`, or empty.
    pub protect_system: String,
    /// `ReadWritePaths=` (a leading `-` dropped).
    pub read_write: Vec<PathBuf>,
    /// `ProtectHome=`: `yes`, `read-only`, `tmpfs`, or empty.
    pub protect_home: String,
}

impl Unit {
    /// Parses the `[Service]` settings that matter here (later lines win,
    /// list settings accumulate; an empty assignment resets a list).
    fn parse(name: &str, path: Option<PathBuf>, text: &str) -> Unit {
        let mut u = Unit {
            name: name.to_owned(),
            path,
            user: "root".into(),
            ..Unit::default()
        };
        for line in text.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "User" => u.user = value.to_owned(),
                "AmbientCapabilities" if value.is_empty() => u.ambient_caps.clear(),
                "AmbientCapabilities" => u.ambient_caps.extend(value.split_whitespace().map(|c| {
                    c.trim_start_matches('~')
                        .to_ascii_lowercase()
                        .trim_start_matches("cap_")
                        .to_owned()
                })),
                "ProtectSystem" => u.protect_system = value.to_ascii_lowercase(),
                "ProtectHome" => u.protect_home = value.to_ascii_lowercase(),
                "ReadWritePaths" if value.is_empty() => u.read_write.clear(),
                "ReadWritePaths" => u.read_write.extend(
                    value
                        .split_whitespace()
                        .map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))),
                ),
                // systemd makes /var/lib/<name> writable for it.
                "StateDirectory" => u.read_write.extend(
                    value
                        .split_whitespace()
                        .map(|d| Path::new("/var/lib").join(d.split(':').next().unwrap_or(d))),
                ),
                _ => {}
            }
        }
        u
    }

    /// Where the unit came from, for messages.
    pub fn source(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("the shipped systemd/{}", self.name),
        }
    }

    /// Why this unit may not write `p`, if it may not.
    fn cannot_write(&self, p: &Path) -> Option<String> {
        if let Some(why) = self.hidden_home(p, true) {
            return Some(why);
        }
        let read_only = match self.protect_system.as_str() {
            // /tmp is read-only too, or private (PrivateTmp=): lost either way.
            "strict" => !["/dev", "/proc", "/sys"].iter().any(|d| p.starts_with(d)),
            "full" => ["/usr", "/boot", "/efi", "/etc"]
                .iter()
                .any(|d| p.starts_with(d)),
            "yes" | "true" => ["/usr", "/boot", "/efi"].iter().any(|d| p.starts_with(d)),
            _ => false,
        };
        if read_only && !self.read_write.iter().any(|rw| p.starts_with(rw)) {
            return Some(format!(
                "ProtectSystem={} makes {} read-only and ReadWritePaths={} does not cover it",
                self.protect_system,
                p.display(),
                self.read_write
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        None
    }

    /// Why `ProtectHome=` hides `p` from this unit (for a write, also
    /// `read-only`), if it does.
    fn hidden_home(&self, p: &Path, write: bool) -> Option<String> {
        let under_home = ["/home", "/root", "/run/user"]
            .iter()
            .any(|d| p.starts_with(d));
        let hides = match self.protect_home.as_str() {
            "yes" | "true" | "tmpfs" => true,
            "read-only" => write,
            _ => false,
        };
        (under_home && hides).then(|| {
            format!(
                "ProtectHome={} hides {} from it",
                self.protect_home,
                p.display()
            )
        })
    }
}

/// The installed unit `name`, if any.
pub(super) fn installed(name: &str) -> Option<Unit> {
    unit_dirs().into_iter().find_map(|dir| {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).ok()?;
        Some(Unit::parse(name, Some(path), &text))
    })
}

/// The backup unit: installed, else the shipped one.
pub(super) fn backup_unit() -> Unit {
    installed("kompose-dr-backup.service")
        .unwrap_or_else(|| Unit::parse("kompose-dr-backup.service", None, SHIPPED_BACKUP))
}

/// Why `doctor --as-user` cannot run as that user. Class
/// [`Class::Usage`](crate::error::Class::Usage): the operator names
/// another user or runs it differently.
#[derive(Debug, thiserror::Error)]
pub enum AsUserError {
    /// The user database could not be read.
    #[error("cannot look up user `{name}`: {source}")]
    Lookup {
        /// The user asked for.
        name: String,
        /// The lookup's error.
        #[source]
        source: nix::errno::Errno,
    },
    /// There is no such user.
    #[error("no user `{0}` on this host: create it (useradd --system {0}) or name another")]
    NoUser(String),
    /// Switching user needs root.
    #[error("--as-user {0} needs root (it switches to that user); run it with sudo")]
    NeedsRoot(String),
    /// util-linux' setpriv is not installed.
    #[error("--as-user needs setpriv: install util-linux")]
    NoSetpriv,
    /// This program's own path is unknown.
    #[error("cannot find this program: {0}")]
    CurrentExe(#[source] std::io::Error),
}

impl crate::error::Classify for AsUserError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Usage
    }
}

/// The command that runs this very `doctor` again as `name`, with the
/// backup unit's ambient capabilities, through util-linux's `setpriv`
/// (as systemd would start the unit); `None` when this process already
/// is that user.
pub fn as_user_command(name: &str) -> Result<Option<std::process::Command>, AsUserError> {
    use nix::unistd::{Group, User, geteuid};
    let user = User::from_name(name)
        .map_err(|source| AsUserError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| AsUserError::NoUser(name.to_owned()))?;
    if geteuid() == user.uid {
        return Ok(None);
    }
    if !geteuid().is_root() {
        return Err(AsUserError::NeedsRoot(name.to_owned()));
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(AsUserError::NoSetpriv)?;
    let group = Group::from_gid(user.gid)
        .ok()
        .flatten()
        .map_or(user.gid.to_string(), |g| g.name);
    let exe = std::env::current_exe().map_err(AsUserError::CurrentExe)?;
    let mut cmd = std::process::Command::new(setpriv);
    cmd.arg(format!("--reuid={name}"))
        .arg(format!("--regid={group}"))
        .arg("--init-groups");
    let caps = backup_unit().ambient_caps;
    if !caps.is_empty() {
        let list = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        cmd.arg(format!("--inh-caps={list}"))
            .arg(format!("--ambient-caps={list}"));
    }
    cmd.arg("--").arg(exe).args(std::env::args_os().skip(1));
    Ok(Some(cmd))
}

/// `sandbox: <unit>`: every path the unit's job writes is writable inside
/// its sandbox, and every path it reads is visible. Only installed units
/// are judged.
pub(super) fn sandbox(config: &Config, checks: &mut Vec<Check>) {
    let mut any = false;
    for (name, needs) in unit_needs(config) {
        let Some(unit) = installed(name) else {
            continue;
        };
        any = true;
        checks.push(judge(config, name, &unit, &needs));
    }
    if !any {
        checks.push(check(
            "sandbox",
            Verdict::Ok("no kompose-dr unit is installed: nothing runs in a sandbox yet (run doctor again after installing the units)".into()),
        ));
    }
}

/// The paths a unit's job writes and reads.
struct Needs {
    writes: Vec<PathBuf>,
    reads: Vec<PathBuf>,
}

/// What each unit's job needs: the backup writes the local repositories,
/// the metrics textfile and its state, and reads the files and Redis'
/// data; prune writes the repositories and the textfile; the drill writes
/// its reports and the textfile and reads the private key.
fn unit_needs(config: &Config) -> [(&'static str, Needs); 3] {
    let textfile_dir = config
        .metrics
        .as_ref()
        .and_then(|m| m.textfile.parent().map(Path::to_path_buf));
    let local_repos: Vec<PathBuf> = config
        .repositories
        .iter()
        .filter_map(|r| match &r.location {
            Location::Local(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let mut reads: Vec<PathBuf> = config.files.iter().map(|f| f.path.clone()).collect();
    reads.extend(config.redis.as_ref().and_then(|r| r.data_dir.clone()));
    let identity: Vec<PathBuf> = config
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.clone())
        .into_iter()
        .collect();
    let backup = Needs {
        writes: local_repos
            .iter()
            .cloned()
            .chain(textfile_dir.clone())
            .chain(std::iter::once(config.state_dir.clone()))
            .collect(),
        reads,
    };
    let prune = Needs {
        writes: local_repos
            .into_iter()
            .chain(textfile_dir.clone())
            .collect(),
        reads: Vec::new(),
    };
    let drill = Needs {
        writes: std::iter::once(config.reports_dir.clone())
            .chain(textfile_dir)
            .collect(),
        reads: identity,
    };
    [
        ("kompose-dr-backup.service", backup),
        ("kompose-dr-prune.service", prune),
        ("kompose-dr-drill.service", drill),
    ]
}

/// `sandbox: <name>`: whether the installed `unit` allows what its job
/// needs.
fn judge(config: &Config, name: &str, unit: &Unit, needs: &Needs) -> Check {
    let mut problems: Vec<String> = needs
        .writes
        .iter()
        .filter_map(|p| {
            unit.cannot_write(p)
                .map(|why| format!("cannot write {}: {why}", p.display()))
        })
        .collect();
    problems.extend(needs.reads.iter().filter_map(|p| {
        unit.hidden_home(p, false)
            .map(|why| format!("cannot read {}: {why}", p.display()))
    }));
    check(
        format!("sandbox: {name}"),
        if problems.is_empty() {
            Ok(format!("{} allows every path it needs", unit.source()))
        } else {
            Err(format!(
                "{} ({}): {}; add the path to ReadWritePaths= (systemctl edit {name}) or move it \
                 under one that is listed, and fix {}",
                name,
                unit.source(),
                problems.join("; "),
                config.path.display()
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_backup_unit_is_read() {
        let u = Unit::parse("b", None, SHIPPED_BACKUP);
        assert_eq!(u.user, "kompose-dr");
        assert_eq!(u.ambient_caps, vec!["dac_read_search"]);
        assert_eq!(u.protect_system, "strict");
        assert!(
            u.cannot_write(Path::new("/var/local/data/backups/x"))
                .is_none()
        );
        assert!(u.cannot_write(Path::new("/srv/backups")).is_some());
        assert!(u.hidden_home(Path::new("/root/acme.json"), false).is_some());
        assert!(u.cannot_write(Path::new("/tmp/x")).is_some());
    }
}
