//! Where a client tool runs: here, as a child process, or inside the
//! server's container through the engine. Both give a
//! [`Running`](crate::process::Running) with the same streams, so pg_dump,
//! pg_restore, psql and redis-cli are driven the same way in both places.

use crate::engine::{Engine, ExecSpec};
use crate::model::config::ContainerRef;
use crate::process::Running;

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
}

impl Launch {
    /// `program` inside `container`, as the container's default user.
    pub fn container(container: &ContainerRef, program: &str) -> Launch {
        Launch::Container {
            container: container.clone(),
            spec: ExecSpec::new([program]),
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, a: impl AsRef<str>) -> &mut Launch {
        match self {
            Launch::Local(c) => {
                c.arg(a.as_ref());
            }
            Launch::Container { spec, .. } => spec.cmd.push(a.as_ref().to_owned()),
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
            Launch::Container { spec, .. } => {
                *spec = std::mem::take(spec).env(name, value);
            }
        }
        self
    }

    /// Starts it with stdout and stderr attached, and stdin if `stdin`.
    pub async fn start(self, program: &str, stdin: bool) -> Result<Running, String> {
        match self {
            Launch::Local(cmd) => {
                Running::spawn(cmd, program, stdin, true).map_err(|e| e.to_string())
            }
            Launch::Container {
                container,
                mut spec,
            } => {
                spec.stdin = stdin;
                let engine =
                    Engine::connect(container.engine.as_deref()).map_err(|e| e.to_string())?;
                engine
                    .exec(&container.name, spec)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}
