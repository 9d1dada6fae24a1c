//! Running a program inside a container with its streams attached, as a
//! [`Running`] like a local child — and the byte bridge that carries a
//! PostgreSQL or Redis client connection over such a program's stdin and
//! stdout.
//!
//! The engine multiplexes stdout and stderr on one attached connection; a
//! pump task splits them into two pipes of bounded size, so a slow reader
//! of stdout stops the pump, which stops reading the connection, which
//! stops the program: backpressure end to end, memory bounded by the pipe.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Engine, EngineError};
use crate::process::{Ended, Reader, Running, Waiter, Writer};

/// Bytes buffered between the engine's connection and the reader of stdout.
const STDOUT_PIPE: usize = 1 << 20;
/// Bytes the engine's frame decoder reads at once. Small on purpose:
/// bollard zero-fills the decoder's free capacity before every read, so
/// 1 MiB meant a 1 MiB memset per ~8 KiB frame of pg_dump output (40 % of
/// the client's CPU in `scripts/bench-docker`); a larger frame just grows
/// the buffer.
const FRAME_CAPACITY: usize = 64 * 1024;

/// How long [`Engine::output`]'s short commands (`--version`, `stat`,
/// moving a data directory aside) may run before they are killed: long
/// enough for a slow disk, short enough that a hung exec cannot hold a
/// backup (and its repository lock) for ever.
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(600);

/// A program to run inside a container.
#[derive(Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments (never a secret).
    pub cmd: Vec<String>,
    /// Environment: where passwords go (`PGPASSWORD`, `REDISCLI_AUTH`).
    pub env: Vec<(String, String)>,
    /// Run as this user (`postgres`, `999`); default the container's.
    pub user: Option<String>,
    /// Attach stdin.
    pub stdin: bool,
}

impl std::fmt::Debug for ExecSpec {
    /// Environment values may be secrets: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSpec")
            .field("cmd", &self.cmd)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("user", &self.user)
            .finish()
    }
}

impl ExecSpec {
    /// `program args…` with nothing else set.
    pub fn new<I, S>(cmd: I) -> ExecSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecSpec {
            cmd: cmd.into_iter().map(Into::into).collect(),
            ..ExecSpec::default()
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> ExecSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> ExecSpec {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.into()));
        self
    }
}

/// A command that copies its stdin to TCP `127.0.0.1:port` inside the
/// container and the server's answers to its stdout: busybox `nc` (every
/// Alpine image, the stack's `postgres:16-alpine` and `redis:7-alpine`),
/// else `perl` (every Debian image). A client connection then runs over
/// the exec's streams with no network path from the host.
pub fn bridge_command(port: u16) -> ExecSpec {
    const PERL: &str = "use IO::Socket::INET; $|=1; \
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ARGV[0]) or die \"connect: $!\\n\"; \
        binmode STDIN; binmode STDOUT; \
        if (my $pid = fork) { my $b; while (sysread(STDIN, $b, 65536)) { syswrite($s, $b) or last } \
        shutdown($s, 1); waitpid($pid, 0) } \
        else { my $b; while (sysread($s, $b, 65536)) { syswrite(STDOUT, $b) or last } exit 0 }";
    let script = "if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 \"$0\"; \
        elif command -v perl >/dev/null 2>&1; then exec perl -e \"$KDR_BRIDGE\" \"$0\"; \
        else echo 'kompose-dr: the container has neither nc nor perl to reach the server inside it' >&2; exit 127; fi";
    let mut spec = ExecSpec::new(["sh", "-c", script, &port.to_string()]).env("KDR_BRIDGE", PERL);
    spec.stdin = true;
    spec
}

impl Engine {
    /// Starts `spec` inside the running container `container`, stdout and
    /// stderr attached (and stdin if asked).
    pub async fn exec(&self, container: &str, spec: ExecSpec) -> Result<Running, EngineError> {
        let program = spec.cmd.first().cloned().unwrap_or_default();
        let doing = format!("running {program} in container `{container}`");
        let opts = bollard::exec::CreateExecOptions::<String> {
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: spec.user.clone(),
            ..Default::default()
        };
        let created = self
            .control(&doing, self.docker().create_exec(container, opts))
            .await?;
        let start = bollard::exec::StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(FRAME_CAPACITY),
        };
        let started = self
            .control(&doing, self.docker().start_exec(&created.id, Some(start)))
            .await?;
        let bollard::exec::StartExecResults::Attached { output, input } = started else {
            return Err(EngineError::Api {
                doing,
                detail: "the engine did not attach the streams".into(),
            });
        };
        let (out_w, out_r) = tokio::io::duplex(STDOUT_PIPE);
        let (err_w, err_r) = tokio::io::duplex(64 * 1024);
        let pump = tokio::spawn(pump(output, out_w, err_w));
        let stdin: Option<Writer> = if spec.stdin {
            Some(input)
        } else {
            drop(input);
            None
        };
        Ok(Running::new(
            stdin,
            Some(Box::pin(out_r) as Reader),
            Some(Box::pin(err_r) as Reader),
            Box::new(ExecWaiter {
                engine: self.clone(),
                id: created.id,
                pump: Some(pump),
            }),
        ))
    }

    /// Runs `spec` in `container` to the end and returns its stdout, or
    /// why it failed (its stderr). For short commands (`--version`,
    /// `redis-cli INFO`): stdout is capped at 1 MiB, and a command that has
    /// not ended within `OUTPUT_TIMEOUT` is killed and reported.
    pub async fn output(&self, container: &str, spec: ExecSpec) -> Result<String, EngineError> {
        let program = spec.cmd.first().cloned().unwrap_or_default();
        let run = self.exec(container, spec).await?.killed_on_drop();
        match tokio::time::timeout(OUTPUT_TIMEOUT, self.collect(container, &program, run)).await {
            Ok(out) => out,
            Err(_) => Err(EngineError::Api {
                doing: format!("running {program} in container `{container}`"),
                detail: format!(
                    "it did not end within {}s: killed",
                    OUTPUT_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// Reads a short command's output to the end and reaps it.
    async fn collect(
        &self,
        container: &str,
        program: &str,
        mut run: Running,
    ) -> Result<String, EngineError> {
        use tokio::io::AsyncReadExt;
        drop(run.stdin.take());
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (stdout, stderr) = (run.stdout.take(), run.stderr.take());
        let read_out = async {
            if let Some(s) = stdout {
                let _ = s.take(1 << 20).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr {
                let _ = s.take(64 * 1024).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let ended = run.wait().await.map_err(|e| EngineError::Api {
            doing: format!("running {program} in container `{container}`"),
            detail: e.to_string(),
        })?;
        if !ended.success() {
            return Err(EngineError::Api {
                doing: format!("running {program} in container `{container}`"),
                detail: format!(
                    "{ended}: {}",
                    String::from_utf8_lossy(&err)
                        .trim()
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Engine {
    /// Unpacks the tar stream `tar` into `dir` of the running container with
    /// its own `tar`, run inside it: unlike the archive API this sees tmpfs
    /// mounts. Files belong to the container's user.
    pub async fn untar<S>(&self, container: &str, dir: &str, tar: S) -> Result<(), EngineError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let doing = format!("unpacking into {dir} of container `{container}`");
        let mut spec = ExecSpec::new(["tar", "-x", "-f", "-", "-C", dir]);
        spec.stdin = true;
        let mut run = self.exec(container, spec).await?;
        let mut stdin = run.stdin.take().expect("stdin is attached");
        drop(run.stdout.take());
        let mut stderr = run.stderr.take().expect("stderr is attached");
        let copy = async {
            let mut tar = std::pin::pin!(tar);
            while let Some(piece) = tar.next().await {
                stdin.write_all(&piece?).await?;
            }
            stdin.shutdown().await
        };
        let mut err = Vec::new();
        let (copied, _) = tokio::join!(copy, async {
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut err).await;
        });
        let ended = run.wait().await.map_err(|e| EngineError::Api {
            doing: doing.clone(),
            detail: e.to_string(),
        })?;
        if let Err(e) = copied {
            return Err(EngineError::Api {
                doing,
                detail: e.to_string(),
            });
        }
        if !ended.success() {
            return Err(EngineError::Api {
                doing,
                detail: format!("tar: {ended}: {}", String::from_utf8_lossy(&err).trim()),
            });
        }
        Ok(())
    }
}

/// Splits the engine's multiplexed output into stdout and stderr. A reader
/// that went away is not an error: its bytes are dropped and the program
/// runs on (it is killed separately when that is wanted).
async fn pump(
    mut output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    mut out: tokio::io::DuplexStream,
    mut err: tokio::io::DuplexStream,
) -> std::io::Result<()> {
    use bollard::container::LogOutput;
    let (mut out_open, mut err_open) = (true, true);
    while let Some(piece) = output.next().await {
        match piece {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                if out_open && out.write_all(&message).await.is_err() {
                    out_open = false;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                if err_open && err.write_all(&message).await.is_err() {
                    err_open = false;
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => return Err(std::io::Error::other(super::api_detail(&e))),
        }
    }
    Ok(())
}

/// Waits for an exec: the output ends, then the engine reports its status.
struct ExecWaiter {
    engine: Engine,
    id: String,
    pump: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

#[async_trait::async_trait]
impl Waiter for ExecWaiter {
    async fn wait(&mut self) -> std::io::Result<Ended> {
        if let Some(pump) = self.pump.take() {
            match pump.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        // The streams closed; the engine records the exit status a moment
        // later.
        for attempt in 0..200u32 {
            let r = self
                .engine
                .control(
                    "asking for a program's exit status",
                    self.engine.docker().inspect_exec(&self.id),
                )
                .await
                .map_err(std::io::Error::other)?;
            if r.running != Some(true) {
                return Ok(Ended::Code(r.exit_code.unwrap_or(-1)));
            }
            tokio::time::sleep(Duration::from_millis(10 + 5 * u64::from(attempt.min(40)))).await;
        }
        Err(std::io::Error::other(
            "the engine did not report the program's end",
        ))
    }

    fn kill(&mut self) {
        // The engine has no call to kill an exec. Dropping the attached
        // connection closes the program's stdin and stdout (it dies of
        // EPIPE at its next write); on a local engine the process (and its
        // process group) is also signalled directly.
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
        let engine = self.engine.clone();
        let id = self.id.clone();
        // Killed from a drop, possibly as the runtime shuts down.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if !engine.endpoint().starts_with("unix://") {
                return;
            }
            if let Ok(r) = engine.docker().inspect_exec(&id).await
                && r.running == Some(true)
                && let Some(pid) = r.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1)
            {
                // The exec's process leads a process group of its own:
                // signal the group, so that a wrapper's children (pg_dump
                // behind `sh -c … | dd`) die with it.
                let kill = |p| {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                };
                if kill(-pid).is_err() {
                    let _ = kill(pid);
                }
            }
        });
    }
}

/// The stdin and stdout of a [`Running`] as one byte stream, for a client
/// library (tokio-postgres, redis) to speak its protocol over. Keeps the
/// program's waiter alive for as long as the stream lives.
pub struct ExecStream {
    io: tokio::io::Join<Reader, Writer>,
    _run: Running,
}

impl ExecStream {
    /// Joins the program's stdout (read) and stdin (write), and collects
    /// its stderr: the handle yields the end of it once the program has
    /// ended, to explain a connection that failed. `None` if stdin or
    /// stdout was not attached.
    pub fn new(mut run: Running) -> Option<(ExecStream, tokio::task::JoinHandle<String>)> {
        let (r, w) = (run.stdout.take()?, run.stdin.take()?);
        let tail = crate::process::stderr_tail(
            run.stderr.take(),
            "bridge",
            crate::model::secret::Redactor::new(Vec::new()),
        );
        Some((
            ExecStream {
                io: tokio::io::join(r, w),
                _run: run,
            },
            tail,
        ))
    }
}

/// Why a bridge failed, from its stderr, as ` (…)` to append to the
/// client library's error; empty if it said nothing within 2 seconds.
pub async fn bridge_said(stderr: tokio::task::JoinHandle<String>) -> String {
    tokio::time::timeout(Duration::from_secs(2), stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .filter(|t| !t.is_empty())
        .map(|t| format!(" ({t})"))
        .unwrap_or_default()
}

impl tokio::io::AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ExecStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
