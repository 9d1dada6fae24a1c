//! The integration tests: one binary, one module per area, sharing the
//! harness in `support/` (throw-away servers, the workspace that drives the
//! real `kompose-dr` binary, and the assertions on its outcome).

// The length rule (clippy.toml, 80 lines) is for src/: an integration test
// reads as one story, from the set-up through the incident to the check,
// and splitting it would scatter that story across helpers.
#![allow(
    clippy::too_many_lines,
    reason = "an integration test is one scenario, read top to bottom"
)]

mod support;

mod agent;
mod architecture;
mod backup_postgres;
mod backup_redis_files;
mod bootstrap;
mod cli;
mod copy;
mod crash;
mod directories;
mod docker_native;
mod docker_rig;
mod doctor;
mod events;
mod examples;
mod fidelity;
mod fresh_stack;
mod hostile;
mod notify;
mod operations;
mod pitr;
mod pitr_container;
mod pitr_docker;
mod redis_fidelity;
mod restore;
mod runbook;
mod runbook_e;
mod s3;
mod stack_drill;
mod systemd;
mod systemd_boot;
mod timeouts;
mod verify_drill;
mod wal_container;
