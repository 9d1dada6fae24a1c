//! Signed means signed, snapshots belong to a stack, and deletion shows.

use std::path::Path;

use super::{backed_up, canary_alive, forge_newer, manifest_path, replace_archive};
use crate::support::Workspace;

fn id_of(manifest: &Path) -> String {
    manifest.file_stem().unwrap().to_str().unwrap().to_owned()
}

/// Removes a snapshot by hand, as someone with write access to the store
/// would: manifest, signature and data.
fn delete_snapshot(ws: &Workspace, id: &str) {
    let m = ws.repo.join(format!("snapshots/{id}.json"));
    std::fs::remove_file(&m).unwrap();
    std::fs::remove_file(format!("{}.minisig", m.display())).unwrap();
    std::fs::remove_dir_all(ws.repo.join("data").join(id)).unwrap();
}

/// Snapshot ids of the repository, oldest first (by their start: two in
/// one second sort by it, not by their ids' random part).
fn ids(ws: &Workspace) -> Vec<String> {
    // `snapshots` exits 1 once a deletion shows; its list is whole all the same.
    let json = ws.run(&["--json", "snapshots"]).json();
    let mut ids: Vec<String> = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    ids
}

#[test]
fn a_stripped_signature_is_refused_whatever_the_flags_and_writers_refuse_allow_unsigned() {
    let (ws, victim) = backed_up();
    let real = manifest_path(&ws);
    let id = id_of(&real);
    // The archive swapped, its figures edited to match, the signature gone.
    replace_archive(&ws, "files/acme", br#"{"forged":true}"#);
    std::fs::remove_file(format!("{}.minisig", real.display())).unwrap();
    let out_file = ws.dir.path().join("restored.json");
    let to = out_file.to_str().unwrap();
    for flags in [&[][..], &["--allow-unsigned"][..]] {
        let mut args = flags.to_vec();
        args.extend([
            "restore",
            "--snapshot",
            &id,
            "--source",
            "files/acme",
            "--to",
            to,
            "--yes",
        ]);
        let out = ws.run(&args);
        out.assert_exit(1);
        out.assert_stderr_contains("is not signed");
        assert!(!out_file.exists(), "{}", out.all());
    }
    let out = ws.run(&["--allow-unsigned", "snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("nothing unsigned in it is ever accepted");
    // Stripping the marker's signature too turns nothing on: the marker
    // carries a stack id, which only signing releases write.
    std::fs::remove_file(ws.repo.join("kompose-dr.json.minisig")).unwrap();
    let out = ws.run(&["--allow-unsigned", "snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("kompose-dr.json is not signed");
    // A writer never runs with the flag.
    for cmd in [
        &["backup"][..],
        &["prune"][..],
        &["init"][..],
        &["copy", "--from", "local", "--to", "local", "--missing"][..],
    ] {
        let mut args = vec!["--allow-unsigned"];
        args.extend(cmd);
        let out = ws.run(&args);
        out.assert_exit(2);
        out.assert_stderr_contains("only reads repositories written before signing");
    }
    canary_alive(&victim);
}

#[test]
fn another_stacks_snapshot_is_listed_apart_and_used_only_when_named() {
    let (ws, victim) = backed_up();
    let real = id_of(&manifest_path(&ws));
    // Signed by the same key, newer, but written for another stack.
    let other = "5d0b6c8e-2f4a-4c1b-9e7d-3a8f6b2c1d0e";
    let forged = forge_newer(&ws, |m| m["stack"] = other.into());
    let forged_id = id_of(&forged);
    let json = ws.run(&["--json", "snapshots"]).assert_exit(0).json();
    let ours: Vec<&str> = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ours, [real.as_str()]);
    assert_eq!(json["other_stacks"][0]["id"], forged_id.as_str());
    let text = ws.run(&["snapshots"]).assert_exit(0).stdout();
    assert!(text.contains("of other stacks"), "{text}");
    // latest is this stack's.
    let out = ws.run(&[
        "restore",
        "--dry-run",
        "--source",
        "files/acme",
        "--to",
        "/nonexistent/x",
    ]);
    assert!(
        out.stdout().contains(&real) && !out.stdout().contains(&forged_id),
        "{}",
        out.all()
    );
    // Named, it is used, and the log says whose it is.
    let out = ws.run(&[
        "restore",
        "--dry-run",
        "--snapshot",
        &forged_id,
        "--source",
        "files/acme",
        "--to",
        "/nonexistent/x",
    ]);
    assert!(out.stdout().contains(&forged_id), "{}", out.all());
    out.assert_stderr_contains("belongs to another stack");
    // Retention (keep_last = 1) counts this stack only, and leaves the
    // other stack's snapshot and data alone.
    ws.run(&["prune"]).assert_exit(0);
    assert!(manifest_path(&ws).exists());
    assert!(forged.exists());
    assert!(ws.repo.join("data").join(&forged_id).exists());
    canary_alive(&victim);
}

#[test]
fn a_deleted_snapshot_shows_by_id_in_check_snapshots_and_the_metrics() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let textfile = ws.dir.path().join("kompose_dr.prom");
    ws.configure(&format!(
        "[metrics]\ntextfile = \"{}\"\n\n[[files]]\nname = \"f\"\npath = \"{}\"\n",
        textfile.display(),
        file.display()
    ));
    ws.init();
    for _ in 0..3 {
        ws.run(&["backup"]).assert_exit(0);
    }
    ws.run(&["check"]).assert_exit(0);
    let [a, b, c] = <[String; 3]>::try_from(ids(&ws)).unwrap();

    // The middle one: the next one names it as its predecessor.
    delete_snapshot(&ws, &b);
    let out = ws.run(&["check"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!("VANISHED  {b}")) && out.stdout().contains(&c),
        "{}",
        out.all()
    );
    let json = ws.run(&["--json", "check"]).json();
    assert_eq!(json["vanished"][0]["id"], b.as_str());
    assert_eq!(json["vanished"][0]["named_by"], c.as_str());
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!("VANISHED  {b}")),
        "{}",
        out.all()
    );
    let prom = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        prom.contains("kompose_dr_repository_vanished_snapshots{repository=\"local\"} 1"),
        "{prom}"
    );

    // A prune record planted to explain it away is not signed: refused.
    let planted = ws.repo.join("pruned/29990101T000000Z-aaaaaa.json");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(
        &planted,
        format!(
            r#"{{"version":1,"id":"29990101T000000Z-aaaaaa","stack":null,"repository":"local","host":"h","at":"2999-01-01T00:00:00Z","removed":["{b}"]}}"#
        ),
    )
    .unwrap();
    let out = ws.run(&["check"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!("VANISHED  {b}"))
            && out.stdout().contains("pruned/29990101T000000Z-aaaaaa.json"),
        "{}",
        out.all()
    );
    std::fs::remove_file(&planted).unwrap();

    // The newest one: no later snapshot names it, this host's record does.
    delete_snapshot(&ws, &c);
    let out = ws.run(&["check"]);
    out.assert_exit(1);
    assert!(
        out.stdout().contains(&format!(
            "BEHIND  the newest snapshot this host committed here, {c}"
        )) && out
            .stdout()
            .contains(&format!("the repository's newest is {a}")),
        "{}",
        out.all()
    );
    let prom = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        prom.contains("kompose_dr_repository_behind_host{repository=\"local\"} 1"),
        "{prom}"
    );
    // A restore says so before it takes the older one.
    let out = ws.run(&[
        "restore",
        "--dry-run",
        "--source",
        "files/f",
        "--to",
        "/nonexistent/x",
    ]);
    out.assert_stderr_contains(&c);

    // The next backup names the vanished newest one as its predecessor:
    // the deletion keeps showing.
    ws.run(&["backup"]).assert_exit(0);
    let d = ids(&ws).pop().unwrap();
    let json = ws.run(&["--json", "check"]).json();
    assert_eq!(json["ok"], false);
    let vanished: Vec<(&str, &str)> = json["vanished"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap(), v["named_by"].as_str().unwrap()))
        .collect();
    assert!(vanished.contains(&(c.as_str(), d.as_str())), "{json:#}");
    assert!(json["behind"].is_null(), "{json:#}");
}

#[test]
fn what_prune_removes_is_recorded_signed_and_does_not_show_as_vanished() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    ws.configure(&format!(
        "[retention]\nkeep_last = 1\n\n[[files]]\nname = \"f\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    for _ in 0..3 {
        ws.run(&["backup"]).assert_exit(0);
    }
    ws.run(&["prune"]).assert_exit(0);
    assert_eq!(ids(&ws).len(), 1);
    let records: Vec<_> = std::fs::read_dir(ws.repo.join("pruned"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let record = records
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a prune record");
    // Signed like a manifest: the stock tool checks it.
    crate::support::run_ok(
        std::process::Command::new("minisign")
            .args(["-V", "-P", &ws.public_key, "-m"])
            .arg(record),
    );
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(body["removed"].as_array().unwrap().len(), 2, "{body:#}");
    ws.run(&["check"]).assert_exit(0);
    ws.run(&["snapshots"]).assert_exit(0);
}

#[test]
fn oversized_signatures_and_manifests_are_read_only_as_far_as_their_bound() {
    let (ws, _victim) = backed_up();
    let real = manifest_path(&ws);
    // Sparse files: 60 MiB each on paper, nothing on disk.
    let sig = format!("{}.minisig", real.display());
    let big = std::fs::OpenOptions::new().write(true).open(&sig).unwrap();
    big.set_len(60 << 20).unwrap();
    let huge = ws.repo.join("snapshots/29991231T235959Z-eeeeee.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    // Only the bound and one byte more are read: the message counts them.
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("4097 bytes of signature");
    out.assert_stderr_contains("larger than the 4194304 bytes");
}

#[test]
fn more_manifests_than_any_reader_loads_is_a_clear_error() {
    let (ws, _victim) = backed_up();
    let dir = ws.repo.join("snapshots");
    for i in 0..50_001u32 {
        std::fs::File::create(dir.join(format!("29990101T000000Z-{i:06x}.json"))).unwrap();
    }
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("more than the 50000 kompose-dr reads");
}

/// The marker as the release before stack ids wrote it: version 1, no
/// stack, signed with the host's key (as that release signed it).
fn put_back_a_marker_from_before_stack_ids(ws: &Workspace, signed: bool) {
    let path = ws.repo.join("kompose-dr.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["version"] = 1.into();
    let o = m.as_object_mut().unwrap();
    o.remove("stack");
    o.remove("legacy");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    if signed {
        ws.sign(&path);
    } else {
        std::fs::remove_file(ws.repo.join("kompose-dr.json.minisig")).unwrap();
    }
}

#[test]
fn a_marker_put_back_from_before_stack_ids_is_refused_with_and_without_this_hosts_record() {
    let (ws, victim) = backed_up();
    ws.run(&["backup"]).assert_exit(0);
    put_back_a_marker_from_before_stack_ids(&ws, true);
    // This host pinned the stack.
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("the marker was replaced");
    // A recovery host with no record: signed snapshots name a stack.
    std::fs::remove_dir_all(ws.state_dir()).unwrap();
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("was put back over the adopted one");
    canary_alive(&victim);
}

#[test]
fn a_hand_written_unsigned_marker_turns_nothing_off_on_a_host_with_no_record() {
    let (ws, victim) = backed_up();
    ws.run(&["backup"]).assert_exit(0);
    let stripped = manifest_path(&ws);
    let id = id_of(&stripped);
    replace_archive(&ws, "files/acme", br#"{"forged":true}"#);
    std::fs::remove_file(format!("{}.minisig", stripped.display())).unwrap();
    put_back_a_marker_from_before_stack_ids(&ws, false);
    std::fs::remove_dir_all(ws.state_dir()).unwrap();
    let out_file = ws.dir.path().join("restored.json");
    let out = ws.run(&[
        "--allow-unsigned",
        "restore",
        "--snapshot",
        &id,
        "--source",
        "files/acme",
        "--to",
        out_file.to_str().unwrap(),
        "--yes",
    ]);
    out.assert_exit(1);
    assert!(!out_file.exists(), "{}", out.all());
    canary_alive(&victim);
}
