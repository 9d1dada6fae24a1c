//! kompose-dr: backup, restore and disaster recovery for a self-hosted
//! Docker Compose stack (PostgreSQL, Redis, files such as Traefik's
//! `acme.json`). The product contract is docs/DESIGN.md; how the code is
//! arranged is docs/ARCHITECTURE.md.
//!
//! The crate is a library with a thin binary, in five layers; a module uses
//! only its own layer and those below (`scripts/module-graph --check`):
//!
//! 0. [`model`] (plain data: configuration, manifest, facts, policies,
//!    retention, selection, secrets, time and sizes) and [`error`] (the
//!    error policy and the one mapping to exit codes).
//! 1. [`storage`] (backends behind [`storage::Backend`] and the key
//!    layout), [`pipeline`] (source → zstd → age → sha256 → storage, and
//!    back) and [`process`] (children, their status and stderr).
//! 2. [`repository`]: the open repository format on a backend — marker,
//!    manifests (the commit point), the writer lock and lease; [`clients`]:
//!    PostgreSQL and Redis connections, client-tool choice and `Launch`.
//! 3. [`sources`] (what is backed up), [`restore`] (plans and targets),
//!    [`scratch`] (throw-away servers for verify and drills) and [`events`]
//!    (MQTT and the metrics textfile).
//! 4. [`ops`]: backup, verify, drill, prune, check, doctor — shared by the
//!    CLI and the agent.
//! 5. [`cli`] (one file per command) and [`agent`] (the scheduler).
// `deny`, not `forbid`: one audited exception, the `pre_exec` of
// `process::die_with_parent` (a throw-away server must die with us).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod clients;
pub mod engine;
pub mod error;
pub mod events;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod process;
pub mod repository;
pub mod restore;
pub mod scratch;
pub mod sources;
pub mod storage;
