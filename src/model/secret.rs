//! Secrets: values that must never reach argv, logs, errors, manifests or
//! JSON output.
//!
//! A [`Secret`] prints as `***` in `Debug` and has no `Display`; the value is
//! reached only through [`Secret::expose`], at the one place that hands it to
//! a child's environment or a client library. A [`Redactor`] scrubs known
//! secret values from text that comes from outside (a child's stderr, a
//! server's error message) before it is logged or stored.

use std::fmt;

/// A secret string (password). Cloning is allowed; printing is not.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for handing to a client library or a child's
    /// environment. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Replaces every known secret value in a text with `***`.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    /// A redactor for the given secrets (empty values are ignored).
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let mut secrets: Vec<Secret> = secrets
            .into_iter()
            .filter(|s| !s.expose().is_empty())
            .collect();
        // Longest first, so that a secret containing another is scrubbed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Redactor { secrets }
    }

    /// The text with every secret value replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let r = Redactor::new([Secret::new("pw"), Secret::new("longpw"), Secret::new("")]);
        assert_eq!(r.scrub("a longpw b pw c"), "a *** b *** c");
    }
}
