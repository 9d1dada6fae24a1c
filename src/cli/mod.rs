//! The command line: global flags, one file per command, logging, and the
//! mapping of results to exit codes (docs/DESIGN.md §2).
//!
//! Commands return an [`Outcome`](crate::error::Outcome) or a [`Failure`], and [`Exit::of`]
//! chooses the exit status from it (the policy is in [`crate::error`]);
//! only this module and [`output`] print. Logs go to stderr, `--json` documents to stdout.

mod agent;
mod backup;
mod bootstrap;
mod check;
mod copy;
mod doctor;
mod drill;
mod init;
pub mod output;
mod prune;
mod restore;
mod snapshots;
mod verify;
mod wal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use crate::error::{Exit, Failure};
use crate::model::config::{Config, DEFAULT_CONFIG_PATH};
use crate::repository::Repository;

/// kompose-dr: backup, restore and disaster recovery for a Kompose stack.
#[derive(Debug, Parser)]
#[command(name = "kompose-dr", version, about, max_term_width = 100)]
pub struct Cli {
    /// The configuration file (TOML): repositories, sources, schedules.
    #[arg(long, global = true, env = "KOMPOSE_DR_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: text, or json (for journald/Loki).
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// Accept snapshots and markers without a signature (a repository
    /// written before signing existed; check it by hand first,
    /// docs/RUNBOOK.md). A wrong signature is refused all the same.
    #[arg(long, global = true)]
    pub allow_unsigned: bool,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// The subcommand to run; each has its own `Args` in `cli/<command>.rs`.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand, one file each under `cli/`; a variant's doc comment is its
/// line in `--help`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the repositories; --generate-key writes a new age identity.
    Init(init::Args),
    /// Back up every configured source (or --source NAME …) now: one snapshot.
    Backup(backup::Args),
    /// List snapshots, newest first.
    Snapshots(snapshots::Args),
    /// Restore from --snapshot ID or --point-in-time TIME (default: the newest good copy of each source).
    Restore(restore::Args),
    /// Restore a snapshot (default: latest) into scratch instances and check it.
    Verify(verify::Args),
    /// Repository integrity; --read-data also decrypts and decompresses every archive.
    Check(check::Args),
    /// Run restore drills (drills_dir/*.toml or --drill FILE) and write reports.
    Drill(drill::Args),
    /// Apply the retention policies; --dry-run shows what would go and why.
    Prune(prune::Args),
    /// Long-running: run policies, prune and drills on their cron schedules.
    Agent(agent::Args),
    /// Check the whole path before the night: repositories, sources, broker, textfile, runtime, units.
    Doctor(doctor::Args),
    /// Archive PostgreSQL's WAL continuously ([postgres.wal]), in the foreground until SIGTERM.
    Wal(wal::Args),
    /// Copy snapshots between repositories (--from, --to, --snapshot ID … or --missing), checking every sha256.
    Copy(copy::Args),
    /// The host is gone: write the configuration back from a repository (no config file needed).
    Bootstrap(bootstrap::Args),
}

/// Global options every command sees.
pub struct Globals {
    /// The configuration file (`--config` or `KOMPOSE_DR_CONFIG`). Loaded only
    /// when a command asks, so `init --generate-key` works before one exists.
    pub config: PathBuf,
    /// `--json`: print one JSON document on stdout instead of text for people.
    pub json: bool,
    /// `--allow-unsigned`: accept unsigned snapshots and markers.
    pub allow_unsigned: bool,
}

impl Globals {
    /// Loads the configuration (with `--allow-unsigned` applied).
    pub fn load_config(&self) -> Result<Config, Failure> {
        let mut config = Config::load(&self.config).map_err(Failure::from)?;
        if self.allow_unsigned {
            tracing::warn!(
                "--allow-unsigned: unsigned snapshots are accepted in repositories written before signing (unsigned marker, \
                 no stack id) and nowhere else; anyone who can write to such a repository can forge them"
            );
            config.allow_unsigned();
        }
        Ok(config)
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version exit 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    init_logging(cli.verbose, cli.quiet, cli.log_format == "json");
    let globals = Globals {
        config: cli.config.clone(),
        json: cli.json,
        allow_unsigned: cli.allow_unsigned,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    if let Some(f) = refuse_unsigned_writer(&cli) {
        output::failure(&globals, &f);
        return Exit::of(Err(&f)).into();
    }
    let result = runtime.block_on(async {
        let result = match cli.command {
            Command::Init(a) => init::run(&globals, a).await,
            Command::Backup(a) => backup::run(&globals, a).await,
            Command::Snapshots(a) => snapshots::run(&globals, a).await,
            Command::Restore(a) => restore::run(&globals, a).await,
            Command::Verify(a) => verify::run(&globals, a).await,
            Command::Check(a) => check::run(&globals, a).await,
            Command::Drill(a) => drill::run(&globals, a).await,
            Command::Prune(a) => prune::run(&globals, a).await,
            Command::Agent(a) => agent::run(&globals, a).await,
            Command::Doctor(a) => doctor::run(&globals, a).await,
            Command::Wal(a) => wal::run(&globals, a).await,
            Command::Copy(a) => copy::run(&globals, a).await,
            Command::Bootstrap(a) => bootstrap::run(&globals, a).await,
        };
        // Aborted uploads and released leases finish before the exit.
        crate::storage::finish_cleanups(std::time::Duration::from_secs(30)).await;
        result
    });
    if let Err(f) = &result {
        output::failure(&globals, f);
    }
    Exit::of(result.as_ref().copied()).into()
}

/// `--allow-unsigned` only reads repositories written before signing: a
/// command that writes to a repository never runs with it.
fn refuse_unsigned_writer(cli: &Cli) -> Option<Failure> {
    if !cli.allow_unsigned {
        return None;
    }
    let writer = match &cli.command {
        Command::Init(_) => "init",
        Command::Backup(_) => "backup",
        Command::Prune(_) => "prune",
        Command::Agent(_) => "agent",
        Command::Wal(_) => "wal",
        Command::Copy(_) => "copy",
        _ => return None,
    };
    Some(Failure::usage(format!(
        "--allow-unsigned only reads repositories written before signing; `kompose-dr {writer}` writes to a \
         repository, and what it writes must be signed: run it without --allow-unsigned (with [signing] key_file set)"
    )))
}

fn init_logging(verbose: u8, quiet: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "kompose_dr=debug,info",
        (v, _) if v >= 2 => "kompose_dr=trace,debug",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter =
        EnvFilter::try_from_env("KOMPOSE_DR_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Runs `work` until it finishes or Ctrl-C/SIGTERM arrives; on a signal the
/// work is dropped — which kills children and removes scratch instances
/// through their guards — and the command fails.
pub async fn interruptible<T>(work: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::failed(format!("cannot watch for SIGTERM: {e}")))?;
    tokio::select! {
        r = work => Ok(r),
        _ = tokio::signal::ctrl_c() => Err(Failure::failed("interrupted (Ctrl-C): children stopped, uploads aborted, scratch instances removed; nothing committed")),
        _ = term.recv() => Err(Failure::failed("terminated (SIGTERM): children stopped, uploads aborted, scratch instances removed; nothing committed")),
    }
}

/// The repository to read from: `--repository NAME`, or the first
/// configured one that answers.
pub async fn pick_repository(config: &Config, name: Option<&str>) -> Result<Repository, Failure> {
    if let Some(name) = name {
        let rc = config.repository_named(name)?;
        let repo = Repository::open(rc);
        repo.marker().await?;
        return Ok(repo);
    }
    if config.repositories.is_empty() {
        return Err(Failure::usage(format!(
            "no [[repository]] is configured in {}",
            config.path.display()
        )));
    }
    let mut errors = Vec::new();
    for rc in &config.repositories {
        let repo = Repository::open(rc);
        match repo.marker().await {
            Ok(_) => return Ok(repo),
            Err(e) => {
                tracing::warn!(repository = %rc.name, error = %e, "repository does not answer; trying the next");
                errors.push(e.to_string());
            }
        }
    }
    Err(Failure::failed(format!(
        "no repository answers: {}",
        errors.join("; ")
    )))
}
