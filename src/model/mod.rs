//! Layer 0: plain data. The configuration as parsed and validated, the
//! repository's documents (manifest, facts), policies and retention rules,
//! source selection, cron schedules, secrets and time and size formats.
//!
//! Nothing here starts a process, opens a connection or touches a
//! repository; every other layer builds on these types. Modules here import
//! only each other (and [`crate::error`]).

pub mod config;
pub mod facts;
pub mod host;
pub mod manifest;
pub mod policy;
pub mod retention;
pub mod s3_limits;
pub mod schedule;
pub mod secret;
pub mod selection;
pub mod source_name;
pub mod time;
pub mod units;
pub mod wal;

impl crate::error::Classify for config::ConfigError {
    /// A configuration mistake is always the operator's to fix (exit 2).
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Usage
    }
}
