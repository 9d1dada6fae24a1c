//! Policies, prune and the writer lock on real repositories.

use std::process::Stdio;

use crate::support::{self, Pg, Workspace};

fn file_workspace(extra: &str) -> Workspace {
    let ws = Workspace::new();
    let f = ws.dir.path().join("f.txt");
    std::fs::write(&f, "data").unwrap();
    std::fs::create_dir_all(ws.dir.path().join("policies")).unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"f\"\npath = \"{}\"\n",
        f.display()
    ));
    ws.prepend_top_level(&format!(
        "policies_dir = \"{}\"\n{extra}",
        ws.dir.path().join("policies").display()
    ));
    ws.init();
    ws
}

#[test]
fn backup_policy_is_recorded_and_prune_keeps_by_its_retention() {
    let ws = file_workspace("");
    std::fs::write(
        ws.dir.path().join("policies/hourly.toml"),
        "name = \"hourly\"\nschedule = \"0 0 * * * *\"\nsources = [\"files/*\"]\n[retention]\nkeep_last = 2\n",
    )
    .unwrap();
    for _ in 0..4 {
        let out = ws.run(&["backup", "--policy", "hourly"]);
        out.assert_exit(0);
    }
    // One without a policy: no top-level [retention], so it is kept.
    ws.run(&["backup"]).assert_exit(0);
    let before = ws.manifests();
    assert_eq!(before.len(), 5);
    assert_eq!(before.iter().filter(|m| m["policy"] == "hourly").count(), 4);

    let out = ws.run(&["--json", "prune", "--dry-run"]);
    out.assert_exit(0);
    let r: serde_json::Value = out.json();
    let decisions = r[0]["snapshots"].as_array().unwrap();
    assert_eq!(decisions.iter().filter(|d| d["keep"] == false).count(), 2);
    assert!(
        decisions
            .iter()
            .any(|d| d["reasons"].to_string().contains("keep_last 2")),
        "{r}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["reasons"].to_string().contains("no [retention]")),
        "{r}"
    );
    assert_eq!(ws.manifests().len(), 5, "dry run removes nothing");

    let out = ws.run(&["prune"]);
    out.assert_exit(0);
    let after = ws.manifests();
    assert_eq!(after.len(), 3);
    // The removed snapshots' data is gone too; the kept ones' is intact.
    let data: Vec<String> = std::fs::read_dir(ws.repo.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(data.len(), 3);
    ws.run(&["check"]).assert_exit(0);

    // An unknown policy is a usage error.
    ws.run(&["backup", "--policy", "nope"]).assert_exit(2);
}

#[test]
fn a_crash_between_manifest_and_data_removal_is_cleaned_up_next_time() {
    let ws = file_workspace("[retention]\nkeep_last = 1\n");
    for _ in 0..2 {
        ws.run(&["backup"]).assert_exit(0);
    }
    // As if prune died after its signed record and the older manifest.
    let old = ws.manifests()[1]["id"].as_str().unwrap().to_owned();
    let record_id = format!("{}-abcdef", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    let record = ws.repo.join(format!("pruned/{record_id}.json"));
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(
        &record,
        serde_json::json!({
            "version": 1, "id": record_id, "stack": null, "repository": "local", "host": "h",
            "at": chrono::Utc::now(), "removed": [old],
        })
        .to_string(),
    )
    .unwrap();
    ws.sign(&record);
    std::fs::remove_file(ws.repo.join(format!("snapshots/{old}.json"))).unwrap();
    assert!(ws.repo.join(format!("data/{old}")).exists());
    assert_eq!(
        ws.manifests().len(),
        1,
        "the snapshot is gone as soon as its manifest is"
    );
    // A fresh unfinished run's leftovers are younger than the grace period.
    let fresh = format!("{}-abcdef", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    std::fs::create_dir_all(ws.repo.join(format!("data/{fresh}/files"))).unwrap();
    std::fs::write(
        ws.repo
            .join(format!("data/{fresh}/files/f.zst.age.1234.tmp")),
        "x",
    )
    .unwrap();

    let out = ws.run(&["--json", "prune", "--grace", "1h"]);
    out.assert_exit(0);
    let r: serde_json::Value = out.json();
    assert_eq!(
        r[0]["unreferenced"],
        serde_json::json!([]),
        "the old one is younger than 1h too"
    );
    let out = ws.run(&["--json", "prune", "--grace", "0s"]);
    let r: serde_json::Value = out.json();
    assert_eq!(r[0]["unreferenced"].as_array().unwrap().len(), 2, "{r}");
    assert!(!ws.repo.join(format!("data/{old}")).exists());
    assert_eq!(ws.manifests().len(), 1);
    ws.run(&["check"]).assert_exit(0);
}

#[test]
fn a_second_writer_is_refused_or_waits_and_a_killed_holder_frees_the_lock() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let ws = Workspace::new();
    // A pg_dump that takes its time after dumping.
    let (bin, dumped) = support::pg_dump_then(&ws, "sleep 2");
    let section = Workspace::pg_section(&pg, &["app"]);
    ws.configure(&Workspace::pg_section_bin(&pg, &["app"], &bin));
    ws.init();

    let wait_dumped = || {
        support::wait_until("the dump", 20, || dumped.exists());
        std::fs::remove_file(&dumped).unwrap();
    };

    let first = ws
        .kdr()
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_dumped();
    let out = ws.run(&["backup"]);
    out.assert_exit(1);
    let err = out.stderr();
    assert!(
        err.contains("locked by `kompose-dr backup`")
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // Waiting gets it once the first one is done.
    let out = ws.run(&["backup", "--lock-wait", "30s"]);
    out.assert_exit(0);
    let mut first = first;
    assert!(first.wait().unwrap().success());
    assert_eq!(ws.manifests().len(), 2, "both backups are intact");

    // kill -9 of the holder: the kernel frees the lock.
    let holder = ws
        .kdr()
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_dumped();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut holder = holder;
    holder.wait().unwrap();
    ws.configure(&section);
    let out = ws.run(&["prune"]);
    out.assert_exit(0);
    ws.run(&["backup"]).assert_exit(0);
}

#[test]
fn init_beside_the_stacks_own_dumps_leaves_them_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let pg = crate::support::Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let ws = Workspace::new();
    // The stack's backup directory, as it is today: its own gzip dumps.
    let dumps = ws.repo.join("postgres");
    std::fs::create_dir_all(&dumps).unwrap();
    std::fs::set_permissions(&ws.repo, std::fs::Permissions::from_mode(0o750)).unwrap();
    let theirs = dumps.join("keycloak-20261128.sql.gz");
    std::fs::write(&theirs, b"not ours").unwrap();
    std::fs::write(ws.repo.join("README.txt"), b"the stack's notes").unwrap();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    ws.run(&["check", "--read-data"]).assert_exit(0);
    ws.run(&["prune"]).assert_exit(0);
    assert_eq!(std::fs::read(&theirs).unwrap(), b"not ours");
    assert_eq!(
        std::fs::read(ws.repo.join("README.txt")).unwrap(),
        b"the stack's notes"
    );
    let mode = std::fs::metadata(&ws.repo).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "the directory's mode is not taken over");
    // A second init finds its own marker and refuses.
    let out = ws.run(&["init"]);
    out.assert_exit_in(&[1, 2]);
    out.assert_stderr_contains("already exists");
}
