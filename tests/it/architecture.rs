//! The layers point one way: `scripts/module-graph --check` refuses an
//! import up a layer or a cycle between components (docs/ARCHITECTURE.md).
//! CI runs the script too; this keeps `cargo test` honest on its own.

use std::process::Command;

use crate::support::{Ran, require};

#[test]
fn no_import_points_up_a_layer_and_no_cycle() {
    require("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/module-graph");
    let ran = Ran::of(Command::new("python3").arg(script).arg("--check"));
    ran.assert_exit(0);
    ran.assert_stdout_contains("no arrow up, no cycle");
}

/// Every `src/…`, `tests/…` and `scripts/…` path docs/ARCHITECTURE.md cites
/// is a file or folder in the tree (`{a,b}` alternatives expanded; `<kind>`
/// placeholders skipped), so the map does not go on citing files that moved.
#[test]
fn every_path_the_architecture_cites_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let cited = cited_paths(&doc);
    assert!(
        cited.len() > 20,
        "found only {} paths in docs/ARCHITECTURE.md: is the parser broken?",
        cited.len()
    );
    let missing: Vec<&String> = cited.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md cites paths that do not exist (fix the doc): {missing:?}"
    );
}

/// The `src/…`, `tests/…` and `scripts/…` paths in `doc`, braces
/// expanded, placeholders left out.
fn cited_paths(doc: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = doc;
    while let Some(at) = ["src/", "tests/", "scripts/"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let starts_a_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != '/');
        let (path, after) = path_at(&rest[at..]);
        rest = after;
        if starts_a_word && !path.contains('<') {
            paths.extend(expand_braces(path.trim_end_matches('.')));
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// The path at the start of `text` (a comma ends it outside braces), and
/// what follows it.
fn path_at(text: &str) -> (&str, &str) {
    let mut depth = 0;
    let end = text
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth > 0 => {}
                c if c.is_alphanumeric() || "_./-<>".contains(c) => {}
                _ => return true,
            }
            false
        })
        .map_or(text.len(), |(i, _)| i);
    text.split_at(end)
}

/// `a/{b,c}.rs` as `a/b.rs` and `a/c.rs` (one level of braces).
fn expand_braces(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) if open < close => path[open + 1..close]
            .split(',')
            .map(|alt| format!("{}{alt}{}", &path[..open], &path[close + 1..]))
            .collect(),
        _ => vec![path.to_owned()],
    }
}

#[test]
fn cited_paths_are_read_with_braces_and_without_punctuation() {
    let doc = "see `src/a/{b,c}.rs`, src/d.rs. and `src/<kind>.rs` or tests/it/src/e.rs, scripts/f";
    assert_eq!(
        cited_paths(doc),
        [
            "scripts/f",
            "src/a/b.rs",
            "src/a/c.rs",
            "src/d.rs",
            "tests/it/src/e.rs"
        ]
    );
}
