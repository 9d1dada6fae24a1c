//! Opens by the local backend stay inside the repository: symlinks and FIFOs planted there, the lock file included.
//!
//! Run as root (as the units do), a `lock -> /etc/shadow` once made a
//! backup truncate its target and write the holder's JSON into it. Each
//! test plants something in a real repository and checks that the real
//! binary refuses it, naming it, quickly, and that nothing outside changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{backed_up, canary_alive};
use crate::support::{Ran, Workspace};

/// Runs the binary with `args`, killed (and the test failed) if it has not
/// finished within `limit`: a FIFO must never hang it.
fn run_within(ws: &Workspace, args: &[&str], limit: Duration) -> Ran {
    let what = format!("kompose-dr {}", args.join(" "));
    let child = ws
        .kdr()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => Ran::new(what, out.unwrap()),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("`{what}` hung for {limit:?} on a hostile repository");
        }
    }
}

/// Every entry below `dir` with its bytes (a symlink as its target), to
/// show that nothing there changed.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let body = if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else if meta.is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.push((path, body));
        }
    }
    out.sort();
    out
}

/// The id of the only snapshot.
fn only_snapshot(ws: &Workspace) -> String {
    let manifests = ws.manifests();
    assert_eq!(manifests.len(), 1);
    manifests[0]["id"].as_str().unwrap().to_owned()
}

/// Moves `REPO/<rel>` to `outside` and puts a symlink to it in its place.
fn move_out_and_link(ws: &Workspace, rel: &str, outside: &Path) {
    let inside = ws.repo.join(rel);
    std::fs::rename(&inside, outside).unwrap();
    std::os::unix::fs::symlink(outside, &inside).unwrap();
}

#[test]
fn a_symlinked_lock_is_refused_and_its_target_is_left_byte_for_byte() {
    let (ws, victim) = backed_up();
    let shadow = victim.join("shadow");
    let secret = b"root:$6$salt$hash:19000:0:99999:7:::\n";
    std::fs::write(&shadow, secret).unwrap();
    let lock = ws.repo.join("lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&shadow, &lock).unwrap();
    for command in ["backup", "prune"] {
        let out = run_within(&ws, &[command], Duration::from_secs(60));
        out.assert_exit(1);
        out.assert_stderr_contains(&lock.display().to_string());
        out.assert_stderr_contains("is a symbolic link");
        out.assert_stderr_contains("remove it");
        assert_eq!(std::fs::read(&shadow).unwrap(), secret, "after {command}");
    }
    assert_eq!(ws.manifests().len(), 1, "a backup ran without its lock");
    // A dangling one is not followed to create its target either.
    std::fs::remove_file(&lock).unwrap();
    let planted = victim.join("created");
    std::os::unix::fs::symlink(&planted, &lock).unwrap();
    run_within(&ws, &["backup"], Duration::from_secs(60)).assert_exit(1);
    assert!(!planted.exists(), "the lock was created through a symlink");
    // Removed, as the message says, the next backup works.
    std::fs::remove_file(&lock).unwrap();
    run_within(&ws, &["backup"], Duration::from_secs(60)).assert_exit(0);
    canary_alive(&victim);
}

#[test]
fn a_fifo_at_lock_fails_backup_and_prune_at_once() {
    let (ws, victim) = backed_up();
    let lock = ws.repo.join("lock");
    std::fs::remove_file(&lock).unwrap();
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for command in ["backup", "prune"] {
        let started = std::time::Instant::now();
        let out = run_within(&ws, &[command], Duration::from_secs(60));
        out.assert_exit(1);
        out.assert_stderr_contains(&format!("{} is a FIFO", lock.display()));
        out.assert_stderr_contains("remove it");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{command} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(ws.manifests().len(), 1);
    canary_alive(&victim);
}

#[test]
fn a_symlinked_snapshot_data_directory_is_neither_read_nor_pruned_through() {
    let (ws, victim) = backed_up();
    let first = only_snapshot(&ws);
    let outside = victim.join("data-of-first");
    move_out_and_link(&ws, &format!("data/{first}"), &outside);
    let before = tree(&victim);
    let out = run_within(&ws, &["check", "--read-data"], Duration::from_secs(60));
    out.assert_exit(1);
    out.assert_stderr_contains("symbolic link");
    // A second snapshot pushes the first out (keep_last = 1): its data
    // is a symlink, which prune must refuse, not follow.
    run_within(&ws, &["backup"], Duration::from_secs(60)).assert_exit(0);
    let out = run_within(&ws, &["prune"], Duration::from_secs(60));
    out.assert_failed();
    out.assert_stderr_contains("symbolic link");
    assert_eq!(
        tree(&victim),
        before,
        "prune reached outside the repository"
    );
    canary_alive(&victim);
}

#[test]
fn symlinked_snapshots_and_data_directories_are_never_written_through() {
    let (ws, victim) = backed_up();
    move_out_and_link(&ws, "snapshots", &victim.join("snapshots"));
    let before = tree(&victim);
    for args in [&["backup"][..], &["check"][..], &["prune"][..]] {
        let out = run_within(&ws, args, Duration::from_secs(60));
        out.assert_failed();
        out.assert_stderr_contains("symbolic link");
        assert_eq!(tree(&victim), before, "{args:?} reached outside");
    }
    std::fs::remove_file(ws.repo.join("snapshots")).unwrap();
    std::fs::rename(victim.join("snapshots"), ws.repo.join("snapshots")).unwrap();

    move_out_and_link(&ws, "data", &victim.join("data"));
    let before = tree(&victim);
    for args in [&["backup"][..], &["check"][..], &["prune"][..]] {
        let out = run_within(&ws, args, Duration::from_secs(60));
        out.assert_failed();
        out.assert_stderr_contains("symbolic link");
        assert_eq!(tree(&victim), before, "{args:?} reached outside");
    }
    assert_eq!(ws.manifests().len(), 1);
    canary_alive(&victim);
}
