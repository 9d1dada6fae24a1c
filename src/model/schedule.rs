//! Cron schedules, parsed once where they are read (the configuration's
//! `prune_schedule` and `drill_schedule`, a policy's `schedule`) and carried
//! as a typed value from then on.
//!
//! The expression has a seconds field first (`sec min hour day month
//! weekday`, as the `cron` crate reads it). The text as written is kept next
//! to the parsed form so that logs and listings show what the operator wrote,
//! not a normalised rendering. Each caller words its own error message,
//! because the example it suggests depends on what is being scheduled.

use std::fmt;
use std::str::FromStr;

/// A validated cron expression together with the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    cron: cron::Schedule,
    text: String,
}

impl Schedule {
    /// The parsed expression, for computing the next run.
    pub fn cron(&self) -> &cron::Schedule {
        &self.cron
    }

    /// The expression exactly as it was written in the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Schedule {
    type Err = cron::error::Error;

    /// Parses a cron expression with a seconds field first; the error is
    /// the `cron` crate's own, for the caller to wrap in its message.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Schedule {
            cron: cron::Schedule::from_str(text)?,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for Schedule {
    /// Shows the expression as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_as_written() {
        let s: Schedule = "0 30 4 * * *".parse().unwrap();
        assert_eq!(s.as_str(), "0 30 4 * * *");
        assert_eq!(s.to_string(), "0 30 4 * * *");
        assert!(s.cron().upcoming(chrono::Utc).next().is_some());
    }

    #[test]
    fn refuses_what_cron_refuses() {
        assert!("30 4 * *".parse::<Schedule>().is_err());
        assert!("not a schedule".parse::<Schedule>().is_err());
    }
}
