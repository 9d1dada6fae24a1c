//! Scratch networks: `internal` bridge networks (no route out, nothing
//! published) carrying the scratch labels, for a stack drill's clones to
//! find each other by their production aliases; and the sweep of the
//! networks and volumes a dead kompose-dr process left behind.

use std::collections::HashMap;

use super::scratch::{LABEL, OWNER_LABEL};
use super::{Engine, EngineError};

/// The labels of every scratch object this process creates.
pub(super) fn labels() -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_owned(), "1".to_owned()),
        (OWNER_LABEL.to_owned(), owner()),
    ])
}

/// `HOST/PID` of this process, as [`OWNER_LABEL`] holds it.
fn owner() -> String {
    format!("{}/{}", host(), std::process::id())
}

fn host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the object whose owner label is `owner` belongs to a kompose-dr
/// process of this host that no longer runs (so it may be swept).
/// `created` (seconds since the epoch), where the engine says when the
/// object was made, tells a reused pid from its owner.
pub(super) fn owner_is_gone(owner: &str, created: Option<i64>) -> bool {
    let Some((h, pid)) = owner.rsplit_once('/') else {
        return false;
    };
    let alive = pid.parse::<i32>().is_ok_and(|pid| owner_runs(pid, created));
    h == host() && !alive
}

/// Whether process `pid` may be the owner of an object made at `created`:
/// it runs (of any user), and it started before the object was made (a
/// pid reused by a later process started after), whatever the program (a
/// test drives the library); where the engine gives no time, it is a
/// kompose-dr (the same program as this one).
fn owner_runs(pid: i32, created: Option<i64>) -> bool {
    if crate::process::is_gone(pid) {
        return false;
    }
    // A killed process not yet reaped is a zombie: gone all the same.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    if fields.first().is_none_or(|state| *state == "Z") {
        return false;
    }
    let same_program = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .zip(std::env::current_exe().ok())
        .is_some_and(|(a, b)| a.file_name() == b.file_name());
    match (created, started_at(&fields)) {
        (Some(made), Some(started)) => started <= made + 1,
        _ => same_program,
    }
}

/// When the process whose `/proc/<pid>/stat` fields after the command are
/// `fields` started, in seconds since the epoch (with the boot time in
/// `/proc/stat`).
fn started_at(fields: &[&str]) -> Option<i64> {
    // Field 22 of the line; `fields` begins at field 3.
    let ticks: i64 = fields.get(19)?.parse().ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(boot + ticks / hz)
}

fn label_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![LABEL.to_owned()])])
}

impl Engine {
    /// Creates the labelled `internal` bridge network `name`: its
    /// containers reach each other, nothing outside, and nothing is
    /// published. Register the name in a guard before calling this.
    pub async fn create_internal_network(&self, name: &str) -> Result<(), EngineError> {
        let req = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(true),
            labels: Some(labels()),
            ..Default::default()
        };
        let doing = format!("creating the scratch network `{name}`");
        self.control(&doing, self.docker().create_network(req))
            .await
            .map(|_| ())
    }

    /// Removes the network; one already gone counts as removed.
    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let doing = format!("removing the network `{name}`");
        let call = self.docker().remove_network(name);
        self.change(&doing, super::CONTROL_TIMEOUT, &[404], call)
            .await
    }

    /// Removes the scratch networks and volumes left by kompose-dr
    /// processes of this host that no longer run (after their containers:
    /// run [`Engine::sweep`] first). Returns how many went.
    pub async fn sweep_networks_and_volumes(&self) -> Result<usize, EngineError> {
        let mut removed = 0;
        let opts = bollard::query_parameters::ListNetworksOptions {
            filters: Some(label_filter()),
        };
        let nets = self
            .control(
                "listing scratch networks",
                self.docker().list_networks(Some(opts)),
            )
            .await?;
        for n in nets {
            let owner = n.labels.as_ref().and_then(|l| l.get(OWNER_LABEL));
            if let (Some(name), Some(owner)) = (n.name, owner)
                && owner_is_gone(owner, None)
            {
                tracing::info!(network = %name, owner = %owner, "removing a leftover scratch network");
                self.remove_network(&name).await?;
                removed += 1;
            }
        }
        for (name, owner) in self.scratch_volumes().await? {
            if owner_is_gone(&owner, None) {
                tracing::info!(volume = %name, owner = %owner, "removing a leftover scratch volume");
                self.remove_volume(&name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every volume with the scratch label: name and owner.
    async fn scratch_volumes(&self) -> Result<Vec<(String, String)>, EngineError> {
        let opts = bollard::query_parameters::ListVolumesOptions {
            filters: Some(label_filter()),
        };
        let list = self
            .control(
                "listing scratch volumes",
                self.docker().list_volumes(Some(opts)),
            )
            .await?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                let owner = v.labels.get(OWNER_LABEL).cloned().unwrap_or_default();
                (v.name, owner)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_program_that_started_before_the_object_owns_it() {
        let parent = nix::unistd::getppid().as_raw();
        let now = chrono::Utc::now().timestamp();
        assert!(owner_runs(parent, Some(now)));
        assert!(
            !owner_runs(parent, Some(0)),
            "a pid reused after the object was made"
        );
        assert!(
            !owner_runs(parent, None),
            "another program, no time to tell"
        );
        let me = std::process::id() as i32;
        assert!(owner_runs(me, None));
        assert!(
            !owner_runs(me, Some(0)),
            "a kompose-dr that reused the pid of one killed before it"
        );
        assert!(owner_is_gone(
            &format!("{}/{}", host(), i32::MAX),
            Some(now)
        ));
        assert!(!owner_is_gone(&format!("{}/{parent}", host()), Some(now)));
        // Killed and not yet reaped: a zombie owns nothing.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(owner_runs(pid, Some(now + 5)));
        child.kill().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!owner_runs(pid, Some(now + 5)));
        child.wait().unwrap();
    }
}
