//! Prometheus metrics for node_exporter's textfile collector.
//!
//! Each run is a new process, so the textfile is also the memory between
//! runs: it is read back, this run's values replace their own series (a
//! `--source` run keeps the other sources' last values; a failure sets
//! `last_status` to 0 and leaves `last_success` alone), and the whole is
//! written atomically (temporary file + rename). Rendering goes through the
//! `prometheus-client` crate; the same text can be served at `/metrics`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::manifest::Manifest;

/// End of the last good backup of a source.
pub const BACKUP_LAST_SUCCESS: &str = "kompose_dr_backup_last_success_timestamp_seconds";
/// 1 ok, 0 failed, for the last attempt.
pub const BACKUP_LAST_STATUS: &str = "kompose_dr_backup_last_status";
/// Seconds the last attempt took.
pub const BACKUP_LAST_DURATION: &str = "kompose_dr_backup_last_duration_seconds";
/// Stored bytes of the last good backup.
pub const BACKUP_LAST_BYTES: &str = "kompose_dr_backup_last_bytes";
/// The first recoverability point of a repository.
pub const REPO_OLDEST: &str = "kompose_dr_repository_oldest_snapshot_timestamp_seconds";
/// Snapshots in a repository.
pub const REPO_SNAPSHOTS: &str = "kompose_dr_repository_snapshots";
/// Snapshots that vanished from a repository other than through prune (a
/// later snapshot names them as its predecessor).
pub const REPO_VANISHED: &str = "kompose_dr_repository_vanished_snapshots";
/// 1 when the newest snapshot this host committed to a repository is gone
/// from it (deleted, or the store rolled back), else 0.
pub const REPO_BEHIND: &str = "kompose_dr_repository_behind_host";
/// End of the last good drill.
pub const DRILL_LAST_SUCCESS: &str = "kompose_dr_drill_last_success_timestamp_seconds";
/// 1 ok, 0 failed, for the last drill.
pub const DRILL_LAST_STATUS: &str = "kompose_dr_drill_last_status";
/// Measured restore time per drill and source.
pub const DRILL_LAST_RESTORE: &str = "kompose_dr_drill_last_restore_seconds";
/// Seconds from a stack drill's start until every app was healthy: the
/// measured RTO.
pub const DRILL_RTO: &str = "kompose_dr_drill_rto_seconds";
/// Age of the snapshot a stack drill restored when it started: the RPO at
/// that moment.
pub const DRILL_SNAPSHOT_AGE: &str = "kompose_dr_drill_snapshot_age_seconds";
/// Seconds from an app clone's start until it was healthy, per drill and
/// app.
pub const DRILL_APP_HEALTHY: &str = "kompose_dr_drill_app_healthy_seconds";
/// Every commit the server made before this moment is archived (unix
/// time, the server's clock): the newest point a recovery can reach.
pub const WAL_LAST_ARCHIVED: &str = "kompose_dr_wal_last_archived_timestamp_seconds";
/// Seconds between now and [`WAL_LAST_ARCHIVED`] when the archiver last
/// looked: the recovery point objective being met, or not.
pub const WAL_LAG: &str = "kompose_dr_wal_archive_lag_seconds";
/// Events that could not be published (a counter; exposed with `_total`).
pub const PUBLISH_FAILURES: &str = "kompose_dr_events_publish_failures";
/// Notifications (`[[notify]]`) and dead-man's-switch pings
/// (`[healthchecks]`) that could not be delivered, by `target` (the kind):
/// a counter, exposed with `_total`.
pub const NOTIFY_FAILURES: &str = "kompose_dr_notify_failures";

const KNOWN: &[(&str, bool, &str)] = &[
    (
        BACKUP_LAST_SUCCESS,
        false,
        "End of the last good backup of the source (unix time).",
    ),
    (
        BACKUP_LAST_STATUS,
        false,
        "1 if the last backup attempt of the source succeeded, else 0.",
    ),
    (
        BACKUP_LAST_DURATION,
        false,
        "Seconds the last backup attempt of the source took.",
    ),
    (
        BACKUP_LAST_BYTES,
        false,
        "Stored bytes of the last good backup of the source.",
    ),
    (
        REPO_OLDEST,
        false,
        "Start of the oldest snapshot in the repository (unix time): the first recoverability point.",
    ),
    (REPO_SNAPSHOTS, false, "Snapshots in the repository."),
    (
        REPO_VANISHED,
        false,
        "Snapshots gone from the repository other than through prune (named by a later snapshot as its predecessor).",
    ),
    (
        REPO_BEHIND,
        false,
        "1 if the newest snapshot this host committed to the repository is gone from it, else 0.",
    ),
    (
        WAL_LAST_ARCHIVED,
        false,
        "Every commit before this moment (unix time, server clock) is in the WAL archive.",
    ),
    (
        WAL_LAG,
        false,
        "Seconds the WAL archive was behind the server when the archiver last looked.",
    ),
    (
        DRILL_LAST_SUCCESS,
        false,
        "End of the last successful restore drill (unix time).",
    ),
    (
        DRILL_LAST_STATUS,
        false,
        "1 if the last restore drill passed, else 0.",
    ),
    (
        DRILL_LAST_RESTORE,
        false,
        "Seconds the last drill took to restore the source.",
    ),
    (
        DRILL_RTO,
        false,
        "Seconds from the last stack drill's start until every app was healthy (the measured RTO).",
    ),
    (
        DRILL_SNAPSHOT_AGE,
        false,
        "Age in seconds of the snapshot the last stack drill restored (the RPO at that moment).",
    ),
    (
        DRILL_APP_HEALTHY,
        false,
        "Seconds the last stack drill's clone of the app took to become healthy.",
    ),
    (
        PUBLISH_FAILURES,
        true,
        "Events that could not be published to the MQTT broker.",
    ),
    (
        NOTIFY_FAILURES,
        true,
        "Notifications and healthchecks pings that could not be delivered, by target kind.",
    ),
];

type Labels = Vec<(String, String)>;

/// Metric values, keyed by name and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    values: BTreeMap<String, BTreeMap<Labels, f64>>,
}

/// Parses `name{a="b",c="d"} value` lines of our own metrics.
fn parse_line(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"")?;
                let mut v = String::new();
                let mut chars = after.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next()?.1 {
                            'n' => v.push('\n'),
                            other => v.push(other),
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                let end = end?;
                labels.push((k.trim_start_matches(',').to_owned(), v));
                rest = after[end + 1..].trim_start_matches(',');
            }
            (name.to_owned(), labels)
        }
    };
    let name = name.strip_suffix("_total").unwrap_or(&name).to_owned();
    KNOWN
        .iter()
        .any(|(n, _, _)| *n == name)
        .then_some((name, labels, value))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// Reads the previous values from a textfile (missing: none).
    pub fn load(path: &Path) -> Metrics {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Metrics::parse(&text)
    }

    /// Reads values from exposition text (only kompose-dr's metrics).
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for (name, labels, value) in text.lines().filter_map(parse_line) {
            m.values.entry(name).or_default().insert(labels, value);
        }
        m
    }

    /// Sets a series.
    pub fn set(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        self.values
            .entry(name.to_owned())
            .or_default()
            .insert(labels(pairs), value);
    }

    /// Adds to a series (counters).
    pub fn add(&mut self, name: &str, pairs: &[(&str, &str)], delta: f64) {
        *self
            .values
            .entry(name.to_owned())
            .or_default()
            .entry(labels(pairs))
            .or_insert(0.0) += delta;
    }

    /// A series' value.
    pub fn get(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.values.get(name)?.get(&labels(pairs)).copied()
    }

    /// Records what shows of deletions in a repository: how many snapshots
    /// vanished, and whether it is behind what this host committed.
    pub fn record_deletions(&mut self, name: &str, vanished: usize, behind: bool) {
        let l = [("repository", name)];
        self.set(REPO_VANISHED, &l, vanished as f64);
        self.set(REPO_BEHIND, &l, f64::from(u8::from(behind)));
    }

    /// Records a repository's snapshot count and oldest snapshot.
    pub fn record_repository(&mut self, name: &str, snapshots: &[Manifest]) {
        let l = [("repository", name)];
        self.set(REPO_SNAPSHOTS, &l, snapshots.len() as f64);
        match snapshots.iter().map(|m| m.started_at).min() {
            Some(t) => self.set(REPO_OLDEST, &l, t.timestamp() as f64),
            None => {
                if let Some(series) = self.values.get_mut(REPO_OLDEST) {
                    series.remove(&labels(&l));
                }
            }
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        for (name, counter, help) in KNOWN {
            let Some(series) = self.values.get(*name) else {
                continue;
            };
            if *counter {
                let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
                for (l, v) in series {
                    family.get_or_create(l).inc_by(*v);
                }
                registry.register(*name, *help, family);
            } else {
                let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                for (l, v) in series {
                    family.get_or_create(l).set(*v);
                }
                registry.register(*name, *help, family);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding to a String cannot fail");
        out
    }

    /// Reads the textfile, lets `change` set this process's series, and
    /// writes it back, under a lock beside it (`.<name>.lock`), so that two
    /// writers (the WAL archiver and a backup) do not lose each other's
    /// series.
    pub fn update(path: &Path, change: impl FnOnce(&mut Metrics)) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!(
                ".{}.lock",
                path.file_name().unwrap_or_default().to_string_lossy()
            )))?;
        lock.lock()?;
        let mut m = Metrics::load(path);
        change(&mut m);
        m.write(path)
    }

    /// Writes the textfile atomically. It holds no secret and node_exporter
    /// (another user) must read it, so it is mode 0644.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{:08x}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            // node_exporter must read it, whatever the umask (the units set
            // UMask=0077): the mode is set on the file, not requested.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_is_readable_by_node_exporter_under_a_strict_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kompose_dr.prom");
        let mut m = Metrics::default();
        m.set(BACKUP_LAST_STATUS, &[("source", "redis")], 1.0);
        // The umask is per process: set it only around this write.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let written = m.write(&path);
        nix::sys::stat::umask(old);
        written.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{mode:o}");
    }

    #[test]
    fn values_survive_a_render_and_parse() {
        let mut m = Metrics::default();
        m.set(BACKUP_LAST_STATUS, &[("source", "postgres/a\"b")], 1.0);
        m.set(BACKUP_LAST_SUCCESS, &[("source", "redis")], 1_764_212_400.0);
        m.add(PUBLISH_FAILURES, &[], 2.0);
        let text = m.render();
        assert!(
            text.contains("kompose_dr_events_publish_failures_total 2"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kompose_dr_backup_last_status"),
            "{text}"
        );
        assert_eq!(Metrics::parse(&text), m);
    }

    #[test]
    fn foreign_lines_are_ignored() {
        let m = Metrics::parse("# EOF\nnode_cpu_seconds_total{cpu=\"0\"} 5\ngarbage\n");
        assert_eq!(m, Metrics::default());
    }
}
