//! The checks of what kompose-dr reads and writes on this host besides
//! the repositories: the metrics textfile's directory, the drill reports'
//! directory, the policy and drill files, the identity, and who the checks
//! ran as (a check as root proves little about a unit that runs as
//! `kompose-dr`).

use std::path::{Path, PathBuf};

use super::{Check, check};
use crate::model::config::Config;

/// Where the installed (or shipped) units say which user they run as.
const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// The user the shipped units run as.
pub const UNIT_USER: &str = "kompose-dr";

/// `user`: which uid the checks ran as, and whether that is the units'.
pub(super) fn user(as_user: Option<&str>, checks: &mut Vec<Check>) {
    let uid = nix::unistd::geteuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".into());
    let (unit_user, unit_file) = unit_user();
    let unit_says = match &unit_file {
        Some(f) => format!("User= in {}", f.display()),
        None => "the shipped units' User=".to_owned(),
    };
    let message = match as_user {
        Some(u) => format!("checked as `{u}` (uid {uid}), switched to by --as-user"),
        None if uid.is_root() && unit_user != "root" => format!(
            "checked as root (uid 0), but the units run as `{unit_user}` ({unit_says}): root reads and writes \
             everything, so file checks here prove little; run `kompose-dr doctor --as-user {unit_user}` \
             to check as the units would"
        ),
        None => {
            format!("checked as `{name}` (uid {uid}); the units run as `{unit_user}` ({unit_says})")
        }
    };
    checks.push(check("user", Ok(message)));
}

/// The `User=` of the installed backup unit, or the shipped default; and
/// the unit file it came from.
fn unit_user() -> (String, Option<PathBuf>) {
    for dir in UNIT_DIRS {
        let path = Path::new(dir).join("kompose-dr-backup.service");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let user = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("User="))
                .next_back()
                .map(|u| u.trim().to_owned())
                .unwrap_or_else(|| "root".to_owned());
            return (user, Some(path));
        }
    }
    (UNIT_USER.to_owned(), None)
}

/// Proves `dir` is writable by this process: a temporary file is created
/// there and removed.
fn writable(dir: &Path) -> std::io::Result<()> {
    let probe = tempfile::Builder::new()
        .prefix(".kompose-dr-doctor-")
        .tempfile_in(dir)?;
    probe.close()
}

/// `metrics textfile`: its directory takes a new file (the textfile is
/// written beside itself and renamed over).
pub(super) fn textfile(config: &Config, checks: &mut Vec<Check>) {
    let Some(m) = &config.metrics else { return };
    let dir = m
        .textfile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    checks.push(check(
        "metrics textfile",
        match writable(dir) {
            Ok(()) => Ok(format!(
                "{} is writable (a probe file was created and removed)",
                dir.display()
            )),
            Err(e) => Err(format!(
                "cannot create a file in {} ({e}): create it and make it writable by this user \
                 (install -d -o {UNIT_USER} {0}), add it to the unit's ReadWritePaths=, or fix \
                 metrics.textfile in {1}",
                dir.display(),
                config.path.display()
            )),
        },
    ));
}

/// `policies`, `drills` and `reports_dir`: every file parses; where drills
/// exist, their reports can be written.
pub(super) fn policies_and_drills(config: &Config, checks: &mut Vec<Check>) {
    let file = config.path.display();
    checks.push(check(
        "policies",
        match crate::model::policy::Policy::load_dir(&config.policies_dir) {
            Ok(p) if p.is_empty() => Ok(format!(
                "none in {} (backups without --policy use the top-level [retention])",
                config.policies_dir.display()
            )),
            Ok(p) => Ok(format!(
                "{} in {}: {}",
                p.len(),
                config.policies_dir.display(),
                p.iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => Err(format!("{e}; fix that file, or policies_dir in {file}")),
        },
    ));
    if !config.drills_dir.exists() {
        checks.push(check(
            "drills",
            Ok(format!(
                "no drills_dir {}: no drills run (set drills_dir in {file} to run them)",
                config.drills_dir.display()
            )),
        ));
        return;
    }
    match crate::ops::drill::find(config, None) {
        Ok(d) => checks.push(check(
            "drills",
            Ok(format!(
                "{} in {}: {}",
                d.len(),
                config.drills_dir.display(),
                d.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )),
        Err(e) => {
            checks.push(check(
                "drills",
                Err(format!("{e}; fix that file, or drills_dir in {file}")),
            ));
            return;
        }
    }
    // The drill creates reports_dir if needed: its nearest existing
    // ancestor must take a new entry.
    let mut dir = config.reports_dir.as_path();
    while !dir.exists() {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p,
            _ => break,
        }
    }
    checks.push(check(
        "reports_dir",
        match writable(dir) {
            Ok(()) if dir == config.reports_dir => Ok(format!(
                "{} is writable",
                config.reports_dir.display()
            )),
            Ok(()) => Ok(format!(
                "{} will be created in {} (writable)",
                config.reports_dir.display(),
                dir.display()
            )),
            Err(e) => Err(format!(
                "cannot create a file in {} ({e}): drill reports go to {}; make it writable by this user \
                 (install -d -o {UNIT_USER} {1}), add it to the drill unit's ReadWritePaths=, or fix \
                 reports_dir in {file}",
                dir.display(),
                config.reports_dir.display()
            )),
        },
    ));
}

/// `identity`: the age identity file (needed to restore, verify and drill)
/// can be read and holds an identity.
pub(super) fn identity(config: &Config, checks: &mut Vec<Check>) {
    let path = config
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_ref());
    checks.push(match path {
        Some(p) => check(
            "identity",
            match crate::pipeline::load_identities(config) {
                Ok(_) => Ok(format!(
                    "{} is readable (restore, verify and drills can decrypt)",
                    p.display()
                )),
                Err(e) => Err(format!(
                    "{e}; make it readable by this user only (chown {UNIT_USER} {0}; chmod 0600 {0}), \
                     or fix [encryption] identity_file in {1}",
                    p.display(),
                    config.path.display()
                )),
            },
        ),
        None => check(
            "identity",
            Ok("no identity_file configured: backups work; restore, verify and drills need one".into()),
        ),
    });
}

/// Switches this process to `name` for good (groups, gid, uid), so that
/// every check runs with that user's rights: `doctor --as-user`. Only root
/// may; the configuration is read after the switch, as the unit would.
pub fn become_user(name: &str) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, User, geteuid, initgroups, setgid, setuid};
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
        .ok_or_else(|| {
            format!(
                "no user `{name}` on this host: create it (useradd --system {name}) or name another"
            )
        })?;
    if geteuid() == user.uid {
        return Ok(());
    }
    if !geteuid().is_root() {
        return Err(format!(
            "--as-user {name} needs root (it switches to that user); run it with sudo, or run `sudo -u {name} kompose-dr doctor`"
        ));
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name `{name}`"))?;
    initgroups(&cname, user.gid).map_err(|e| format!("cannot take the groups of `{name}`: {e}"))?;
    setgid(Gid::from_raw(user.gid.as_raw()))
        .map_err(|e| format!("cannot switch to the group of `{name}`: {e}"))?;
    setuid(Uid::from_raw(user.uid.as_raw()))
        .map_err(|e| format!("cannot switch to `{name}`: {e}"))?;
    Ok(())
}
