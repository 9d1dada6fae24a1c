//! Where a client tool runs: here, as a child process, or inside the
//! server's container through the engine. Both give a
//! [`Running`] with the same streams, so pg_dump,
//! pg_restore, psql and redis-cli are driven the same way in both places.

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
        }
    }
}
