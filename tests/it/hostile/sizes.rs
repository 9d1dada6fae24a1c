//! Readers stop where the signed manifest says: zstd bombs, oversized signatures and manifests, too many manifests.
//!
//! A zstd bomb is written over a real archive with the stock tools, the
//! manifest untouched; the binary runs under an `RLIMIT_FSIZE` of the
//! manifest's `plaintext_bytes` + 1 MiB (`prlimit --fsize`), so a single
//! write past it anywhere — beside the target, in `$TMPDIR` — would kill it
//! with SIGXFSZ instead of failing with a message.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{backed_up, canary_alive};
use crate::support::{self, Ran, Workspace};

/// 300 MB of zeros: zstd makes a few KiB of them.
const BOMB: &str = "300M";

/// The bomb, then 100 KiB that do not compress: the stored bytes then run
/// past age's first 64 KiB chunk, as a bomb of gigabytes does, so the end
/// of the stored bytes (and their size check) is not reached before zstd
/// has decompressed the zeros: only the plaintext size can stop them.
fn bomb_then_noise() -> String {
    format!("{{ head -c {BOMB} /dev/zero; head -c 100K /dev/urandom; }}")
}

/// What a file may grow to: the manifest's plaintext size and 1 MiB.
fn allowance(plaintext_bytes: u64) -> u64 {
    plaintext_bytes + (1 << 20)
}

/// `ws.run(args)` with no file allowed to grow past `fsize` bytes.
fn run_limited(ws: &Workspace, fsize: u64, args: &[&str]) -> Ran {
    let base = ws.kdr();
    let mut c = Command::new(support::require("prlimit"));
    c.arg(format!("--fsize={fsize}"))
        .arg("--")
        .arg(base.get_program())
        .args(base.get_args())
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    Ran::of(&mut c)
}

/// `sh -c SCRIPT` piped into `zstd -q | age -r RECIPIENT > archive`.
fn bomb_over(ws: &Workspace, archive: &Path, script: &str) {
    support::require("zstd");
    support::require("age");
    support::run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{script} | zstd -q | age -r \"$1\" > \"$2\""))
            .arg("sh")
            .arg(&ws.recipient)
            .arg(archive),
    );
}

/// Every file under `dir`, with its size.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out
}

/// The newest snapshot's artifact of `source`: its archive path, stored
/// and plaintext sizes.
fn figures(ws: &Workspace, source: &str) -> (std::path::PathBuf, u64, u64) {
    let m = &ws.manifests()[0];
    let a = Workspace::artifact(m, source);
    (
        ws.archive(a),
        a["stored_bytes"].as_u64().unwrap(),
        a["plaintext_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn a_zstd_bomb_over_a_file_archive_writes_nothing_past_the_manifest() {
    let (ws, victim) = backed_up();
    // A 400 KiB acme.json, as in the report: its archive is larger than
    // the bomb, so only the plaintext size can stop it.
    let acme = ws.dir.path().join("acme.json");
    support::run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c 400K /dev/urandom | base64 > '{}'",
        acme.display()
    )));
    ws.run(&["backup"]).assert_exit(0);
    let (archive, stored_bytes, plaintext_bytes) = figures(&ws, "files/acme");
    let rel = archive
        .strip_prefix(&ws.repo)
        .unwrap()
        .display()
        .to_string();
    bomb_over(&ws, &archive, &bomb_then_noise());
    let bomb = std::fs::metadata(&archive).unwrap().len();
    assert!(
        bomb < stored_bytes,
        "the bomb ({bomb}) must be smaller than the archive ({stored_bytes})"
    );

    let out_dir = ws.dir.path().join("out-dir");
    std::fs::create_dir(&out_dir).unwrap();
    let to = out_dir.join("acme.json");
    let fsize = allowance(plaintext_bytes);
    let out = run_limited(
        &ws,
        fsize,
        &[
            "restore",
            "--source",
            "files/acme",
            "--to",
            to.to_str().unwrap(),
            "--yes",
        ],
    );
    out.assert_exit(1);
    out.assert_stderr_contains(&rel);
    out.assert_stderr_contains(&format!("more than the {plaintext_bytes} bytes"));
    assert!(!to.exists(), "the bomb was restored");
    assert_eq!(
        files(&out_dir),
        Vec::<(String, u64)>::new(),
        "left beside the target"
    );
    for (f, size) in files(&ws.tmp()) {
        assert!(size <= fsize, "{f}: {size} bytes in TMPDIR");
    }

    // check --read-data names it the same way, as soon as it shows.
    let out = run_limited(&ws, fsize, &["--json", "check", "--read-data"]);
    out.assert_exit(1);
    let report = out.json();
    let damaged = report["damaged"].as_array().unwrap();
    assert!(
        damaged.iter().any(|d| d["path"] == rel.as_str()
            && d["problem"]
                .as_str()
                .unwrap()
                .contains(&format!("more than the {plaintext_bytes} bytes"))),
        "{report:#}"
    );
    canary_alive(&victim);
}

#[test]
fn a_bomb_larger_than_the_archive_is_read_no_further_than_stored_bytes() {
    // The 15-byte acme.json of `backed_up`: its archive is a few hundred
    // bytes, the bomb kilobytes: the stored size stops it first.
    let (ws, victim) = backed_up();
    let (archive, stored_bytes, plaintext_bytes) = figures(&ws, "files/acme");
    bomb_over(&ws, &archive, &format!("head -c {BOMB} /dev/zero"));
    assert!(std::fs::metadata(&archive).unwrap().len() > stored_bytes);
    let to = ws.dir.path().join("restored.json");
    let out = run_limited(
        &ws,
        allowance(plaintext_bytes),
        &[
            "restore",
            "--source",
            "files/acme",
            "--to",
            to.to_str().unwrap(),
            "--yes",
        ],
    );
    out.assert_exit(1);
    out.assert_stderr_contains(&format!(
        "longer than the {stored_bytes} bytes the manifest says"
    ));
    assert!(!to.exists());
    // Without the key, check stops there too.
    let out = ws.run(&["--json", "check"]);
    out.assert_exit(1);
    assert!(
        out.stdout()
            .contains(&format!("more than the {stored_bytes} bytes")),
        "{}",
        out.all()
    );
    canary_alive(&victim);
}

#[test]
fn a_tar_bomb_over_a_directory_archive_writes_nothing_past_the_manifest() {
    let ws = Workspace::new();
    let root = ws.dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    support::run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c 400K /dev/urandom > '{}'",
        root.join("attachment.bin").display()
    )));
    ws.configure(&format!(
        "[[directories]]\nname = \"d\"\npath = \"{}\"\n",
        root.display()
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let (archive, stored_bytes, plaintext_bytes) = figures(&ws, "directories/d");
    // One file of 300 MB of zeros in a tar (sparse on disk, read whole),
    // then one of noise (see `bomb_then_noise`).
    let forge = ws.dir.path().join("forge");
    std::fs::create_dir(&forge).unwrap();
    support::run_ok(
        Command::new("truncate")
            .args(["-s", BOMB])
            .arg(forge.join("attachment.bin")),
    );
    support::run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c 100K /dev/urandom > '{}'",
        forge.join("noise.bin").display()
    )));
    bomb_over(
        &ws,
        &archive,
        &format!("tar cf - -C '{}' attachment.bin noise.bin", forge.display()),
    );
    std::fs::remove_dir_all(&forge).unwrap();
    assert!(std::fs::metadata(&archive).unwrap().len() < stored_bytes);

    let out_dir = ws.dir.path().join("out-dir");
    std::fs::create_dir(&out_dir).unwrap();
    let to = out_dir.join("d");
    let fsize = allowance(plaintext_bytes);
    let out = run_limited(
        &ws,
        fsize,
        &[
            "restore",
            "--source",
            "directories/d",
            "--to",
            to.to_str().unwrap(),
            "--yes",
        ],
    );
    out.assert_exit(1);
    out.assert_stderr_contains("directories/d");
    out.assert_stderr_contains(&format!("more than the {plaintext_bytes} bytes"));
    assert!(!to.exists(), "the bomb was restored");
    assert_eq!(
        files(&out_dir),
        Vec::<(String, u64)>::new(),
        "left beside the target"
    );
    for (f, size) in files(&ws.tmp()) {
        assert!(size <= fsize, "{f}: {size} bytes in TMPDIR");
    }
}
