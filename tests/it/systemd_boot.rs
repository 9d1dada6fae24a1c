//! The shipped units, scripts/install and the example configuration, proven
//! by really running them under systemd on a fresh host.
//!
//! PID 1 of the test machines is not systemd (`systemd-run` cannot work),
//! so the test boots one: `systemd-nspawn -b` over an overlay of the Debian
//! tree scripts/boot-tree builds once (scripts/setup runs it; the test never
//! reaches the network), with a private network namespace (loopback only).
//! Inside, tests/it/systemd_boot.sh plays the host and the operator: the
//! stack's PostgreSQL, Redis and Mosquitto as the tree's own systemd
//! services, its backup directory with its own dumps (another owner, 0750),
//! a root-only secrets.env; then scripts/install, the keys, the example
//! configuration adapted minimally, and the services the timers start.
//! Measured on 2 cores: the container boots and powers off in about 2 s;
//! the whole test takes about 25 s (the stack's setup 5 s, the drill 4 s).
//! Building the tree (scripts/setup, once): 2-5 minutes, 564 MB.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, require};

const SRC: &str = env!("CARGO_MANIFEST_DIR");

/// What the driver wrote to `result`: `KEY=value` lines, and one line per
/// unit `UNIT Result=… ExecMainStatus=… ms=…`.
struct Results {
    lines: Vec<String>,
    out: std::path::PathBuf,
}

impl Results {
    fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    fn unit(&self, unit: &str) -> HashMap<String, String> {
        let Some(line) = self
            .lines
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("{unit} ")))
        else {
            return HashMap::new();
        };
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Everything the driver left, for a failure message.
    fn dump(&self) -> String {
        let mut s = format!("result:\n{}\n", self.lines.join("\n"));
        let mut files: Vec<_> = std::fs::read_dir(&self.out)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".journal") || name == "steps.log" || name == "config.diff" {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                s.push_str(&format!("--- {name}\n{text}\n"));
            }
        }
        s
    }
}

#[test]
fn install_and_units_work_on_first_boot_under_systemd() {
    require("systemd-nspawn");
    require("unshare");
    let tree = Command::new(format!("{SRC}/scripts/boot-tree"))
        .arg("--path")
        .output()
        .unwrap();
    let tree = String::from_utf8(tree.stdout).unwrap().trim().to_owned();
    assert!(
        Path::new(&tree).join(".complete").exists(),
        "no boot tree at {tree}: run scripts/setup (it builds it once with debootstrap)"
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["upper", "work", "root", "out"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let out = d.join("out");
    // Traefik's acme.json with one certificate the drill's check decodes.
    let cert = support::certificate(d, &["example.org"], 60);
    let acme = serde_json::json!({ "resolver": { "Account": { "Email": "ops@example.org" },
        "Certificates": [{ "domain": { "main": "example.org" }, "certificate": cert,
                           "key": "c2VjcmV0", "Store": "default" }] } });
    std::fs::write(out.join("acme.json"), serde_json::to_vec(&acme).unwrap()).unwrap();
    let driver = d.join("kdr-test.service");
    std::fs::write(
        &driver,
        "[Unit]\nDescription=kompose-dr first-boot test driver\n\
         [Service]\nType=oneshot\nExecStart=/bin/bash /kdr/src/tests/it/systemd_boot.sh\n\
         TimeoutStartSec=400\n",
    )
    .unwrap();

    let machine = format!("kdr-boot-{}", std::process::id());
    let nspawn = [
        "systemd-nspawn".to_owned(),
        "-q".into(),
        "-b".into(),
        format!("--directory={}", d.join("root").display()),
        format!("--machine={machine}"),
        // PID 1 here is not systemd: no machined, no scope of its own.
        "--register=no".into(),
        "--keep-unit".into(),
        "--link-journal=no".into(),
        // Loopback only: nothing inside reaches the outside or the host's
        // servers (its PostgreSQL on 5432 is not this one).
        "--private-network".into(),
        format!("--bind-ro={SRC}:/kdr/src"),
        format!(
            "--bind-ro={}:/kdr/bin/kompose-dr",
            env!("CARGO_BIN_EXE_kompose-dr")
        ),
        format!("--bind={}:/kdr/out", out.display()),
        format!(
            "--bind-ro={}:/etc/systemd/system/kdr-test.service",
            driver.display()
        ),
        "systemd.wants=kdr-test.service".into(),
    ];
    // The overlay lives in a mount namespace of this run: it goes with it,
    // whatever happens to the test.
    let script = format!(
        "mount -t overlay overlay -o lowerdir={tree},upperdir={u},workdir={w} {r} && exec \"$@\"",
        u = d.join("upper").display(),
        w = d.join("work").display(),
        r = d.join("root").display(),
    );
    let console = std::fs::File::create(d.join("console.log")).unwrap();
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(&script)
        .arg("sh")
        .args(&nspawn)
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .unwrap();
    let status = support::wait_child(&mut child, Duration::from_secs(420));
    if status.is_none() {
        // SIGTERM asks nspawn to power the container off; then SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        if support::wait_child(&mut child, Duration::from_secs(20)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let elapsed = started.elapsed();
    // nspawn leaves its propagation directory on a /run that is not tmpfs.
    let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{machine}"));

    let results = Results {
        lines: std::fs::read_to_string(out.join("result"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
        out: out.clone(),
    };
    let console = std::fs::read_to_string(d.join("console.log")).unwrap_or_default();
    let context = || {
        format!(
            "{}\n--- console (tail)\n{}",
            results.dump(),
            console
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the container did not power off by itself in time ({status:?} after {elapsed:?})\n{}",
        context()
    );
    let steps = std::fs::read_to_string(out.join("steps.log")).unwrap_or_default();
    eprintln!(
        "systemd boot test: {elapsed:?}\n{}\n{}",
        steps
            .lines()
            .filter(|l| l.starts_with("=="))
            .collect::<Vec<_>>()
            .join("\n"),
        results.lines.join("\n")
    );
    assert_eq!(results.value("driver_exit"), Some("0"), "{}", context());

    for unit in [
        "kompose-dr-init.service",
        "kompose-dr-backup.service",
        "kompose-dr-prune.service",
        "kompose-dr-drill.service",
    ] {
        let u = results.unit(unit);
        assert_eq!(
            (
                u.get("Result").map(String::as_str),
                u.get("ExecMainStatus").map(String::as_str)
            ),
            (Some("success"), Some("0")),
            "{unit} did not end green\n{}",
            context()
        );
    }
    // The prune that the backup's OnSuccess= started, too.
    assert!(
        results
            .lines
            .iter()
            .any(|l| l.starts_with("kompose-dr-prune.service ") && l.contains("Result=success")),
        "{}",
        context()
    );
    // Each service, its ExecStart= swapped for a probe, reads what its
    // configuration names and nothing more (tests/it/systemd_boot.sh).
    for unit in [
        "kompose-dr-backup.service",
        "kompose-dr-prune.service",
        "kompose-dr-drill.service",
    ] {
        let u = results.unit(&format!("probe {unit}"));
        assert_eq!(
            u.get("Result").map(String::as_str),
            Some("success"),
            "the sandbox of {unit} lets it read or write what it should not, or not what it must\n{}",
            context()
        );
    }
    assert_eq!(results.value("snapshots"), Some("1"), "{}", context());
    assert_eq!(results.value("reports"), Some("1"), "{}", context());
    assert_eq!(
        results.value("dumps_untouched"),
        Some("yes"),
        "{}",
        context()
    );
    assert_eq!(
        results.value("backups_dir_owner"),
        Some("kept"),
        "{}",
        context()
    );
    // The stack's group keeps exactly the access it had (the ACL's mask
    // shows in `ls -l`, the group entry does not change).
    assert_eq!(
        results.value("backups_dir_group_acl"),
        Some("group::r-x"),
        "{}",
        context()
    );
    assert_eq!(
        results.value("config_mode"),
        Some("root:kompose-dr 640"),
        "{}",
        context()
    );
    assert_eq!(
        results.value("credentials_mode"),
        Some("root:root 700"),
        "{}",
        context()
    );
    assert_eq!(results.value("failed_units"), Some(""), "{}", context());
    assert_eq!(
        results.value("timers"),
        Some("active active "),
        "{}",
        context()
    );
    assert_eq!(
        results.value("agent_active"),
        Some("active"),
        "{}",
        context()
    );
    assert!(
        results
            .value("agent_healthz")
            .is_some_and(|h| h != "none" && !h.is_empty()),
        "{}",
        context()
    );
    let agent = results.unit("agent_stopped");
    assert_eq!(
        agent.get("Result").map(String::as_str),
        Some("success"),
        "the agent did not stop cleanly\n{}",
        context()
    );
    // The example needed only these edits: keys, no Docker, no S3.
    let diff_lines: usize = results
        .value("config_diff_lines")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(diff_lines <= 40, "{}", context());
}
