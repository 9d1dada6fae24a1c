//! Key files with loose modes, S3 keys and leases planted by whoever can write to the store, and an init that fails half way.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::Workspace;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The check of that name in `doctor --json`'s report.
fn doctor_check(ws: &Workspace, name: &str) -> serde_json::Value {
    let out = ws.run(&["--json", "doctor"]);
    out.assert_exit_in(&[0, 1]);
    out.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}`: {}", out.all()))
        .clone()
}

#[test]
fn init_writes_both_keys_readable_by_their_owner_only() {
    let ws = Workspace::new();
    for f in [&ws.signing_key, &ws.signing_key.with_extension("")] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The harness's identity (age-keygen's) is too: the suite reads it.
    assert_eq!(mode(&ws.identity), 0o600);
}

#[test]
fn a_signing_key_group_or_others_can_read_stops_every_command_before_anything_is_written() {
    let (ws, _victim) = super::backed_up();
    let snapshots = || {
        std::fs::read_dir(ws.repo.join("snapshots"))
            .unwrap()
            .count()
    };
    let before = snapshots();
    let key = ws.signing_key.display().to_string();
    assert_eq!(doctor_check(&ws, "signing key file")["ok"], true);
    for m in [0o644, 0o640] {
        chmod(&ws.signing_key, m);
        let out = ws.run(&["backup"]);
        out.assert_exit(2);
        out.assert_stderr_contains(&format!("`chmod 600 {key}`"));
        out.assert_stderr_contains(&format!("mode {m:04o}"));
        out.assert_stderr_contains("signing.key_file");
        assert_eq!(snapshots(), before, "a snapshot was written");
    }
    // doctor cannot load the configuration either, and says the same.
    let out = ws.run(&["doctor"]);
    out.assert_exit(2);
    out.assert_stderr_contains(&format!("`chmod 600 {key}`"));
    chmod(&ws.signing_key, 0o600);
    ws.run(&["backup"]).assert_exit(0);
}

#[test]
fn an_identity_group_or_others_can_read_is_refused_by_every_reader_and_named_by_doctor() {
    let (ws, _victim) = super::backed_up();
    let id = ws.identity.display().to_string();
    assert_eq!(doctor_check(&ws, "identity")["ok"], true);
    chmod(&ws.identity, 0o644);
    let to = ws.dir.path().join("restored.json");
    let to = to.to_str().unwrap();
    for args in [
        &["restore", "--source", "files/acme", "--to", to, "--yes"][..],
        &["verify"][..],
        &["check", "--read-data"][..],
    ] {
        let out = ws.run(args);
        out.assert_exit(2);
        out.assert_stderr_contains(&format!(
            "identity file {id} is readable by group or others"
        ));
        out.assert_stderr_contains(&format!("`chmod 600 {id}`"));
    }
    assert!(!Path::new(to).exists());
    let check = doctor_check(&ws, "identity");
    assert_eq!(check["ok"], false, "{check}");
    let m = check["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("`chmod 600 {id}`")) && m.contains("0644"),
        "{m}"
    );
    // Backups need only the recipients: they go on.
    ws.run(&["backup"]).assert_exit(0);
    chmod(&ws.identity, 0o600);
    ws.run(&["restore", "--source", "files/acme", "--to", to, "--yes"])
        .assert_exit(0);
}

#[test]
fn init_generate_key_that_fails_half_way_leaves_no_key_behind() {
    let ws = Workspace::new();
    let blocker = ws.dir.path().join("blocker");
    std::fs::write(&blocker, "a regular file").unwrap();
    ws.configure_repositories(
        &format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n",
            blocker.join("repo").display()
        ),
        "",
    );
    let key = ws.dir.path().join("new-key.txt");
    let sign = ws.dir.path().join("new-key.txt.sign");
    let out = ws.run(&["init", "--generate-key", key.to_str().unwrap()]);
    out.assert_failed();
    out.assert_stderr_contains("removed the key file this run wrote");
    assert!(!key.exists() && !sign.exists(), "{}", out.all());
    assert!(!out.stdout().contains("public_key ="), "{}", out.all());

    // A file that was there is never removed, nor overwritten.
    std::fs::write(&key, "mine").unwrap();
    ws.run(&["init", "--generate-key", key.to_str().unwrap()])
        .assert_exit(2)
        .assert_stderr_contains("already exists");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "mine");
    assert!(!sign.exists());
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&sign, "mine").unwrap();
    ws.run(&["init", "--generate-key", key.to_str().unwrap()])
        .assert_exit(2)
        .assert_stderr_contains("already exists");
    assert_eq!(std::fs::read_to_string(&sign).unwrap(), "mine");
    assert!(!key.exists());
}
