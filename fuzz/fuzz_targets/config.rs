//! The configuration file: `model::config::Config::from_toml` (TOML, then
//! validation of every section), plus the `${VAR}` expansion and env-file
//! parsing it uses (`model::config::env`).
//!
//! The configuration names files it reads (env_file, password_file,
//! identity_file, …). A relative name is taken from the configuration's
//! folder, which here does not exist, so it is never read; input naming a
//! device, /proc, /sys, or an absolute path that is anything but a small
//! regular file or a folder is skipped, so that the fuzzer does not read
//! /dev/zero or wait on a pipe. TOML escapes (`\`) are skipped with it: the
//! decoded string would escape the check, and the escapes are the TOML
//! crate's, not ours.
#![no_main]

use std::path::Path;

use kompose_dr::model::config::Config;
use kompose_dr::model::config::env::{Vars, parse_env_file};
use libfuzzer_sys::fuzz_target;

/// The configuration's path: its folder does not exist.
const CONFIG_PATH: &str = "/nonexistent-kompose-dr-fuzz/kompose-dr.toml";

fn risky_path(s: &str) -> bool {
    if ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p)) {
        return true;
    }
    let p = Path::new(s);
    if !p.is_absolute() {
        return false;
    }
    match std::fs::metadata(p) {
        Ok(m) => !(m.is_dir() || (m.is_file() && m.len() < (1 << 20))),
        Err(_) => false,
    }
}

fn strings<'a>(v: &'a toml::Value, out: &mut Vec<&'a str>) {
    match v {
        toml::Value::String(s) => out.push(s),
        toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| {
            out.push(k);
            strings(v, out)
        }),
        _ => {}
    }
}

/// Whether the text could make `from_toml` read a file that hangs or is
/// huge (see the module's docs).
fn skip(text: &str) -> bool {
    if text.contains('\\') {
        return true;
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        return false; // refused before any file is read
    };
    let value = toml::Value::Table(table);
    let mut all = Vec::new();
    strings(&value, &mut all);
    let vars = Vars::from_env();
    all.iter().any(|s| {
        risky_path(s)
            || vars.expand(s).is_ok_and(|e| risky_path(&e))
            // env_file's variables could make any path; only a relative
            // env_file (never read here) is let through.
            || s.contains("${") && text.contains("env_file")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(vars) = parse_env_file(text) {
        let _ = vars.len();
    }
    if let Ok(v) = Vars::from_env().with_env_file_text(text) {
        let _ = v.expand(text);
    }
    if skip(text) {
        return;
    }
    match Config::from_toml(text, Path::new(CONFIG_PATH)) {
        Ok(c) => {
            let _ = format!("{c:?}");
            for r in &c.repositories {
                let _ = c
                    .repository_named(&r.name)
                    .expect("a configured repository is found");
            }
        }
        Err(e) => {
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "error line {line} of {} lines",
                    text.lines().count()
                );
            }
            let _ = e.to_string();
        }
    }
});
