//! A repository written before stack ids and predecessor links (a fixture
//! written by the release before them, `tests/fixtures/compat-v1`) still
//! lists, restores, verifies and checks, and is adopted by the first backup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::Workspace;

/// The fixture: two snapshots, the older of `files/acme`, `files/notes` and
/// `directories/app`, the newer of `files/acme` only.
const OLDER: &str = "20261205T163612Z-e9b7c5";
const NEWER: &str = "20261205T163613Z-24853d";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat-v1")
}

/// A workspace over a copy of the fixture's repository, with its keys
/// (0600, as git does not keep) and sources configured where the copy is.
fn old_repository() -> Workspace {
    let ws = Workspace::new();
    let fx = fixture();
    crate::support::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(fx.join("repo"))
            .arg(&ws.repo),
    );
    crate::support::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(fx.join("src"))
            .arg(ws.dir.path().join("src")),
    );
    let identity = ws.dir.path().join("fixture-identity.txt");
    let key = ws.dir.path().join("fixture-signing.key");
    std::fs::copy(fx.join("identity.txt"), &identity).unwrap();
    std::fs::copy(fx.join("signing.key"), &key).unwrap();
    for f in [&identity, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let public_key = std::fs::read_to_string(fx.join("signing.pub")).unwrap();
    let recipient = std::fs::read_to_string(fx.join("identity.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .unwrap();
    let src = ws.dir.path().join("src");
    std::fs::write(
        &ws.config,
        format!(
            "[[repository]]\nname = \"local\"\nurl = \"{repo}\"\n\n[encryption]\nrecipients = [\"{recipient}\"]\n\
             identity_file = \"{identity}\"\n\n[signing]\nkey_file = \"{key}\"\npublic_key = \"{pk}\"\n\n\
             [[files]]\nname = \"acme\"\npath = \"{src}/acme.json\"\n\n[[files]]\nname = \"notes\"\npath = \"{src}/notes.txt\"\n\n\
             [[directories]]\nname = \"app\"\npath = \"{src}/app\"\n",
            repo = ws.repo.display(),
            identity = identity.display(),
            key = key.display(),
            pk = public_key.trim(),
            src = src.display(),
        ),
    )
    .unwrap();
    ws
}

#[test]
fn a_repository_of_the_release_before_stack_ids_reads_and_is_adopted_once() {
    let ws = old_repository();
    let json = ws.run(&["--json", "snapshots"]).assert_exit(0).json();
    let ids: Vec<&str> = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [NEWER, OLDER]);
    ws.run(&["check", "--read-data"]).assert_exit(0);
    ws.run(&["verify", "--snapshot", OLDER]).assert_exit(0);
    // Restore by hand's equal: every source of the older snapshot.
    let out = ws.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (source, name) in [("files/notes", "notes.txt"), ("files/acme", "acme.json")] {
        let to = out.join(name);
        ws.run(&[
            "restore",
            "--snapshot",
            OLDER,
            "--source",
            source,
            "--to",
            to.to_str().unwrap(),
            "--yes",
        ])
        .assert_exit(0);
        assert_eq!(
            std::fs::read(&to).unwrap(),
            std::fs::read(fixture().join("src").join(name)).unwrap()
        );
    }
    let app = out.join("app");
    ws.run(&[
        "restore",
        "--snapshot",
        OLDER,
        "--source",
        "directories/app",
        "--to",
        app.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    assert_eq!(
        std::fs::read_to_string(app.join("sub/data.txt")).unwrap(),
        "nested\n"
    );

    // The first backup adopts it, and says so; the second says nothing.
    let first = ws.run(&["backup"]);
    first.assert_exit(0);
    first.assert_stderr_contains("adopted");
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.repo.join("kompose-dr.json")).unwrap()).unwrap();
    let stack = marker["stack"].as_str().expect("the marker names a stack");
    assert_eq!(marker["version"], 2);
    let public_key = std::fs::read_to_string(fixture().join("signing.pub")).unwrap();
    crate::support::run_ok(
        std::process::Command::new("minisign")
            .args(["-V", "-P", public_key.trim(), "-m"])
            .arg(ws.repo.join("kompose-dr.json")),
    );
    let second = ws.run(&["backup"]);
    second.assert_exit(0);
    assert!(!second.stderr().contains("adopted"), "{}", second.all());
    // The old snapshots are this stack's; the new ones name the stack and
    // their predecessors.
    let json = ws.run(&["--json", "snapshots"]).assert_exit(0).json();
    let snaps = json["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 4, "{json:#}");
    assert_eq!(snaps[0]["stack"], stack);
    assert_eq!(snaps[0]["previous"], snaps[1]["id"]);
    assert_eq!(snaps[1]["previous"], NEWER);
    assert!(json["other_stacks"].as_array().unwrap().is_empty());
    ws.run(&["check"]).assert_exit(0);
}

#[test]
fn a_snapshot_without_a_stack_planted_after_the_adoption_is_another_stacks() {
    let ws = old_repository();
    ws.run(&["backup"]).assert_exit(0);
    // A pre-upgrade manifest of another repository signed by the same key,
    // planted newer than everything: not one the adopted repository held.
    let older = ws.repo.join(format!("snapshots/{OLDER}.json"));
    let planted_id = "29991231T235959Z-dddddd";
    let body = std::fs::read_to_string(&older)
        .unwrap()
        .replace(OLDER, planted_id);
    let mut m: serde_json::Value = serde_json::from_str(&body).unwrap();
    m["started_at"] = "2999-12-31T23:59:59Z".into();
    let planted = ws.repo.join(format!("snapshots/{planted_id}.json"));
    std::fs::write(&planted, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    crate::support::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(ws.repo.join("data").join(OLDER))
            .arg(ws.repo.join("data").join(planted_id)),
    );
    let key = ws.dir.path().join("fixture-signing.key");
    crate::support::run_ok(
        std::process::Command::new("minisign")
            .args(["-S", "-s"])
            .arg(&key)
            .arg("-m")
            .arg(&planted)
            .args(["-t", &format!("kompose-dr snapshots/{planted_id}.json")]),
    );
    let json = ws.run(&["--json", "snapshots"]).assert_exit(0).json();
    assert_ne!(json["snapshots"][0]["id"], planted_id, "{json:#}");
    assert_eq!(json["other_stacks"][0]["id"], planted_id, "{json:#}");
}
