//! pg_dump off the engine's exec stream: a dump of a server in a container
//! runs in the client container beside it ([`super::beside`]), writing
//! into a FIFO in a private host directory that the container sees
//! through a bind mount, and kompose-dr reads the FIFO directly. Only
//! pg_dump's stderr and its exit status still go through the engine.
//!
//! The engine's exec stream copies every byte through containerd's shim
//! and dockerd, frame by frame: a 1 GiB dump cost about twice pg_dump's own
//! time that way (`scripts/bench-docker`, c/i). A FIFO is a kernel pipe
//! between pg_dump and kompose-dr, the same as a local pg_dump's stdout.
//!
//! One client container serves every dump of a backup run: it is started
//! at the first dump ([`PipeSlot`]) and removed when the run's
//! [`super::DumpTool`] goes. When it cannot be had (a remote engine, a
//! `$TMPDIR` the engine does not see, such as systemd's `PrivateTmp`, an
//! image without a shell), pg_dump runs in the server's container as
//! before, and the log says why.
//!
//! The handshake: the script in the container opens the FIFO for writing
//! first, says `R` on its stdout (the exec stream), then becomes pg_dump
//! with its stdout on the FIFO. kompose-dr opened the reading end before
//! starting it, and reads the FIFO only after the `R`: a FIFO read before
//! any writer opened it reads as ended. A script that fails before the
//! `R` (no such FIFO, a refused open) ends the exec stream empty: the
//! dump reads as empty and fails with the script's exit status and
//! stderr, never waits for a writer that will not come.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;

use super::beside::{self, Beside, BesideError};
use crate::clients::launch::{Launch, LaunchError};
use crate::engine::{Engine, EngineError};
use crate::model::config::PostgresConfig;
use crate::process::{Reader, Running};

/// The script the dump runs as: `$1` the FIFO, then the program and its
/// arguments (never in the script's text).
/// A path that is not the FIFO (the mount is not what the host sees) is
/// refused before anything is opened: writing a plain file there would
/// leave the host's FIFO without a writer, an empty dump.
const FIFO_SCRIPT: &str = concat!(
    "f=$1; shift\n",
    "[ -p \"$f\" ] || { echo \"kompose-dr: $f is not the FIFO kompose-dr made\" >&2; exit 125; }\n",
    "exec 3>\"$f\"\n",
    "printf R\n",
    "exec \"$@\" >&3 3>&-\n",
);

/// The client container and the private directory of FIFOs it sees.
pub struct DumpPipe {
    beside: Beside,
    /// Removed with everything in it when the pipe goes (after the
    /// container: its guard is dropped first).
    dir: tempfile::TempDir,
    next: AtomicU32,
}

/// Why no pipe could be set up: the dump goes through the exec stream.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// The private directory could not be made.
    #[error("cannot make a private directory in $TMPDIR for the dump's FIFO: {0}")]
    Dir(#[source] std::io::Error),
    /// The client container could not be used.
    #[error(transparent)]
    Beside(#[from] BesideError),
}

impl DumpPipe {
    /// Starts the client container beside `cfg`'s server with a private
    /// directory (0700, in `$TMPDIR`) mounted.
    pub async fn start(cfg: &PostgresConfig) -> Result<DumpPipe, PipeError> {
        let dir = crate::process::private::tempdir().map_err(PipeError::Dir)?;
        let probe = dir.path().join("probe");
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&probe)
                .map_err(PipeError::Dir)?;
        }
        let beside = beside::start(cfg, None, dir.path(), &probe).await?;
        Ok(DumpPipe {
            beside,
            dir,
            next: AtomicU32::new(0),
        })
    }

    /// `program` (pg_dump) for `database` in the client container, its
    /// stdout on a FIFO; arguments are appended to the launch.
    pub fn command(
        self: &Arc<Self>,
        cfg: &PostgresConfig,
        program: &str,
        database: &str,
    ) -> Launch {
        let fifo = self
            .dir
            .path()
            .join(format!("out-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        let Launch::Container { container, spec } = self.beside.launch(cfg, program, database)
        else {
            unreachable!("a client container runs programs in it")
        };
        let mut cmd = vec![
            "sh".to_owned(),
            "-c".into(),
            FIFO_SCRIPT.into(),
            "kompose-dr".into(),
        ];
        cmd.push(fifo.to_string_lossy().into_owned());
        cmd.extend(spec.cmd);
        Launch::Piped {
            container,
            spec: crate::engine::ExecSpec { cmd, ..spec },
            fifo: Fifo {
                path: fifo,
                _pipe: self.clone(),
            },
        }
    }
}

/// The FIFO a piped launch writes into, keeping its pipe alive.
pub struct Fifo {
    path: PathBuf,
    _pipe: Arc<DumpPipe>,
}

impl Fifo {
    /// Makes the FIFO (0600), opens its reading end, and starts the exec;
    /// the [`Running`]'s stdout is the FIFO once the script opened it.
    pub async fn start(
        self,
        container: &crate::model::config::ContainerRef,
        spec: crate::engine::ExecSpec,
    ) -> Result<Running, LaunchError> {
        let refused = |e: std::io::Error| {
            LaunchError::Container(EngineError::Api {
                doing: format!("making the FIFO {}", self.path.display()),
                detail: e.to_string(),
            })
        };
        let mode = nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR;
        nix::unistd::mkfifo(&self.path, mode).map_err(|e| refused(e.into()))?;
        let rx = pipe::OpenOptions::new().open_receiver(&self.path);
        // From here the reader owns the FIFO: it unlinks it however this ends.
        let mut reader = FifoReader {
            handshake: None,
            seen: None,
            fifo: rx.map_err(refused)?,
            path: Some(self.path),
            _pipe: self._pipe,
        };
        let _ = nix::fcntl::fcntl(&reader.fifo, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        let engine = Engine::connect(container.engine.as_deref())?;
        let mut running = engine.exec(&container.name, spec).await?;
        reader.handshake = running.stdout.take();
        running.stdout = Some(Box::pin(reader));
        Ok(running)
    }
}

/// The exec's stdout until its `R`, then the FIFO.
struct FifoReader {
    /// The exec's stdout, until the `R` came.
    handshake: Option<Reader>,
    /// The exec's stdout after it, kept open (nothing more comes).
    seen: Option<Reader>,
    fifo: pipe::Receiver,
    /// Unlinked once the writer has it open.
    path: Option<PathBuf>,
    /// The client container and directory, kept while the dump reads.
    _pipe: Arc<DumpPipe>,
}

impl AsyncRead for FifoReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(out) = this.handshake.as_mut() {
            let mut one = [0u8; 1];
            let mut b = ReadBuf::new(&mut one);
            ready!(out.as_mut().poll_read(cx, &mut b))?;
            match b.filled() {
                // The script ended before it opened the FIFO: nothing
                // comes; its status and stderr say why.
                [] => return Poll::Ready(Ok(())),
                [b'R'] => {
                    this.seen = this.handshake.take();
                    if let Some(p) = this.path.take() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                _ => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the dump's script wrote to its stdout before its FIFO was open",
                    )));
                }
            }
        }
        Pin::new(&mut this.fifo).poll_read(cx, buf)
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The pipe of one backup run, started at the first dump that asks: shared
/// by the clones of the run's [`super::DumpTool`].
#[derive(Clone, Default)]
pub struct PipeSlot(Arc<tokio::sync::OnceCell<Option<Arc<DumpPipe>>>>);

impl PipeSlot {
    /// The run's pipe, started now if this is the first ask; `None` (said
    /// once in the log) when there can be none.
    pub async fn get(&self, cfg: &PostgresConfig) -> Option<Arc<DumpPipe>> {
        self.0
            .get_or_init(|| async {
                match DumpPipe::start(cfg).await {
                    Ok(p) => Some(Arc::new(p)),
                    Err(e) => {
                        tracing::info!(
                            reason = %e,
                            "pg_dump runs in the server's container, its output through the engine's exec stream (slower)"
                        );
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

impl PipeSlot {
    /// Where the run's FIFOs are made, once its pipe was started.
    pub fn dir(&self) -> Option<PathBuf> {
        self.0.get()?.as_ref().map(|p| p.dir.path().to_owned())
    }
}

impl std::fmt::Debug for PipeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipeSlot")
    }
}

/// Every run's slot is the same for comparing tools.
impl PartialEq for PipeSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PipeSlot {}
