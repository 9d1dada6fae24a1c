//! copy checks what the target holds: garbage manifests and damaged data in the target are replaced, never counted as present.
//!
//! The target of a copy is as untrusted as its source: a manifest there
//! counts only if every reader would accept it, and an object only if its
//! size and sha256 are the manifest's — in a local directory and on S3.

use std::path::Path;
use std::process::Command;

use crate::support::s3::Garage;
use crate::support::{self, Workspace};

fn local_section(name: &str, path: &Path) -> String {
    format!(
        "[[repository]]\nname = \"{name}\"\nurl = \"{}\"\n\n",
        path.display()
    )
}

/// A workspace whose `local` repository holds `n` snapshots of a random
/// 200 KiB `files/data`, then `offsite` (the section `offsite` returns)
/// added and initialised, empty. Returns the workspace, the snapshot ids
/// (oldest first) and the file's sha256 at each.
fn nights(
    n: usize,
    offsite: impl FnOnce(&Workspace) -> String,
) -> (Workspace, Vec<String>, Vec<String>) {
    let ws = Workspace::new();
    let file = ws.dir.path().join("data.bin");
    let sources = format!(
        "[[files]]\nname = \"data\"\npath = \"{}\"\n\n",
        file.display()
    );
    ws.configure_repositories(&local_section("local", &ws.repo), &sources);
    ws.init();
    let mut sums = Vec::new();
    for _ in 0..n {
        support::run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("head -c 200K /dev/urandom > '{}'", file.display())),
        );
        sums.push(sha256_file(&file));
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

fn sha256_file(path: &Path) -> String {
    support::run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// `--json copy --from local --to offsite ARGS…`.
fn copy(ws: &Workspace, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "copy", "--from", "local", "--to", "offsite"];
    all.extend_from_slice(args);
    ws.run(&all).assert_exit(0).json()
}

/// The report's entry for `id`.
fn entry<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot"] == id)
        .unwrap_or_else(|| panic!("no {id} in {report:#}"))
}

/// Restores `files/data` of `id` from `offsite`; its sha256.
fn restored_from_offsite(ws: &Workspace, id: &str) -> String {
    let to = ws.dir.path().join(format!("back-{id}.bin"));
    ws.run(&[
        "restore",
        "--repository",
        "offsite",
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

#[test]
fn a_garbage_manifest_in_the_target_is_replaced_and_reported() {
    let (ws, ids, sums) = nights(2, |ws| {
        local_section("offsite", &ws.dir.path().join("offsite"))
    });
    let offsite = ws.dir.path().join("offsite");
    // The first snapshot reached the offsite; then both manifest keys there
    // hold `{}` (`echo '{}' > OFFSITE/snapshots/ID.json`): the second has
    // no data there at all.
    copy(&ws, &["--snapshot", &ids[0]]);
    for id in &ids {
        std::fs::write(offsite.join(format!("snapshots/{id}.json")), "{}\n").unwrap();
    }
    ws.run(&["snapshots", "--repository", "offsite"])
        .assert_exit(1);

    let out = ws.run(&[
        "copy",
        "--from",
        "local",
        "--to",
        "offsite",
        "--missing",
        "--dry-run",
    ]);
    out.assert_exit(0);
    out.assert_stdout_contains("would replace the damaged manifest in `offsite`");
    out.assert_stdout_contains("2 snapshots would be copied");

    let report = copy(&ws, &["--missing"]);
    for id in &ids {
        let e = entry(&report, id);
        assert_eq!(e["status"], "copied", "{report:#}");
        assert!(e["replaced"].is_string(), "{report:#}");
    }
    // What a killed copy left (and checks out) is kept; the rest streamed.
    // Each snapshot holds three objects: the data, the configuration, the facts.
    assert_eq!(entry(&report, &ids[0])["objects_present"], 3, "{report:#}");
    assert_eq!(entry(&report, &ids[1])["objects"], 3, "{report:#}");
    for id in &ids {
        for rel in [
            format!("snapshots/{id}.json"),
            format!("snapshots/{id}.json.minisig"),
        ] {
            assert_eq!(
                std::fs::read(ws.repo.join(&rel)).unwrap(),
                std::fs::read(offsite.join(&rel)).unwrap(),
                "{rel}"
            );
        }
    }
    ws.run(&["snapshots", "--repository", "offsite"])
        .assert_exit(0);
    for (id, sum) in ids.iter().zip(&sums) {
        assert_eq!(&restored_from_offsite(&ws, id), sum);
    }
    // Present now: nothing to copy, nothing replaced.
    let again = copy(&ws, &["--missing"]);
    assert!(
        again["snapshots"].as_array().unwrap().is_empty(),
        "{again:#}"
    );
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
}

#[test]
fn a_truncated_or_altered_object_in_the_target_is_copied_again() {
    let (ws, ids, sums) = nights(1, |ws| {
        local_section("offsite", &ws.dir.path().join("offsite"))
    });
    let id = &ids[0];
    let offsite = ws.dir.path().join("offsite");
    copy(&ws, &["--snapshot", id]);
    // As a killed copy leaves it (objects, no manifest), then one object
    // altered in place (same size) and the other truncated.
    std::fs::remove_file(offsite.join(format!("snapshots/{id}.json"))).unwrap();
    let archive = offsite.join(format!("data/{id}/files/data.zst.age"));
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&archive, &bytes).unwrap();
    let facts = offsite.join(format!("data/{id}/facts.json.zst.age"));
    let len = std::fs::metadata(&facts).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&facts)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let report = copy(&ws, &["--missing"]);
    let e = entry(&report, id);
    assert_eq!(e["status"], "copied", "{report:#}");
    assert_eq!(e["objects"], 2, "{report:#}");
    // The configuration's archive, untouched, is read back and kept.
    assert_eq!(e["objects_present"], 1, "{report:#}");
    assert!(e.get("replaced").is_none(), "{report:#}");
    for rel in [
        format!("data/{id}/files/data.zst.age"),
        format!("data/{id}/facts.json.zst.age"),
    ] {
        assert_eq!(
            std::fs::read(ws.repo.join(&rel)).unwrap(),
            std::fs::read(offsite.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(&restored_from_offsite(&ws, id), &sums[0]);
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
}

#[test]
fn on_s3_a_garbage_manifest_is_replaced_and_an_altered_object_copied_again() {
    let garage = Garage::start();
    garage.bucket("kdr-hostile-copy");
    let (ws, ids, sums) = nights(1, |ws| {
        garage.repository(
            ws.dir.path(),
            "offsite",
            "s3://kdr-hostile-copy/dr",
            &garage.endpoint(),
            "",
        )
    });
    let id = &ids[0];
    copy(&ws, &["--snapshot", id]);
    // Same size, one byte changed: only re-reading it can tell.
    let key = format!("dr/data/{id}/files/data.zst.age");
    let mut bytes = garage.get("kdr-hostile-copy", &key);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    garage.put("kdr-hostile-copy", &key, &bytes);
    garage.put(
        "kdr-hostile-copy",
        &format!("dr/snapshots/{id}.json"),
        b"{}\n",
    );

    let report = copy(&ws, &["--missing"]);
    let e = entry(&report, id);
    assert_eq!(e["status"], "copied", "{report:#}");
    assert!(e["replaced"].is_string(), "{report:#}");
    assert_eq!(e["objects"], 1, "the altered archive: {report:#}");
    assert_eq!(
        e["objects_present"], 2,
        "the configuration and the facts, read back: {report:#}"
    );
    assert_eq!(
        garage.get("kdr-hostile-copy", &key),
        std::fs::read(ws.repo.join(format!("data/{id}/files/data.zst.age"))).unwrap()
    );
    assert_eq!(
        garage.get("kdr-hostile-copy", &format!("dr/snapshots/{id}.json")),
        std::fs::read(ws.repo.join(format!("snapshots/{id}.json"))).unwrap()
    );
    assert_eq!(&restored_from_offsite(&ws, id), &sums[0]);
    ws.run(&["check", "--read-data", "--repository", "offsite"])
        .assert_exit(0);
}

#[test]
fn data_deleted_behind_a_good_target_manifest_is_copied_again_and_a_deleted_newest_copy_shows() {
    let (ws, ids, sums) = nights(2, |ws| {
        local_section("offsite", &ws.dir.path().join("offsite"))
    });
    let offsite = ws.dir.path().join("offsite");
    copy(&ws, &["--missing"]);
    // The manifest stays, its data goes: the snapshot is not held.
    std::fs::remove_dir_all(offsite.join("data").join(&ids[0])).unwrap();
    let report = copy(&ws, &["--missing"]);
    assert_eq!(entry(&report, &ids[0])["status"], "copied", "{report:#}");
    assert_eq!(restored_from_offsite(&ws, &ids[0]), sums[0]);
    // The newest copy deleted from the target: this host copied it there,
    // so the target is behind what this host wrote.
    let newest = &ids[1];
    for f in [
        format!("snapshots/{newest}.json"),
        format!("snapshots/{newest}.json.minisig"),
    ] {
        std::fs::remove_file(offsite.join(f)).unwrap();
    }
    let out = ws.run(&["check", "--repository", "offsite"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!(
            "BEHIND  the newest snapshot this host committed here, {newest}"
        )),
        "{}",
        out.all()
    );
}

#[test]
fn a_prune_record_carried_over_from_another_repository_accounts_for_nothing() {
    let (ws, ids, _) = nights(3, |ws| {
        local_section("offsite", &ws.dir.path().join("offsite"))
    });
    let offsite = ws.dir.path().join("offsite");
    copy(&ws, &["--missing"]);
    // offsite prunes the middle snapshot under its own (signed) record…
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(&ws.config, format!("{cfg}\n[retention]\nkeep_last = 1\n")).unwrap();
    ws.run(&["prune", "--repository", "offsite"]).assert_exit(0);
    std::fs::write(&ws.config, cfg).unwrap();
    // …whose record, put into local, must not explain a deletion there.
    let record = std::fs::read_dir(offsite.join("pruned"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let name = record.file_name().unwrap();
    std::fs::create_dir_all(ws.repo.join("pruned")).unwrap();
    std::fs::copy(&record, ws.repo.join("pruned").join(name)).unwrap();
    std::fs::copy(
        format!("{}.minisig", record.display()),
        ws.repo
            .join("pruned")
            .join(format!("{}.minisig", name.to_string_lossy())),
    )
    .unwrap();
    let middle = &ids[1];
    std::fs::remove_file(ws.repo.join(format!("snapshots/{middle}.json"))).unwrap();
    let out = ws.run(&["check", "--repository", "local"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!("VANISHED  {middle}"))
            && out.stdout().contains("accounts for nothing here"),
        "{}",
        out.all()
    );
}
