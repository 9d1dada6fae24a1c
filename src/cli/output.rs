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

pub use crate::ops::check::deletions;
