//! Child processes: capturing the tail of stderr, reading tool versions,
//! running as another user, and bounding every wait on them.
//!
//! Secrets reach children only through their environment (never argv); the
//! helpers here never put a secret on a command line.
//!
//! Waits on children are bounded: [`Running::wait_within`] kills a child
//! that does not exit in time once its output has ended, [`first_line`]
//! gives a `--version` [`VERSION_TIMEOUT`], a [`Running`] marked
//! [`Running::killed_on_drop`] is killed if dropped before it was reaped
//! (here or in its container), and [`stall`] stops a whole piece of work
//! that stops making progress.

pub mod private;
pub mod stall;

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::model::secret::Redactor;

/// Bytes of stderr kept for error messages.
pub const STDERR_TAIL: usize = 4096;

/// Reads a child's stderr to the end, logging each line at debug level
/// (scrubbed) and keeping the last [`STDERR_TAIL`] bytes.
pub fn stderr_tail<R>(stderr: Option<R>, program: &str, redactor: Redactor) -> JoinHandle<String>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let program = program.to_owned();
    tokio::spawn(async move {
        let Some(stderr) = stderr else {
            return String::new();
        };
        let mut reader = BufReader::new(stderr);
        let mut tail = String::new();
        let mut raw = Vec::new();
        // Bytes, not UTF-8 lines: a tool printing Latin-1 (a locale, a file
        // name) must not end the capture at that line.
        while matches!(reader.read_until(b'\n', &mut raw).await, Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&raw);
            let line = redactor.scrub(text.trim_end_matches(['\n', '\r']));
            raw.clear();
            tracing::debug!(program = %program, "{line}");
            tail.push_str(&line);
            tail.push('\n');
            if tail.len() > 2 * STDERR_TAIL {
                let cut = tail.len() - STDERR_TAIL;
                let cut = (cut..tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
        if tail.len() > STDERR_TAIL {
            let cut = tail.len() - STDERR_TAIL;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(0);
            tail.drain(..cut);
        }
        tail.trim_end().to_owned()
    })
}

/// Describes how a child ended, for messages: `exit status 1`,
/// `killed by signal 9 (SIGKILL)`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| "?".into());
        format!("killed by signal {sig} ({name})")
    } else {
        "ended abnormally".into()
    }
}

/// Why a child could not be run, or how it failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error from `exec`.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status or signal, for people.
        status: String,
        /// The end of what it wrote on stderr.
        stderr: String,
    },
    /// The user a child should run as could not be looked up.
    #[error("cannot look up user `{user}`: {message}")]
    UserLookup {
        /// The configured user.
        user: String,
        /// The system's error.
        message: String,
    },
    /// The user a child should run as does not exist.
    #[error("user `{user}` does not exist: create it or configure another")]
    NoUser {
        /// The configured user.
        user: String,
    },
}

impl crate::error::Classify for ProcessError {
    /// A missing user is a configuration mistake; a failing program is not.
    fn class(&self) -> crate::error::Class {
        match self {
            ProcessError::NoUser { .. } => crate::error::Class::Usage,
            _ => crate::error::Class::Failure,
        }
    }
}

/// How long a tool may take to print its version.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program args…` and returns its first line of stdout (for
/// `--version`), or why not; a program that has not ended within
/// [`VERSION_TIMEOUT`] is killed.
pub async fn first_line<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<String, ProcessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref();
    let run = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(VERSION_TIMEOUT, run).await {
        Ok(out) => out,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "it did not answer within {}s (killed)",
                VERSION_TIMEOUT.as_secs()
            ),
        )),
    }
    .map_err(|source| ProcessError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(ProcessError::Failed {
            program: program.to_string_lossy().into_owned(),
            status: describe_status(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Makes `cmd` run as `user` when this process runs as root (PostgreSQL
/// refuses to run as root). Does nothing when not root.
pub fn run_as(cmd: &mut std::process::Command, user: &str) -> Result<(), ProcessError> {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| ProcessError::UserLookup {
            user: user.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| ProcessError::NoUser {
            user: user.to_owned(),
        })?;
    cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    cmd.env("HOME", &u.dir)
        .env("USER", user)
        .env("LOGNAME", user);
    Ok(())
}

/// A readable end of a running program (its stdout or stderr).
pub type Reader = std::pin::Pin<Box<dyn AsyncRead + Send>>;
/// A writable end of a running program (its stdin).
pub type Writer = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Code(i64),
    /// A signal ended it.
    Signal(i32),
}

impl Ended {
    /// Exit status 0.
    pub fn success(self) -> bool {
        self == Ended::Code(0)
    }
}

impl std::fmt::Display for Ended {
    /// `exit status 1`, `killed by signal 9 (SIGKILL)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Code(code) => write!(f, "exit status {code}"),
            Ended::Signal(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| "?".into());
                write!(f, "killed by signal {sig} ({name})")
            }
        }
    }
}

impl From<ExitStatus> for Ended {
    fn from(status: ExitStatus) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(code.into()),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => Ended::Code(-1),
        }
    }
}

/// Waits for, or stops, a program started by [`Running`].
#[async_trait::async_trait]
pub trait Waiter: Send {
    /// Waits until the program has ended and says how.
    async fn wait(&mut self) -> std::io::Result<Ended>;
    /// Stops the program now (best effort; [`Waiter::wait`] still reaps it).
    fn kill(&mut self);
}

/// A program running here or inside a container, with whichever of its
/// standard streams were asked for: the seam that lets a source or a
/// restore run pg_dump, psql or redis-cli the same way in both places.
///
/// A local child is killed when dropped; a program in a container runs on
/// (its output is drained) unless [`Running::killed_on_drop`] says otherwise.
pub struct Running {
    /// Its stdin, if attached; dropping (or shutting down) it is EOF.
    pub stdin: Option<Writer>,
    /// Its stdout, if attached.
    pub stdout: Option<Reader>,
    /// Its stderr, if attached. Read it: an unread stderr can stall the
    /// program.
    pub stderr: Option<Reader>,
    waiter: Box<dyn Waiter>,
    /// Its end was seen: nothing to kill on drop.
    reaped: bool,
    /// Kill it if dropped before it was reaped.
    kill_on_drop: bool,
}

/// A program that did not exit in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{program} did not exit within {}s after its output ended: killed", .limit.as_secs())]
pub struct ExitTimeout {
    /// The program.
    pub program: String,
    /// How long it was given.
    pub limit: Duration,
}

impl Running {
    /// A program whose streams and end come from elsewhere (a container
    /// engine's exec).
    pub fn new(
        stdin: Option<Writer>,
        stdout: Option<Reader>,
        stderr: Option<Reader>,
        waiter: Box<dyn Waiter>,
    ) -> Running {
        Running {
            stdin,
            stdout,
            stderr,
            waiter,
            reaped: false,
            kill_on_drop: false,
        }
    }

    /// Starts `cmd` here, with stdin, stdout and stderr piped as asked (a
    /// stream not asked for is closed), killed when dropped.
    pub fn spawn(
        mut cmd: Command,
        program: &str,
        stdin: bool,
        stdout: bool,
    ) -> Result<Running, ProcessError> {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(stdin))
            .stdout(pipe(stdout))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        // 1 MiB pipes (instead of 64 KiB) let the producer write, and the
        // reader read, in larger pieces: fewer wake-ups on both sides (the
        // program's output; our feed of pg_restore's stdin). Best effort:
        // a smaller `fs.pipe-max-size` leaves the default.
        let big = || nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20);
        if let Some(out) = &child.stdout {
            let _ = nix::fcntl::fcntl(out, big());
        }
        if let Some(input) = &child.stdin {
            let _ = nix::fcntl::fcntl(input, big());
        }
        Ok(Running {
            stdin: child.stdin.take().map(|s| Box::pin(s) as Writer),
            stdout: child.stdout.take().map(|s| Box::pin(s) as Reader),
            stderr: child.stderr.take().map(|s| Box::pin(s) as Reader),
            waiter: Box::new(LocalChild(child)),
            reaped: false,
            kill_on_drop: true,
        })
    }

    /// The same program, killed if this handle is dropped before the
    /// program was reaped (a cancelled or stalled run): for a program whose
    /// output is only wanted while someone reads it.
    pub fn killed_on_drop(mut self) -> Running {
        self.kill_on_drop = true;
        self
    }

    /// Waits until the program has ended.
    pub async fn wait(&mut self) -> std::io::Result<Ended> {
        let ended = self.waiter.wait().await;
        self.reaped = ended.is_ok();
        ended
    }

    /// Waits at most `limit` for the program to end (its output has ended,
    /// so it should be exiting); past that it is killed, reaped (for at
    /// most a few more seconds) and reported as [`ExitTimeout`], in an
    /// `io::Error` of kind `TimedOut`.
    pub async fn wait_within(&mut self, limit: Duration, program: &str) -> std::io::Result<Ended> {
        if let Ok(ended) = tokio::time::timeout(limit, self.wait()).await {
            return ended;
        }
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            ExitTimeout {
                program: program.to_owned(),
                limit,
            },
        ))
    }

    /// Stops the program now.
    pub fn kill(&mut self) {
        self.waiter.kill()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.kill_on_drop && !self.reaped {
            self.waiter.kill();
        }
    }
}

struct LocalChild(tokio::process::Child);

#[async_trait::async_trait]
impl Waiter for LocalChild {
    async fn wait(&mut self) -> std::io::Result<Ended> {
        self.0.wait().await.map(Ended::from)
    }
    fn kill(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Makes the program `cmd` starts get SIGKILL when the thread that starts
/// it ends — above all when this process dies, even by `kill -9` — so that
/// a throw-away server never outlives kompose-dr (`PR_SET_PDEATHSIG`, set
/// in the child after any change of user, which would clear it). Once the
/// signal is armed the child checks that its parent is still this process;
/// if it died first, the program is not run. The kernel ties the signal to
/// the starting *thread*: start the program from one that lives as long as
/// it should run (not a blocking-pool thread, which ends when idle).
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes two system calls
    // (prctl, getppid) and allocates nothing (its errors are raw OS
    // errors).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Whether process `pid` of this host no longer exists (ESRCH). EPERM —
/// a process of another user under that pid — counts as alive, so a
/// leftover is only ever judged abandoned when its owner is really gone.
pub fn is_gone(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_set_to_die_with_its_parent_dies_with_the_thread_that_started_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                let _ = child.kill();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[tokio::test]
    async fn stderr_after_a_line_that_is_not_utf8_is_kept() {
        let input: &[u8] = b"first\nna\xefve \xff line\nERROR: the real cause\n";
        let tail = stderr_tail(Some(input), "tool", Redactor::new(Vec::new()))
            .await
            .unwrap();
        assert!(tail.contains("ERROR: the real cause"), "{tail}");
        assert!(tail.contains("na\u{fffd}ve"), "{tail}");
    }
}
