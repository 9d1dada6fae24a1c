//! Layer 4: the operations an operator or the agent runs — backup, restore,
//! verify, drill, prune, check, doctor, copy. Each one composes the layers below
//! (sources, restore targets, scratch instances, events, the repository)
//! and returns a report; the CLI and the agent only choose what to run and
//! how to show the result.

pub mod backup;
pub mod bootstrap;
pub mod check;
pub mod copy;
pub mod doctor;
pub mod drill;
pub mod prune;
pub mod restore;
pub mod verify;
pub mod wal;
