//! What is backed up: PostgreSQL databases and globals, Redis, plain files.
//!
//! Each source turns into one artifact per run: a byte stream pushed
//! through the [`pipeline`] into every repository, plus the metadata the
//! manifest records and the facts verification needs.
//! [`SourceContext`] holds what every source shares: the snapshot id, the
//! repositories and the encoding settings, and the commit discipline —
//! stream everything, check the producer, and only then make the archive
//! visible.

pub mod acme;
pub mod config;
pub mod directories;
pub mod files;
pub mod postgres;
pub mod redis;

use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::clients::ClientError;
use crate::clients::launch::{Launch, LaunchError};
use crate::model::facts::SourceFacts;
use crate::model::manifest::{ArtifactKind, Downtime, FileMeta};
use crate::model::secret::Redactor;
use crate::pipeline::{self, EncodeSettings, Encoded, Input, SinkState};
use crate::process::stderr_tail;
use crate::repository::Repository;

/// Why a source's server could not be used or its archive not stored.
/// The variant says which step failed; the typed ones keep their cause.
/// [`SourceError::scrubbed`] turns any of them into the operator's message
/// with secrets replaced, where a server may echo them.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached or asked, or a client tool is
    /// missing ([`ClientError::is_tool`]).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A client program could not be started.
    #[error("cannot start {program}: {source}")]
    Launch {
        /// The program.
        program: String,
        /// Why.
        source: LaunchError,
    },
    /// The container engine could not be used.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A repository refused a write.
    #[error(transparent)]
    Repository(#[from] crate::repository::RepositoryError),
    /// A SQLite database could not be copied or described.
    #[error(transparent)]
    Sqlite(#[from] directories::sqlite::SqliteError),
    /// A local file could not be read or written.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done (`cannot read /x`).
        doing: String,
        /// The error.
        source: std::io::Error,
    },
    /// The server could not be reached, or refused the credentials.
    #[error("{0}")]
    Connect(String),
    /// The server answered a query with an error.
    #[error("{0}")]
    Query(String),
    /// A client tool (pg_dump, psql, docker) is missing, too old, or failed.
    #[error("{0}")]
    Tool(String),
    /// The archive could not be written to any repository.
    #[error("{0}")]
    Store(String),
    /// Data read from the server or a file is not what was expected.
    #[error("{0}")]
    Data(String),
}

impl SourceError {
    /// The same error with every secret in its message replaced.
    pub fn scrubbed(self, redactor: &Redactor) -> SourceError {
        let scrub = |m: String| redactor.scrub(&m);
        match self {
            SourceError::Connect(m) => SourceError::Connect(scrub(m)),
            SourceError::Query(m) => SourceError::Query(scrub(m)),
            SourceError::Tool(m) => SourceError::Tool(scrub(m)),
            SourceError::Store(m) => SourceError::Store(scrub(m)),
            SourceError::Data(m) => SourceError::Data(scrub(m)),
            e @ SourceError::Client(_) if e.is_tool() => SourceError::Tool(scrub(e.to_string())),
            e @ SourceError::Client(_) => SourceError::Connect(scrub(e.to_string())),
            e @ SourceError::Launch { .. } => SourceError::Tool(scrub(e.to_string())),
            e @ (SourceError::Io { .. } | SourceError::Sqlite(_)) => {
                SourceError::Data(scrub(e.to_string()))
            }
            e @ SourceError::Engine(_) => SourceError::Tool(scrub(e.to_string())),
            e @ SourceError::Repository(_) => SourceError::Store(scrub(e.to_string())),
        }
    }

    /// Whether the error is about a client tool (missing, too old, cannot
    /// start): the operator must install or configure something.
    pub fn is_tool(&self) -> bool {
        match self {
            SourceError::Tool(_) | SourceError::Launch { .. } | SourceError::Engine(_) => true,
            SourceError::Client(e) => e.is_tool(),
            _ => false,
        }
    }

    /// Whether the error is about data read or written here (a file, the
    /// spool, what a server sent), not the server or a tool.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            SourceError::Data(_) | SourceError::Io { .. } | SourceError::Sqlite(_)
        )
    }

    /// `doing: e` for an I/O error, as a closure for `map_err`.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
        let doing = doing.into();
        move |source| SourceError::Io { doing, source }
    }
}

impl crate::error::Classify for SourceError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Failure
    }
}

/// Where a source's archive went, once committed.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Key of the archive.
    pub key: String,
    /// Bytes before compression.
    pub plaintext_bytes: u64,
    /// Size in bytes of the archive as stored (after zstd and age); the same
    /// bytes go to every repository.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes.
    pub sha256: String,
    /// The sha256 of each piece of them (`None`: too many to record).
    pub pieces: Option<crate::model::manifest::Pieces>,
    /// The repositories (by name) that do not hold the archive, and why;
    /// every other repository of the run holds it.
    pub failed_in: std::collections::BTreeMap<String, String>,
}

impl Stored {
    /// Why `repository` does not hold the archive, if it does not.
    pub fn failure_in(&self, repository: &str) -> Option<&str> {
        self.failed_in.get(repository).map(String::as_str)
    }
}

/// The outcome of backing up one source.
#[derive(Debug, Clone)]
pub struct SourceRun {
    /// Source name, as `--source` selects it: `postgres/<db>`,
    /// `postgres/globals`, `redis` or `files/<name>`.
    pub source: String,
    /// What kind of payload the archive holds, recorded in the manifest so
    /// restore knows how to open it.
    pub kind: ArtifactKind,
    /// When the data is consistent.
    pub captured_at: Option<DateTime<Utc>>,
    /// Version text of the tool that produced the payload (`pg_dump
    /// --version`); absent for sources without such a tool.
    pub tool_version: Option<String>,
    /// Version of the server the data came from (PostgreSQL's `server_version`,
    /// `Redis 7.2.4`); absent for plain files.
    pub server_version: Option<String>,
    /// File metadata for `files/*` (a directory's root for `directories/*`).
    pub file: Option<FileMeta>,
    /// Where a base backup (`postgres/cluster`) lies in the log.
    pub wal: Option<crate::model::wal::BasePosition>,
    /// Containers stopped or paused for the copy, and for how long.
    pub downtime: Option<Downtime>,
    /// Facts for the sidecar.
    pub facts: Option<SourceFacts>,
    /// The stored archive, or why the source failed.
    pub result: Result<Stored, Failed>,
    /// Wall-clock seconds the source took, filled in by [`timed`]; 0 for a run
    /// that failed before it began.
    pub duration_seconds: f64,
}

/// Why a source failed: the message for the report, scrubbed of every
/// configured secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

impl SourceRun {
    /// A run that failed before storing anything.
    pub fn failed(
        source: impl Into<String>,
        kind: ArtifactKind,
        error: impl Into<String>,
    ) -> SourceRun {
        SourceRun {
            source: source.into(),
            kind,
            captured_at: None,
            tool_version: None,
            server_version: None,
            file: None,
            wal: None,
            downtime: None,
            facts: None,
            result: Err(Failed(error.into())),
            duration_seconds: 0.0,
        }
    }
}

/// What every source of one run shares.
pub struct SourceContext {
    /// The snapshot being written; each archive's key lies under `data/<ID>/`.
    pub snapshot: String,
    /// Every repository the run writes to. Each archive is streamed to all of
    /// them at once, and a source succeeds if at least one holds it.
    pub repositories: Vec<Repository>,
    /// How to encode.
    pub encode: EncodeSettings,
    /// Scrubs secrets from messages.
    pub redactor: Redactor,
    /// Progress bars on a terminal (bytes read per archive), if wanted.
    pub progress: Option<indicatif::MultiProgress>,
    /// How long to wait for what can hang: a connection, a child's exit.
    pub timeouts: crate::model::config::Timeouts,
}

impl SourceContext {
    /// Counts the bytes of `input` on a progress bar named after `key`.
    fn with_progress(&self, key: &str, mut input: Input) -> Input {
        let Some(multi) = &self.progress else {
            return input;
        };
        let pb = multi.add(indicatif::ProgressBar::new_spinner());
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix:32} {bytes:>10} {bytes_per_sec:>12} {elapsed}",
            )
            .expect("valid template"),
        );
        // `data/<ID>/postgres/app.dump.zst.age` → `postgres/app.dump`
        let name = key
            .splitn(3, '/')
            .nth(2)
            .unwrap_or(key)
            .trim_end_matches(".zst.age");
        pb.set_prefix(name.to_owned());
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(piece) = input.recv().await {
                if let Ok(b) = &piece {
                    pb.inc(b.len() as u64);
                }
                if tx.send(piece).await.is_err() {
                    break;
                }
            }
            pb.finish();
        });
        rx
    }

    /// Streams `input` into every repository under `key`; nothing is
    /// visible until [`SourceContext::finish`].
    pub async fn encode(&self, key: &str, input: Input) -> Result<Encoded, SourceError> {
        let mut sinks = Vec::with_capacity(self.repositories.len());
        for repo in &self.repositories {
            sinks.push(match repo.create(key).await {
                Ok(w) => SinkState::Open(w),
                Err(crate::repository::RepositoryError::Storage { source, .. }) => {
                    SinkState::Failed(source)
                }
                Err(e) => SinkState::Failed(crate::storage::StorageError::Io {
                    op: "create",
                    location: key.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }),
            });
        }
        let input = self.with_progress(key, input);
        // A dump's restore reads it by pieces (its content runs code).
        let pieces = key.ends_with(crate::model::manifest::ArtifactKind::PostgresDump.extension());
        pipeline::encode(input, &self.encode, sinks, pieces)
            .await
            .map_err(|e| SourceError::Store(self.redactor.scrub(&e.to_string())))
    }

    /// Commits an encoded archive if the producer succeeded (`verdict` is
    /// `Ok`), else discards it.
    pub async fn finish(
        &self,
        key: &str,
        encoded: Encoded,
        verdict: Result<(), SourceError>,
    ) -> Result<Stored, SourceError> {
        if let Err(e) = verdict {
            encoded.abort().await;
            return Err(e.scrubbed(&self.redactor));
        }
        let (plaintext_bytes, stored_bytes, sha256, pieces) = (
            encoded.plaintext_bytes,
            encoded.stored_bytes,
            encoded.sha256.clone(),
            encoded.pieces.clone(),
        );
        let results = encoded.commit().await;
        let failed_in: std::collections::BTreeMap<String, String> = self
            .repositories
            .iter()
            .zip(results)
            .filter_map(|(repo, r)| {
                r.err()
                    .map(|e| (repo.name().to_owned(), self.redactor.scrub(&e.to_string())))
            })
            .collect();
        if failed_in.len() == self.repositories.len() {
            return Err(SourceError::Store(
                failed_in.into_values().collect::<Vec<_>>().join("; "),
            ));
        }
        Ok(Stored {
            key: key.to_owned(),
            plaintext_bytes,
            stored_bytes,
            sha256,
            pieces,
            failed_in,
        })
    }

    /// Runs a child that writes the payload to stdout, streams it, reaps
    /// the child, and commits only if it exited 0 and reported no error on
    /// stderr. `program` names it in messages.
    ///
    /// Every wait is bounded: a child that has not exited
    /// `timeouts.child_exit` after its output ended is killed and fails the
    /// source; dropped unfinished (the run was cancelled, or stalled), the
    /// child is killed, here or in its container.
    pub async fn store_child(
        &self,
        key: &str,
        program: &str,
        launch: Launch,
    ) -> Result<Stored, SourceError> {
        self.store_child_logged(key, program, launch).await.0
    }

    /// [`SourceContext::store_child`], also returning the tail of the
    /// child's stderr (secrets scrubbed), for tools that report what they
    /// did there (pg_basebackup's WAL positions).
    pub async fn store_child_logged(
        &self,
        key: &str,
        program: &str,
        launch: Launch,
    ) -> (Result<Stored, SourceError>, String) {
        let mut child = match launch.start(program, false).await {
            Ok(c) => c.killed_on_drop(),
            Err(source) => {
                let program = program.to_owned();
                return (Err(SourceError::Launch { program, source }), String::new());
            }
        };
        let stdout = child.stdout.take().expect("stdout is attached");
        let stderr = stderr_tail(child.stderr.take(), program, self.redactor.clone());
        let (input, pump) = pipeline::input_from_reader(stdout);
        let encoded = self.encode(key, input).await;
        if encoded.is_err() {
            child.kill();
        }
        let status = child.wait_within(self.timeouts.child_exit, program).await;
        let _ = pump.await;
        // A grandchild may hold stderr open after the child is gone.
        let stderr = match tokio::time::timeout(STDERR_GRACE, stderr).await {
            Ok(tail) => tail.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let encoded = match encoded {
            Ok(e) => e,
            Err(e) => return (Err(e), stderr),
        };
        let verdict = match status {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(e.to_string()),
            Err(e) => Err(format!("cannot wait for {program}: {e}")),
            Ok(s) if !s.success() => Err(format!(
                "{program} failed ({s}){}",
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            )),
            Ok(_) if stderr_reports_error(&stderr) => {
                Err(format!("{program} reported an error: {stderr}"))
            }
            Ok(_) => Ok(()),
        };
        let stored = self
            .finish(key, encoded, verdict.map_err(SourceError::Tool))
            .await;
        (stored, stderr)
    }
}

/// How long the rest of a child's stderr is waited for once it has exited.
const STDERR_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn stderr_reports_error(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains("error:") || l.contains("FATAL:") || l.contains("ERROR:"))
}

/// Times a source and fills in its duration.
pub async fn timed(f: impl std::future::Future<Output = SourceRun>) -> SourceRun {
    let start = Instant::now();
    let mut run = f.await;
    run.duration_seconds = start.elapsed().as_secs_f64();
    run
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::config::Timeouts;
    use crate::storage::memory::MemoryBackend;

    fn context(mem: &MemoryBackend, child_exit: Duration) -> SourceContext {
        SourceContext {
            snapshot: "20261127T030000Z-000000".into(),
            repositories: vec![Repository::with_backend("mem", Arc::new(mem.clone()))],
            encode: EncodeSettings {
                level: 1,
                recipients: vec![age::x25519::Identity::generate().to_public()],
            },
            redactor: Redactor::new(Vec::new()),
            progress: None,
            timeouts: Timeouts {
                child_exit,
                ..Timeouts::default()
            },
        }
    }

    fn sh(script: &str) -> Launch {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", script]);
        Launch::Local(c)
    }

    /// A tool that closes its output and then hangs (a dump that ended,
    /// a process that never exits): killed after `child_exit`, the source
    /// fails, nothing is stored.
    #[tokio::test]
    async fn a_child_that_does_not_exit_after_its_output_ended_is_killed() {
        let mem = MemoryBackend::new();
        let ctx = context(&mem, Duration::from_secs(1));
        let start = std::time::Instant::now();
        let e = ctx
            .store_child(
                "data/x/a.zst.age",
                "tool",
                sh("echo data; exec >&-; sleep 60"),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains("tool did not exit within 1s"), "{e}");
        assert!(mem.keys().is_empty(), "{:?}", mem.keys());
    }

    /// A tool that prints nothing, under the stall watchdog: the work is
    /// stopped after the limit and the child is killed with it.
    #[tokio::test]
    async fn a_silent_child_is_stopped_by_the_watchdog_and_killed() {
        let mem = MemoryBackend::new();
        let ctx = context(&mem, Duration::from_secs(60));
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > '{}'; exec sleep 60", pid_file.display());
        let out = crate::process::stall::watch(
            Duration::from_secs(1),
            ctx.store_child("data/x/a.zst.age", "tool", sh(&script)),
        )
        .await;
        assert!(out.is_err());
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie tokio has not reaped yet.
        let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        };
        let mut gone = false;
        for _ in 0..100 {
            if dead() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "the child still runs");
        assert!(mem.keys().is_empty());
    }
}
