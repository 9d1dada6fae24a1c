//! The checks of what kompose-dr reads and writes on this host besides
//! the repositories: the metrics textfile's directory, the drill reports'
//! directory, the policy and drill files, the identity and the signing key
//! (each readable by its owner only), and who the checks
//! ran as (a check as root proves little about a unit that runs as
//! `kompose-dr`).

use std::path::Path;

use super::{Check, Verdict, check};
use crate::model::config::Config;
use crate::model::config::keyfile::{self, KeyFileError};

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
    let unit = super::unit::backup_unit();
    let unit_says = format!("User= in {}", unit.source());
    let caps = if unit.ambient_caps.is_empty() {
        "no capabilities".to_owned()
    } else {
        format!("capabilities {}", unit.ambient_caps.join(", "))
    };
    let result = match as_user {
        Some(u) => Ok(format!(
            "checked as `{u}` (uid {uid}) with the backup unit's {caps} (AmbientCapabilities= in {})",
            unit.source()
        )),
        None if uid.is_root() && unit.user != "root" => Ok(format!(
            "checked as root (uid 0), but the units run as `{}` ({unit_says}): root reads and writes \
             everything, so file checks here prove little; run `kompose-dr doctor --as-user {0}` \
             to check as the units would",
            unit.user
        )),
        None => Ok(format!(
            "checked as `{name}` (uid {uid}); the units run as `{}` ({unit_says})",
            unit.user
        )),
    };
    // An installed unit naming a user this host does not have cannot start.
    let result = match (&unit.path, nix::unistd::User::from_name(&unit.user)) {
        (Some(p), Ok(None)) => Err(format!(
            "{} runs as `{}`, which does not exist on this host: create it (useradd --system {1}) or fix User=",
            p.display(),
            unit.user
        )),
        _ => result,
    };
    checks.push(check("user", result));
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
    let loaded = crate::model::policy::Policy::load_dir(&config.policies_dir);
    checks.push(check(
        "policies",
        match &loaded {
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
    if let Some(c) = loaded
        .ok()
        .and_then(|p| super::coverage::coverage(config, &p))
    {
        checks.push(c);
    }
    if !config.drills_dir.exists() {
        checks.push(check(
            "drills",
            Verdict::Ok(format!(
                "no drills_dir {}: no drills run (set drills_dir in {file} to run them)",
                config.drills_dir.display()
            )),
        ));
        return;
    }
    match crate::ops::drill::find(config, None) {
        Ok(d) => checks.push(check(
            "drills",
            Verdict::Ok(format!(
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
    checks.push(reports_dir(config));
}

/// `reports_dir`: the drill creates it if needed, so its nearest existing
/// ancestor must take a new entry.
fn reports_dir(config: &Config) -> Check {
    let file = config.path.display();
    let mut dir = config.reports_dir.as_path();
    while !dir.exists() {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p,
            _ => break,
        }
    }
    check(
        "reports_dir",
        match writable(dir) {
            Ok(()) if dir == config.reports_dir => {
                Ok(format!("{} is writable", config.reports_dir.display()))
            }
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
    )
}

/// `identity`: the age identity file (needed to restore, verify and drill)
/// is readable by its owner only, can be read and holds an identity.
pub(super) fn identity(config: &Config, checks: &mut Vec<Check>) {
    let path = config
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_ref());
    checks.push(match path {
        Some(p) => check("identity", identity_file(config, p)),
        None => check(
            "identity",
            Verdict::Ok(
                "no identity_file configured: backups work; restore, verify and drills need one"
                    .into(),
            ),
        ),
    });
}

fn identity_file(config: &Config, p: &Path) -> Verdict {
    let file = config.path.display();
    if let Err(e @ KeyFileError::TooOpen { .. }) = keyfile::check(p, "identity file") {
        return Err(format!("{e} (restore, verify and drills refuse it until then)").into());
    }
    match crate::pipeline::load_identities(config) {
        // The drill unit has no capabilities: beyond this process's
        // read (which may use CAP_DAC_READ_SEARCH), the file's owner
        // and mode must let the user read it (access(2) ignores
        // capabilities for anyone but root).
        Ok(_) => match nix::unistd::access(p, nix::unistd::AccessFlags::R_OK) {
            Ok(()) => Ok(format!(
                "{} is readable, by its owner only (restore, verify and drills can decrypt)",
                p.display()
            )),
            Err(e) => Err(format!(
                "cannot read the identity file {} without capabilities ({e}), and the drill unit has none: \
                 make it this user's (chown {UNIT_USER} {0}; chmod 0600 {0}), or fix [encryption] identity_file in {file}",
                p.display()
            )
            .into()),
        },
        Err(e) => Err(format!(
            "{e}; make it readable by this user only (chown {UNIT_USER} {0}; chmod 0600 {0}), \
             or fix [encryption] identity_file in {file}",
            p.display()
        )
        .into()),
    }
}

/// `signing key file`: `[signing] key_file` is readable by its owner only
/// (configuration loading refuses it otherwise; this sees a change since)
/// and by this user without capabilities.
pub(super) fn signing_key_file(config: &Config, checks: &mut Vec<Check>) {
    let Some(p) = &config.signing_key_file else {
        return;
    };
    let file = config.path.display();
    let result = match keyfile::check(p, "signing key file") {
        Ok(mode) => match nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::R_OK) {
            Ok(()) => Ok(format!(
                "{} (mode {mode:04o}) is readable, by its owner only",
                p.display()
            )),
            Err(e) => Err(format!(
                "cannot read the signing key file {} without capabilities ({e}): \
                 make it this user's (chown {UNIT_USER} {0}; chmod 600 {0}), or fix [signing] key_file in {file}",
                p.display()
            )),
        },
        Err(e) => Err(format!("{e}; or fix [signing] key_file in {file}")),
    };
    checks.push(check("signing key file", result));
}
