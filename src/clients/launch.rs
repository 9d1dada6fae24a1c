//! Where a client tool runs: here, as a child process, or inside the
//! server's container through the engine. Both give a
//! [`Running`] with the same streams, so pg_dump,
//! pg_restore, psql and redis-cli are driven the same way in both places.
//!
//! A program with bulk output (pg_dump, pg_basebackup) runs in a container
//! behind [`BATCH_SCRIPT`]: the engine's exec stream costs per frame and
//! pg_dump writes 4 KiB at a time, so its stdout is gathered into 1 MiB
//! writes by `dd` inside the container (measured in `scripts/bench-docker`).

use crate::engine::{Engine, EngineError, ExecSpec};
use crate::model::config::ContainerRef;
use crate::process::{ProcessError, Running};

/// Why a client program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The local program could not be spawned.
    #[error(transparent)]
    Local(#[from] ProcessError),
    /// The engine could not be reached, or the exec in the container failed.
    #[error(transparent)]
    Container(#[from] EngineError),
}

impl crate::error::Classify for LaunchError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// The `sh -c` script that runs `"$@"` (program and arguments as
/// positional parameters, never in the script's text) with its stdout
/// gathered into 1 MiB writes by `dd` (whose statistics are silenced);
/// the program's stderr is untouched and the exit status is the
/// program's own (a POSIX shell has no `pipefail`: the status comes back
/// on fd 3). A `dd` that fails after the program succeeded fails it too.
/// Without `dd` in the image the program runs as it is.
pub const BATCH_SCRIPT: &str = concat!(
    "command -v dd >/dev/null 2>&1 || exec \"$@\"\n",
    "exec 4>&1\n",
    "s=$( { { \"$@\" 3>&- 4>&-; printf '%s ' \"$?\" >&3; } ",
    "| dd ibs=64k obs=1M 2>/dev/null >&4 3>&- 4>&-; printf '%s' \"$?\"; } 3>&1 )\n",
    "p=${s%% *} d=${s##* }\n",
    "[ \"$p\" = 0 ] || exit \"${p:-1}\"\n",
    "[ \"$d\" = 0 ] || { echo \"kompose-dr: dd failed ($d) after $1 succeeded\" >&2; exit \"$d\"; }\n",
);

/// The command line that runs `program` behind [`BATCH_SCRIPT`]; its
/// arguments are appended after it.
pub fn batched(program: &str) -> Vec<String> {
    ["sh", "-c", BATCH_SCRIPT, "kompose-dr", program]
        .map(str::to_owned)
        .to_vec()
}

/// A program about to run, here or in a container.
pub enum Launch {
    /// A local child process.
    Local(tokio::process::Command),
    /// A process inside a container.
    Container {
        /// The container.
        container: ContainerRef,
        /// What to run there.
        spec: ExecSpec,
    },
    /// A process in a client container with its stdout on a FIFO
    /// ([`crate::clients::postgres::pipe`]).
    Piped {
        /// The client container.
        container: ContainerRef,
        /// What to run there.
        spec: ExecSpec,
        /// Where its stdout goes.
        fifo: crate::clients::postgres::pipe::Fifo,
    },
}

impl Launch {
    /// `program` inside `container`, as the container's default user.
    pub fn container(container: &ContainerRef, program: &str) -> Launch {
        Launch::Container {
            container: container.clone(),
            spec: ExecSpec::new([program]),
        }
    }

    /// `program` inside `container` with its stdout gathered into large
    /// writes ([`BATCH_SCRIPT`]), for a program with bulk output.
    pub fn container_batched(container: &ContainerRef, program: &str) -> Launch {
        Launch::Container {
            container: container.clone(),
            spec: ExecSpec::new(batched(program)),
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, a: impl AsRef<str>) -> &mut Launch {
        match self {
            Launch::Local(c) => {
                c.arg(a.as_ref());
            }
            Launch::Container { spec, .. } | Launch::Piped { spec, .. } => {
                spec.cmd.push(a.as_ref().to_owned());
            }
        }
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets an environment variable (where passwords go).
    pub fn env(&mut self, name: &str, value: &str) -> &mut Launch {
        match self {
            Launch::Local(c) => {
                c.env(name, value);
            }
            Launch::Container { spec, .. } | Launch::Piped { spec, .. } => {
                *spec = std::mem::take(spec).env(name, value);
            }
        }
        self
    }

    /// Starts it with stdout and stderr attached, and stdin if `stdin`.
    pub async fn start(self, program: &str, stdin: bool) -> Result<Running, LaunchError> {
        match self {
            Launch::Local(cmd) => Ok(Running::spawn(cmd, program, stdin, true)?),
            Launch::Container {
                container,
                mut spec,
            } => {
                spec.stdin = stdin;
                let engine = Engine::connect(container.engine.as_deref())?;
                Ok(engine.exec(&container.name, spec).await?)
            }
            Launch::Piped {
                container,
                mut spec,
                fifo,
            } => {
                spec.stdin = stdin;
                fifo.start(&container, spec).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use super::*;

    /// The shells the script must work in: the machine's `sh` (dash on
    /// Debian images), busybox's (Alpine images, the stack's) and bash.
    fn shells() -> Vec<Vec<&'static str>> {
        let mut shells = vec![vec!["/bin/sh"]];
        if std::path::Path::new("/bin/busybox").exists() {
            shells.push(vec!["/bin/busybox", "sh"]);
        }
        if std::path::Path::new("/bin/bash").exists() {
            shells.push(vec!["/bin/bash"]);
        }
        shells
    }

    /// Runs `program args` behind the script in `shell`, with `path` as
    /// PATH if given.
    fn run(shell: &[&str], program: &[&str], path: Option<&str>) -> Output {
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..]);
        let argv = batched(program[0]);
        cmd.args(&argv[1..]).args(&program[1..]);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        cmd.output().unwrap()
    }

    #[test]
    fn the_batched_command_line_keeps_arguments_out_of_the_script() {
        let container = ContainerRef {
            name: "core-postgres".into(),
            engine: None,
        };
        let mut l = Launch::container_batched(&container, "pg_dump");
        l.args(["--file=x'; rm -rf /", "$(id)"])
            .env("PGPASSWORD", "pw");
        let Launch::Container { spec, .. } = l else {
            panic!("not a container launch")
        };
        assert_eq!(
            spec.cmd,
            [
                "sh",
                "-c",
                BATCH_SCRIPT,
                "kompose-dr",
                "pg_dump",
                "--file=x'; rm -rf /",
                "$(id)"
            ]
        );
        assert_eq!(spec.env, [("PGPASSWORD".to_owned(), "pw".to_owned())]);
    }

    /// Every byte in order, the program's stderr as it wrote it, its
    /// status.
    #[test]
    fn output_and_status_are_the_programs_own() {
        let expected: String = (1..=500_000).map(|i| format!("{i}\n")).collect();
        for shell in shells() {
            let out = run(&shell, &["sh", "-c", "seq 1 500000; echo said >&2"], None);
            assert_eq!(out.status.code(), Some(0), "{shell:?}: {:?}", out.status);
            assert!(
                out.stdout == expected.as_bytes(),
                "{shell:?}: output differs"
            );
            assert_eq!(out.stderr, b"said\n", "{shell:?}");
            let out = run(
                &shell,
                &[
                    "sh",
                    "-c",
                    "printf partial; echo 'pg_dump: error: no' >&2; exit 3",
                ],
                None,
            );
            assert_eq!(out.status.code(), Some(3), "{shell:?}: {out:?}");
            assert_eq!(out.stdout, b"partial");
            assert_eq!(out.stderr, b"pg_dump: error: no\n", "{shell:?}");
            let out = run(&shell, &["sh", "-c", "kill -9 $$"], None);
            assert_eq!(out.status.code(), Some(137), "{shell:?}: {out:?}");
        }
    }

    /// Arguments arrive verbatim: spaces, quotes and `$(…)` are data.
    #[test]
    fn arguments_are_passed_verbatim() {
        for shell in shells() {
            let args = ["a b", "'q\"", "$(echo injected)", "", "--x=$HOME"];
            let mut program = vec!["printf", "[%s]"];
            program.extend(args);
            let out = run(&shell, &program, None);
            assert_eq!(out.status.code(), Some(0), "{shell:?}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "[a b]['q\"][$(echo injected)][][--x=$HOME]",
                "{shell:?}"
            );
        }
    }

    /// Without `dd` the program runs as it is; a `dd` that fails fails the
    /// whole even when the program succeeded.
    #[test]
    fn without_dd_the_program_runs_plainly_and_a_failing_dd_fails() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            &["/bin/sh"],
            &["/bin/sh", "-c", "echo plain; exit 4"],
            Some(&dir.path().display().to_string()),
        );
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert_eq!(out.stdout, b"plain\n");
        let dd = dir.path().join("dd");
        std::fs::write(&dd, "#!/bin/sh\ncat >/dev/null\nexit 5\n").unwrap();
        std::fs::set_permissions(&dd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = run(
            &["/bin/sh"],
            &["/bin/sh", "-c", "echo lost"],
            Some(&format!("{}:/usr/bin:/bin", dir.path().display())),
        );
        assert_eq!(out.status.code(), Some(5), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("dd failed (5)"),
            "{out:?}"
        );
    }
}
