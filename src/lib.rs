//! kompose-dr: backup, restore and disaster recovery for a self-hosted
//! Docker Compose stack (PostgreSQL, Redis, files such as Traefik's
//! `acme.json`).
//!
//! The crate is a library with a thin binary. The layout follows the domain:
//!
//! - [`config`]: the TOML configuration, parsed and validated once into
//!   types that cannot be invalid (recipients, URLs, secrets).
//! - [`sources`]: what is backed up — PostgreSQL databases and globals,
//!   Redis persistence files, plain files — each producing a byte stream.
//! - [`pipeline`]: the bounded streaming chain source → zstd → age →
//!   sha256 → storage, and its inverse for reading.
//! - [`storage`]: repository backends behind one small trait
//!   ([`storage::Backend`]); `local` today.
//! - [`repository`]: the open repository layout on top of a backend —
//!   marker, manifests (the commit point), artifact paths.
//! - [`backup`]: one backup run: selects sources, runs them with bounded
//!   parallelism, commits the manifest last.
//! - [`restore`]: plan by snapshot or point in time, restore into scratch
//!   targets and swap them in only after every check held.
//! - [`events`]: MQTT events and the Prometheus textfile.
//! - [`cli`]: one file per command; maps errors to exit codes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod cli;
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
