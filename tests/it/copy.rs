//! `kompose-dr copy` between real repositories (local directories, and
//! Garage through the fault proxy): what is copied restores and verifies
//! from the target, signatures carry over, damage in the source is caught
//! before anything is committed, a killed copy resumes, and a policy's
//! backfill fills in a night the offsite missed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::s3::{FaultProxy, Garage};
use crate::support::{self, Workspace, wait_until};

fn random_file(path: &Path, kib: usize) -> String {
    support::run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c {}K /dev/urandom > '{}'",
        kib,
        path.display()
    )));
    sha256_file(path)
}

fn sha256_file(path: &Path) -> String {
    support::run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn files_section(name: &str, path: &Path) -> String {
    format!(
        "[[files]]\nname = \"{name}\"\npath = \"{}\"\n\n",
        path.display()
    )
}

fn local_section(name: &str, path: &Path) -> String {
    format!(
        "[[repository]]\nname = \"{name}\"\nurl = \"{}\"\n\n",
        path.display()
    )
}

/// A workspace whose `local` repository holds `n` snapshots of the file
/// `files/data` (random, `kib` KiB, rewritten each night), and whose
/// configuration then adds `offsite` (the section `offsite` returns),
/// initialised and empty. Returns the workspace, the snapshot ids (oldest
/// first) and the sha256 of the file at each.
fn nights(
    kib: usize,
    n: usize,
    offsite: impl FnOnce(&Workspace) -> String,
) -> (Workspace, Vec<String>, Vec<String>) {
    let ws = Workspace::new();
    let file = ws.dir.path().join("data.bin");
    let sources = files_section("data", &file);
    ws.configure_repositories(&local_section("local", &ws.repo), &sources);
    ws.init();
    let mut sums = Vec::new();
    for _ in 0..n {
        sums.push(random_file(&file, kib));
        ws.run(&["backup"]).assert_exit(0);
    }
    let mut ids: Vec<String> = ws
        .manifests()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    let section = offsite(&ws);
    ws.configure_repositories(
        &format!("{}{section}", local_section("local", &ws.repo)),
        &sources,
    );
    ws.run(&["init", "--repository", "offsite"]).assert_exit(0);
    (ws, ids, sums)
}

/// [`nights`] with `offsite` a local directory in the workspace.
fn nights_local(kib: usize, n: usize) -> (Workspace, Vec<String>, Vec<String>) {
    nights(kib, n, |ws| {
        local_section("offsite", &ws.dir.path().join("offsite"))
    })
}

/// `restore --repository REPO --snapshot ID --source files/data --to PATH --yes`,
/// then the restored file's sha256.
fn restore_from(ws: &Workspace, repo: &str, id: &str) -> String {
    let to = ws.dir.path().join(format!("restored-{repo}-{id}.bin"));
    ws.run(&[
        "restore",
        "--repository",
        repo,
        "--snapshot",
        id,
        "--source",
        "files/data",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    sha256_file(&to)
}

fn snapshot_ids(ws: &Workspace, repo: &str) -> Vec<String> {
    let v = ws
        .run(&["--json", "snapshots", "--repository", repo])
        .assert_exit(0)
        .json();
    let mut ids: Vec<String> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    // Listed newest first: oldest first here, like the ids of `nights`.
    ids.reverse();
    ids
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["snapshot"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn local_to_local_copies_byte_for_byte_and_the_target_restores_signed() {
    let (ws, ids, sums) = nights_local(96, 2);

    // Neither selector: a usage error naming both.
    let out = ws.run(&["copy", "--from", "local", "--to", "offsite"]);
    out.assert_exit(2);
    assert!(
        out.stderr().contains("--snapshot") && out.stderr().contains("--missing"),
        "{}",
        out.all()
    );

    // --snapshot copies that one only.
    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--snapshot",
        &ids[0],
    ]);
    out.assert_exit(0);
    assert_eq!(
        statuses(&out.json()),
        [(ids[0].clone(), "copied".to_owned())]
    );
    assert_eq!(snapshot_ids(&ws, "offsite"), [ids[0].clone()]);

    // --missing copies only what is missing; a second run has nothing to do.
    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
    ]);
    out.assert_exit(0);
    let report = out.json();
    assert_eq!(statuses(&report), [(ids[1].clone(), "copied".to_owned())]);
    // The data, the configuration and the facts.
    assert_eq!(report["snapshots"][0]["objects"], 3, "{report:#}");
    assert_eq!(report["snapshots"][0]["signed"], true, "{report:#}");
    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
    ]);
    out.assert_exit(0);
    assert!(statuses(&out.json()).is_empty());
    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--snapshot",
        &ids[1],
    ]);
    out.assert_exit(0);
    assert_eq!(
        statuses(&out.json()),
        [(ids[1].clone(), "skipped".to_owned())]
    );

    // Byte for byte: manifests, signatures, archives, facts.
    let target = ws.dir.path().join("offsite");
    for id in &ids {
        for rel in [
            format!("snapshots/{id}.json"),
            format!("snapshots/{id}.json.minisig"),
            format!("data/{id}/files/data.zst.age"),
            format!("data/{id}/facts.json.zst.age"),
        ] {
            assert_eq!(
                std::fs::read(ws.repo.join(&rel)).unwrap(),
                std::fs::read(target.join(&rel)).unwrap(),
                "{rel}"
            );
        }
    }
    // Readers of the target check the carried-over signature (no
    // --allow-unsigned), restore and read every archive back.
    for (id, sum) in ids.iter().zip(&sums) {
        assert_eq!(&restore_from(&ws, "offsite", id), sum);
    }
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
    // The stock tool checks the copied signature too.
    support::require("minisign");
    let m = target.join(format!("snapshots/{}.json", ids[1]));
    support::run_ok(
        Command::new("minisign")
            .args(["-V", "-P", &ws.public_key, "-m"])
            .arg(&m),
    );
}

#[test]
fn local_to_s3_copy_restores_and_reads_back_from_the_target() {
    let garage = Garage::start();
    garage.bucket("kdr-copy");
    let (ws, ids, sums) = nights(512, 2, |ws| {
        garage.repository(
            ws.dir.path(),
            "offsite",
            "s3://kdr-copy/dr",
            &garage.endpoint(),
            "",
        )
    });
    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
    ]);
    out.assert_exit(0);
    assert_eq!(
        statuses(&out.json()),
        ids.iter()
            .map(|i| (i.clone(), "copied".to_owned()))
            .collect::<Vec<_>>()
    );
    // The manifest in the bucket is the local one, byte for byte.
    let key = format!("dr/snapshots/{}.json", ids[0]);
    assert_eq!(
        garage.get("kdr-copy", &key),
        std::fs::read(ws.repo.join(format!("snapshots/{}.json", ids[0]))).unwrap()
    );
    for (id, sum) in ids.iter().zip(&sums) {
        assert_eq!(&restore_from(&ws, "offsite", id), sum);
    }
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
    assert!(garage.open_uploads("kdr-copy").is_empty());
}

#[test]
fn a_tampered_archive_in_the_source_fails_naming_it_and_commits_nothing() {
    let (ws, ids, _) = nights_local(64, 3);
    // The oldest is already offsite; then the newest is damaged locally.
    ws.run(&[
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--snapshot",
        &ids[0],
    ])
    .assert_exit(0);
    let rel = format!("data/{}/files/data.zst.age", ids[2]);
    let path = ws.repo.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
    ]);
    out.assert_exit(1);
    let report = out.json();
    assert_eq!(
        statuses(&report),
        [
            (ids[1].clone(), "copied".to_owned()),
            (ids[2].clone(), "failed".to_owned())
        ]
    );
    let error = report["snapshots"][1]["error"].as_str().unwrap();
    for want in [
        ids[2].as_str(),
        rel.as_str(),
        "`local`",
        "`offsite`",
        "check --read-data",
    ] {
        assert!(error.contains(want), "{want}: {error}");
    }
    assert!(out.stderr().contains(&rel), "{}", out.all());
    // The target has the good ones and nothing of the damaged one visible.
    assert_eq!(
        snapshot_ids(&ws, "offsite"),
        [ids[0].clone(), ids[1].clone()]
    );
    let target = ws.dir.path().join("offsite");
    assert!(!target.join(&rel).exists());
    assert!(!target.join(format!("snapshots/{}.json", ids[2])).exists());
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
}

#[test]
fn a_copy_killed_midway_leaves_no_snapshot_and_the_rerun_finishes_it() {
    let garage = Garage::start();
    garage.bucket("kdr-resume");
    let proxy = FaultProxy::start(garage.port);
    let ws = Workspace::new();
    let small = ws.dir.path().join("a.bin");
    let big = ws.dir.path().join("big.bin");
    random_file(&small, 1024);
    let sum = random_file(&big, 40 << 10);
    let sources = format!(
        "{}{}",
        files_section("a", &small),
        files_section("big", &big)
    );
    ws.configure_repositories(&local_section("local", &ws.repo), &sources);
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let id = ws.manifests()[0]["id"].as_str().unwrap().to_owned();
    let offsite = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-resume",
        &proxy.endpoint(),
        "part_size = \"5MiB\"\n",
    );
    ws.configure_repositories(
        &format!("{}{offsite}", local_section("local", &ws.repo)),
        &sources,
    );
    ws.run(&["init", "--repository", "offsite"]).assert_exit(0);

    // The upload stalls once `a` is up and `big` is on its way: kill -9 then.
    proxy.stall_after_up(8 << 20, Duration::from_secs(120));
    let mut child = ws
        .kdr()
        .args(["copy", "--from", "local", "--to", "offsite", "--missing"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the upload to stall", 120, || proxy.injected() > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();
    let keys = garage.keys("kdr-resume");
    assert!(
        !keys.iter().any(|k| k.starts_with("snapshots/")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("data/{id}/files/a.zst.age")),
        "`a` was finished before the kill: {keys:?}"
    );
    assert!(snapshot_ids(&ws, "offsite").is_empty());

    let out = ws.run(&[
        "--json",
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
    ]);
    out.assert_exit(0);
    let report = out.json();
    let s = &report["snapshots"][0];
    assert_eq!(s["status"], "copied", "{report:#}");
    assert_eq!(s["objects_present"], 1, "{report:#}");
    // `big`, the configuration and the facts.
    assert_eq!(s["objects"], 3, "{report:#}");
    let to = ws.dir.path().join("big-back.bin");
    ws.run(&[
        "restore",
        "--repository",
        "offsite",
        "--source",
        "files/big",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    assert_eq!(sha256_file(&to), sum);
}

#[test]
fn a_policy_with_backfill_fills_in_the_night_the_offsite_was_unreachable() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("data.bin");
    let offsite = ws.dir.path().join("offsite");
    let policies = ws.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("nightly.toml"),
        "name = \"nightly\"\nschedule = \"0 0 3 * * *\"\nrepositories = [\"local\", \"offsite\"]\nbackfill = true\n",
    )
    .unwrap();
    ws.configure_repositories(
        &format!(
            "{}{}",
            local_section("local", &ws.repo),
            local_section("offsite", &offsite)
        ),
        &files_section("data", &file),
    );
    ws.prepend_top_level(&format!("policies_dir = \"{}\"", policies.display()));
    ws.init();

    // Night 1: the offsite disk is gone (unmounted); local gets the snapshot.
    random_file(&file, 64);
    let away = ws.dir.path().join("offsite-away");
    std::fs::rename(&offsite, &away).unwrap();
    let out = ws.run(&["--json", "backup", "--policy", "nightly"]);
    out.assert_exit(3);
    let night1 = out.json();
    let first = night1["snapshot"].as_str().unwrap().to_owned();
    let errors = night1["backfill"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("`offsite`")),
        "{night1:#}"
    );

    // Night 2: it is back; the backup writes both, and the backfill copies
    // night 1 to the offsite.
    std::fs::rename(&away, &offsite).unwrap();
    random_file(&file, 64);
    let out = ws.run(&["--json", "backup", "--policy", "nightly"]);
    out.assert_exit(0);
    let night2 = out.json();
    let second = night2["snapshot"].as_str().unwrap().to_owned();
    let copies = night2["backfill"]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{night2:#}");
    assert_eq!(copies[0]["from"], "local");
    assert_eq!(copies[0]["to"], "offsite");
    assert_eq!(statuses(&copies[0]), [(first.clone(), "copied".to_owned())]);
    assert_eq!(snapshot_ids(&ws, "offsite"), [first.clone(), second]);
    restore_from(&ws, "offsite", &first);

    // Night 3: nothing missing, nothing copied.
    let out = ws.run(&["--json", "backup", "--policy", "nightly"]);
    out.assert_exit(0);
    let night3 = out.json();
    assert!(
        night3["backfill"]["copies"].as_array().unwrap().is_empty(),
        "{night3:#}"
    );
}
