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
