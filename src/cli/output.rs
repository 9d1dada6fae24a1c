//! Everything the CLI prints on stdout: JSON documents and human tables.
//! Logs go through `tracing` to stderr instead.

use serde::Serialize;

use super::Globals;
use crate::error::{Exit, Failure};

/// Prints one JSON document on stdout.
pub fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serialises")
    );
}

/// Prints a line for people on stdout.
pub fn line(text: impl AsRef<str>) {
    println!("{}", text.as_ref());
}

/// Reports a failure: on stderr always, and as a JSON document with --json.
pub fn failure(globals: &Globals, f: &Failure) {
    eprintln!("error: {}", f.message);
    if globals.json {
        json(&serde_json::json!({ "error": f.message, "exit_code": Exit::of(Err(f)).code() }));
    }
}

/// The lines that name deleted snapshots: those a later snapshot names as
/// its predecessor, and the newest one this host committed, when gone.
pub fn deletions(
    vanished: &[crate::repository::listing::Vanished],
    behind: Option<&crate::repository::listing::Behind>,
) -> Vec<String> {
    let mut out: Vec<String> = vanished
        .iter()
        .map(|v| {
            format!(
                "  VANISHED  {} (snapshot {} names it as its predecessor; prune did not remove it: someone deleted it from the store)",
                v.id, v.named_by
            )
        })
        .collect();
    if let Some(b) = behind {
        out.push(format!(
            "  BEHIND  the newest snapshot this host committed here, {}, is gone; the repository's newest is {}: \
             it was deleted or the store rolled back, and a restore would take an older snapshot",
            b.host_newest,
            b.repository_newest.as_deref().unwrap_or("none")
        ));
    }
    out
}
