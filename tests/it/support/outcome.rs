//! What a finished command left behind, and the assertions on it.
//!
//! Every failed assertion on a [`Ran`] panics with the command line, the
//! exit status and both output streams, so a CI log says why without a
//! rerun (garage's `expect_success_output` does the same). `#[track_caller]`
//! points the panic at the test's line, not at this file.

use std::process::{Command, ExitStatus, Output};

/// A finished command: its command line, exit status, stdout and stderr.
pub struct Ran {
    what: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ran {
    /// Runs `cmd` to completion, capturing both streams.
    #[track_caller]
    pub fn of(cmd: &mut Command) -> Ran {
        let what = describe(cmd);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
        Ran::new(what, out)
    }

    /// The output of a command spawned by hand (`wait_with_output`), named
    /// `what` in failure messages.
    pub fn new(what: impl Into<String>, out: Output) -> Ran {
        Ran {
            what: what.into(),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// The exit code; `None` when a signal ended the command.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr, lossily decoded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout followed by stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// stdout parsed as JSON (`--json` output).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not JSON ({e})")))
    }

    /// Asserts the exit code is `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Ran {
        if self.code() != Some(code) {
            self.fail(&format!("expected exit {code}"));
        }
        self
    }

    /// Asserts the exit code is one of `codes`.
    #[track_caller]
    pub fn assert_exit_in(&self, codes: &[i32]) -> &Ran {
        if !self.code().is_some_and(|c| codes.contains(&c)) {
            self.fail(&format!("expected an exit in {codes:?}"));
        }
        self
    }

    /// Asserts the command did not succeed (a non-zero exit or a signal).
    #[track_caller]
    pub fn assert_failed(&self) -> &Ran {
        if self.status.success() {
            self.fail("expected a failure");
        }
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_contains(&self, needle: &str) -> &Ran {
        if !self.stdout().contains(needle) {
            self.fail(&format!("expected {needle:?} in stdout"));
        }
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Ran {
        if !self.stderr().contains(needle) {
            self.fail(&format!("expected {needle:?} in stderr"));
        }
        self
    }

    #[track_caller]
    fn fail(&self, expectation: &str) -> ! {
        panic!(
            "`{}`: {expectation}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }
}

/// `program arg…`, with the program's file name only and long arguments
/// (a whole script after `bash -c`) cut short.
fn describe(cmd: &Command) -> String {
    const LONG: usize = 120;
    let program = std::path::Path::new(cmd.get_program());
    let mut s = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        match a.char_indices().nth(LONG) {
            Some((cut, _)) => {
                s.push_str(&a[..cut]);
                s.push('…');
            }
            None => s.push_str(&a),
        }
    }
    s
}
