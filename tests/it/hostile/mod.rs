//! A repository is untrusted input: anyone who can write to the store can
//! write anything there. Each test forges a repository the way an attacker
//! would — by editing what the real binary wrote — and checks that
//! kompose-dr refuses it with a clear message and leaves its canary alone.
//!
//! Forged manifests are signed with the workspace's own key (as if the
//! backup host's key had leaked) unless a test is about signatures: the
//! strict validation behind the signature check must hold on its own.

use std::path::{Path, PathBuf};

use crate::support::Workspace;

mod compat;
mod copy;
mod keys;
mod local;
mod sizes;
mod trust;

/// A workspace with one real snapshot of a small file, and a canary
/// directory outside the repository.
fn backed_up() -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    let file = ws.dir.path().join("acme.json");
    std::fs::write(&file, br#"{"resolver":{}}"#).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    ws.configure(&format!(
        "[retention]\nkeep_last = 1\n\n[[files]]\nname = \"acme\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let victim = ws.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("canary"), "alive").unwrap();
    (ws, victim)
}

/// The real snapshot's manifest: the oldest, since every forged one is
/// dated 2999.
fn manifest_path(ws: &Workspace) -> PathBuf {
    let dir = ws.repo.join("snapshots");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    all.sort();
    all.remove(0)
}

/// Writes a second snapshot, newer than the real one, whose manifest is
/// the real one edited by `forge`.
fn forge_newer(ws: &Workspace, forge: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let real = std::fs::read_to_string(manifest_path(ws)).unwrap();
    let real_id = serde_json::from_str::<serde_json::Value>(&real).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = "29991231T235959Z-ffffff";
    // Everything but the forged field is what kompose-dr would write for a
    // snapshot of that id: its data copied, its keys renamed.
    let mut m: serde_json::Value = serde_json::from_str(&real.replace(&real_id, id)).unwrap();
    if !ws.repo.join("data").join(id).exists() {
        crate::support::run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(ws.repo.join("data").join(&real_id))
                .arg(ws.repo.join("data").join(id)),
        );
    }
    m["started_at"] = "2999-12-31T23:59:59Z".into();
    forge(&mut m);
    let path = ws.repo.join(format!("snapshots/{id}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    ws.sign(&path);
    path
}

fn canary_alive(victim: &Path) {
    assert_eq!(
        std::fs::read_to_string(victim.join("canary")).unwrap(),
        "alive"
    );
}

#[test]
fn an_id_with_dot_dot_is_refused_and_prune_removes_nothing_outside() {
    let (ws, victim) = backed_up();
    let rel = format!("../../{}", victim.file_name().unwrap().to_str().unwrap());
    forge_newer(&ws, |m| m["id"] = rel.clone().into());
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("is not its file name");
    // The forged snapshot is newer and keep_last = 1: believed, it would
    // push the real one out and its "data" would be the victim.
    ws.run(&["prune"]).assert_exit(1);
    canary_alive(&victim);
    assert!(manifest_path(&ws).exists());
}

#[test]
fn a_source_with_dot_dot_and_a_foreign_archive_path_are_refused() {
    let (ws, victim) = backed_up();
    let canary = victim.join("canary");
    forge_newer(&ws, |m| {
        m["artifacts"][0]["source"] = "files/../../acme".into();
    });
    ws.run(&["snapshots"])
        .assert_exit(1)
        .assert_stderr_contains("is not a source name kompose-dr writes");
    let forged = forge_newer(&ws, |m| {
        m["artifacts"][0]["path"] = canary.display().to_string().into();
    });
    ws.run(&["snapshots"])
        .assert_exit(1)
        .assert_stderr_contains("names the archive");
    // restore and check only ever see the real snapshot.
    std::fs::remove_file(&forged).unwrap();
    ws.run(&["check"]).assert_exit(0);
    canary_alive(&victim);
}

#[test]
fn facts_pointing_at_dev_zero_and_symlinked_manifests_are_refused() {
    let (ws, victim) = backed_up();
    let forged = forge_newer(&ws, |m| m["facts"]["path"] = "/dev/zero".into());
    ws.run(&["snapshots"])
        .assert_exit(1)
        .assert_stderr_contains("the facts sidecar is `/dev/zero`");
    std::fs::remove_file(&forged).unwrap();
    std::os::unix::fs::symlink(
        "/dev/zero",
        ws.repo.join("snapshots/29991231T235959Z-eeeeee.json"),
    )
    .unwrap();
    // Not something kompose-dr wrote: not listed, never opened (reading
    // /dev/zero would never end).
    let out = ws.run(&["snapshots", "--json"]);
    out.assert_exit(0);
    assert_eq!(out.json()["snapshots"].as_array().unwrap().len(), 1);
    canary_alive(&victim);
}

#[test]
fn a_file_restore_goes_only_where_the_configuration_says_and_never_setuid() {
    let (ws, victim) = backed_up();
    let aimed = victim.join("authorized_keys");
    forge_newer(&ws, |m| {
        m["artifacts"][0]["file"]["path"] = aimed.display().to_string().into();
        m["artifacts"][0]["file"]["mode"] = 0o4755.into();
    });
    let out = ws.run(&["restore", "--source", "files/acme", "--yes", "--replace"]);
    out.assert_exit(1);
    out.assert_stderr_contains("refusing a target taken from the repository");
    assert!(
        !aimed.exists(),
        "a file was written where the repository said"
    );
    canary_alive(&victim);

    // Written where the operator says, the archive's setuid bit is dropped.
    let to = ws.dir.path().join("restored.json");
    ws.run(&[
        "restore",
        "--source",
        "files/acme",
        "--to",
        to.to_str().unwrap(),
        "--yes",
    ])
    .assert_exit(0);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&to).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o755, "mode {mode:o}");
}

/// Writes `plain` as the stock tools would (`zstd | age -r`) over
/// `archive`, and makes the manifest's figures for `source` match it, as a
/// writer of the store could.
fn replace_archive(ws: &Workspace, source: &str, plain: &[u8]) {
    use sha2::Digest;
    let manifest = manifest_path(ws);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let a = m["artifacts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["source"] == source)
        .unwrap();
    let archive = ws.repo.join(a["path"].as_str().unwrap());
    let plain_file = ws.dir.path().join("forged.plain");
    std::fs::write(&plain_file, plain).unwrap();
    crate::support::run_ok(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("zstd -q -c \"$1\" | age -r \"$2\" > \"$3\"")
            .arg("sh")
            .arg(&plain_file)
            .arg(&ws.recipient)
            .arg(&archive),
    );
    let stored = std::fs::read(&archive).unwrap();
    a["sha256"] = hex::encode(sha2::Sha256::digest(&stored)).into();
    a["stored_bytes"] = stored.len().into();
    a["plaintext_bytes"] = plain.len().into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    ws.sign(&manifest);
}

#[test]
fn a_roles_archive_with_a_shell_escape_never_reaches_psql() {
    let pg = crate::support::Pg::start();
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["postgres"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let canary = ws.dir.path().join("canary");
    let evil = format!("CREATE ROLE forged;\n\\! touch {}\n", canary.display());
    replace_archive(&ws, "postgres/globals", evil.as_bytes());
    // The forgery is complete: the stock tools and check --read-data agree.
    ws.run(&["check", "--read-data"]).assert_exit(0);
    let out = ws.run(&["restore", "--source", "postgres/globals", "--yes"]);
    out.assert_exit(1);
    out.assert_stderr_contains("backslash on line 2");
    assert!(!canary.exists(), "psql ran the forged shell escape");
    let roles = pg.psql(
        "postgres",
        "select count(*) from pg_roles where rolname = 'forged'",
    );
    assert_eq!(roles.trim(), "0", "nothing of the archive was applied");
}

#[test]
fn unsigned_and_tampered_snapshots_and_markers_are_refused_by_every_reader() {
    let (ws, victim) = backed_up();
    let real = manifest_path(&ws);
    let real_id = real.file_stem().unwrap().to_str().unwrap().to_owned();
    // The stock tool checks the real one by hand (docs/RUNBOOK.md).
    crate::support::run_ok(
        std::process::Command::new("minisign")
            .args(["-V", "-P", &ws.public_key, "-m"])
            .arg(&real),
    );

    // A forged newer snapshot without a signature: marked, never chosen.
    let forged = forge_newer(&ws, |_| {});
    std::fs::remove_file(format!("{}.minisig", forged.display())).unwrap();
    let out = ws.run(&["snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("29991231T235959Z-ffffff.json is not signed");
    let out = ws.run(&[
        "restore",
        "--dry-run",
        "--source",
        "files/acme",
        "--to",
        "/nonexistent/x",
    ]);
    assert!(
        out.all().contains(&real_id) && !out.stdout().contains("29991231T235959Z-ffffff"),
        "{}",
        out.all()
    );
    ws.run(&["verify", "--snapshot", "29991231T235959Z-ffffff"])
        .assert_exit_in(&[1, 2]);
    // keep_last = 1: believed, the forgery would push the real one out.
    ws.run(&["prune"]).assert_exit(1);
    assert!(real.exists());
    // --allow-unsigned reads only repositories older than signing: this
    // one's marker is signed, so the unsigned forgery stays refused.
    let out = ws.run(&["--allow-unsigned", "--json", "snapshots"]);
    out.assert_exit(1);
    out.assert_stderr_contains("nothing unsigned in it is ever accepted");
    assert_eq!(out.json()["snapshots"].as_array().unwrap().len(), 1);
    std::fs::remove_file(&forged).unwrap();

    // The real manifest with one figure changed: its signature no longer fits,
    // and --allow-unsigned does not excuse a wrong signature.
    let text = std::fs::read_to_string(&real).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["artifacts"][0]["plaintext_bytes"] = 1.into();
    std::fs::write(&real, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    for args in [&["snapshots"][..], &["--allow-unsigned", "snapshots"][..]] {
        let out = ws.run(args);
        out.assert_exit(1);
        out.assert_stderr_contains("is wrongly signed");
    }
    ws.run(&[
        "restore",
        "--source",
        "files/acme",
        "--to",
        "/nonexistent/x",
        "--yes",
    ])
    .assert_failed();
    std::fs::write(&real, text).unwrap();
    ws.run(&["snapshots"]).assert_exit(0);

    // A signature made for another snapshot does not transfer.
    let other = forge_newer(&ws, |_| {});
    std::fs::copy(
        format!("{}.minisig", real.display()),
        format!("{}.minisig", other.display()),
    )
    .unwrap();
    ws.run(&["snapshots"])
        .assert_exit(1)
        .assert_stderr_contains("wrongly signed");
    std::fs::remove_file(&other).unwrap();

    // The marker must be signed too.
    std::fs::remove_file(ws.repo.join("kompose-dr.json.minisig")).unwrap();
    let out = ws.run(&["backup"]);
    out.assert_failed();
    out.assert_stderr_contains("kompose-dr.json is not signed");
    canary_alive(&victim);
}

#[test]
fn a_backup_without_a_signing_key_is_refused_and_readers_without_a_public_key_say_what_to_do() {
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    ws.configure(&format!(
        "[[files]]\nname = \"f\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    let key_line = format!("key_file = \"{}\"\n", ws.signing_key.display());
    std::fs::write(&ws.config, cfg.replace(&key_line, "")).unwrap();
    let out = ws.run(&["backup"]);
    out.assert_exit(2);
    out.assert_stderr_contains("kompose-dr init --generate-key");
    assert!(ws.manifests().is_empty());
    // A key that is not the public key's pair is a configuration error.
    let (other, _) = crate::support::signing_key(ws.dir.path(), "other");
    std::fs::write(
        &ws.config,
        cfg.replace(
            &ws.signing_key.display().to_string(),
            &other.display().to_string(),
        ),
    )
    .unwrap();
    let out = ws.run(&["backup"]);
    out.assert_exit(2);
    out.assert_stderr_contains("does not belong to signing.public_key");
    // Without a public key nothing can be checked.
    std::fs::write(
        &ws.config,
        cfg.replace(&format!("public_key = \"{}\"\n", ws.public_key), ""),
    )
    .unwrap();
    let out = ws.run(&["snapshots"]);
    out.assert_failed();
    out.assert_stderr_contains("no [signing] public_key is configured");
}

#[test]
fn a_replaced_dump_whose_view_runs_a_program_never_reaches_pg_restore() {
    let pg = crate::support::Pg::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(&pg, &["app"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);

    // The attacker's dump: a materialized view whose refresh (at the end of
    // any pg_restore) runs a program as the server's user.
    let canary_dir = tempfile::Builder::new()
        .prefix("kdr-canary-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        canary_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let canary = canary_dir.path().join("canary");
    pg.psql("postgres", "CREATE DATABASE evil");
    pg.psql(
        "evil",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE MATERIALIZED VIEW m AS SELECT f() AS x;",
    );
    pg.psql(
        "evil",
        &format!(
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
             EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}'''; RETURN 1; END $$;",
            canary.display()
        ),
    );
    let evil = pg
        .client("pg_dump")
        .args(["-Fc", "-Z0", "-d", "evil"])
        .output()
        .unwrap();
    assert!(evil.status.success());
    assert!(!canary.exists(), "building the dump ran the program");

    // Written over the real archive with the stock tools; the signed
    // manifest still names the real one's sha256.
    let m = &ws.manifests()[0];
    let archive = ws.archive(Workspace::artifact(m, "postgres/app"));
    let plain = ws.dir.path().join("evil.dump");
    std::fs::write(&plain, &evil.stdout).unwrap();
    crate::support::run_ok(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("zstd -q -c \"$1\" | age -r \"$2\" > \"$3\"")
            .arg("sh")
            .arg(&plain)
            .arg(&ws.recipient)
            .arg(&archive),
    );
    for args in [
        &[
            "restore",
            "--source",
            "postgres/app",
            "--as",
            "app_copy",
            "--yes",
        ][..],
        &["verify"][..],
    ] {
        let out = ws.run(args);
        out.assert_failed();
        out.assert_stderr_contains("the manifest says");
        if args[0] == "restore" {
            // The check ran while the scratch database was created; it
            // is dropped again, and the message says nothing changed.
            out.assert_stderr_contains("app_copy is unchanged");
        }
        assert!(
            !canary.exists(),
            "{args:?}: pg_restore ran the replaced dump"
        );
        // Not a byte of its plaintext is left behind either.
        let left: Vec<_> = std::fs::read_dir(ws.tmp())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("kompose-dr-scratch-"))
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?} in TMPDIR");
    }
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE '%app_copy%' OR datname LIKE 'kdr_%'").trim(),
        "0",
        "nothing of the replaced dump was restored"
    );
}

#[test]
fn an_archive_swapped_in_from_another_snapshot_is_refused() {
    let (ws, victim) = backed_up();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, br#"{"resolver":{"changed":true}}"#).unwrap();
    ws.run(&["backup"]).assert_exit(0);
    let mut ids: Vec<String> = ws
        .manifests()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    // The older snapshot's archive copied over the newer one's: a valid
    // archive, decrypting fine, of the wrong snapshot.
    let archive = |id: &str| ws.repo.join(format!("data/{id}/files/acme.zst.age"));
    std::fs::copy(archive(&ids[0]), archive(&ids[1])).unwrap();
    let target = ws.dir.path().join("restored.json");
    let out = ws.run(&[
        "restore",
        "--snapshot",
        &ids[1],
        "--source",
        "files/acme",
        "--to",
        target.to_str().unwrap(),
        "--yes",
    ]);
    out.assert_exit(1);
    out.assert_stderr_contains("the manifest");
    assert!(!target.exists(), "the swapped archive was restored");
    ws.run(&["check"]).assert_exit(1);
    canary_alive(&victim);
}
