//! The shipped systemd units verify, the timers' calendars parse, and
//! scripts/install puts everything in place.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{Ran, require};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");

#[test]
fn every_unit_verifies() {
    require("systemd-analyze");
    // The units name the installed binary; point them at the one built here.
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(UNITS).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "/usr/local/bin/kompose-dr",
            env!("CARGO_BIN_EXE_kompose-dr"),
        );
        let to = dir.path().join(p.file_name().unwrap());
        std::fs::write(&to, text).unwrap();
        units.push(to);
    }
    assert!(units.len() >= 6);
    let out = Ran::of(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&units),
    );
    out.assert_exit(0);
    let stderr = out.stderr();
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");

    for name in ["backup", "prune", "drill", "agent"] {
        let unit =
            std::fs::read_to_string(Path::new(UNITS).join(format!("kompose-dr-{name}.service")))
                .unwrap();
        for key in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "ReadWritePaths=",
            "OnFailure=",
            "User=kompose-dr",
            "CapabilityBoundingSet=",
        ] {
            assert!(unit.contains(key), "kompose-dr-{name}.service lacks {key}");
        }
    }
}

#[test]
fn every_credential_is_optional() {
    // A LoadCredential= whose file is absent fails the unit (243/CREDENTIALS)
    // unless a SetCredential= of the same name gives a default; the empty
    // line kompose-dr takes as not set.
    let mut n = 0;
    for e in std::fs::read_dir(UNITS).unwrap() {
        let p = e.unwrap().path();
        let unit = std::fs::read_to_string(&p).unwrap();
        for line in unit.lines() {
            let Some(spec) = line.strip_prefix("LoadCredential=") else {
                continue;
            };
            let (name, path) = spec.split_once(':').unwrap();
            assert!(path.starts_with('/'), "{}: {line}", p.display());
            assert!(
                unit.lines()
                    .any(|l| l == format!("SetCredential={name}:\\n")),
                "{}: {name} has no SetCredential={name}:\\n default",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 10, "{n} credentials");
}

#[test]
fn every_timer_calendar_parses() {
    require("systemd-analyze");
    let mut n = 0;
    for e in std::fs::read_dir(UNITS).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "timer") {
            continue;
        }
        let unit = std::fs::read_to_string(&p).unwrap();
        assert!(unit.contains("Persistent=true"), "{}", p.display());
        for cal in unit.lines().filter_map(|l| l.strip_prefix("OnCalendar=")) {
            let out = Ran::of(Command::new("systemd-analyze").args(["calendar", cal]));
            out.assert_exit(0);
            n += 1;
        }
    }
    assert!(n >= 2);
    // The drill runs on the first day of each quarter.
    let out = Ran::of(Command::new("systemd-analyze").args([
        "calendar",
        "--iterations=4",
        "*-01,04,07,10-01 05:00:00",
    ]));
    let s = out.stdout();
    for month in [
        "-01-01 05:00:00",
        "-04-01 05:00:00",
        "-07-01 05:00:00",
        "-10-01 05:00:00",
    ] {
        assert!(s.contains(month), "{month} not in {s}");
    }
}

#[test]
fn install_puts_everything_in_place_and_keeps_edits() {
    let root = tempfile::tempdir().unwrap();
    let run = || {
        let out = Ran::of(
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install"))
                .env("DESTDIR", root.path())
                .env("KDR_BIN", env!("CARGO_BIN_EXE_kompose-dr")),
        );
        out.assert_exit(0);
    };
    run();
    let r = root.path();
    for p in [
        "usr/local/bin/kompose-dr",
        "etc/systemd/system/kompose-dr-backup.timer",
        "etc/systemd/system/kompose-dr-drill.service",
        "etc/systemd/system/kompose-dr-init.service",
        "etc/kompose-dr/kompose-dr.toml",
        "etc/kompose-dr/policies/kompose-nightly.toml",
        "etc/kompose-dr/restore-drills/kompose-quarterly.toml",
        "usr/local/share/kompose-dr/alerts.yml",
        "usr/local/share/doc/kompose-dr/RUNBOOK.md",
    ] {
        assert!(r.join(p).exists(), "{p}");
    }
    assert_eq!(
        std::fs::metadata(r.join("etc/kompose-dr/kompose-dr.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(r.join("etc/kompose-dr/credentials"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    std::fs::write(r.join("etc/kompose-dr/kompose-dr.toml"), "# edited").unwrap();
    run();
    assert_eq!(
        std::fs::read_to_string(r.join("etc/kompose-dr/kompose-dr.toml")).unwrap(),
        "# edited"
    );
}
