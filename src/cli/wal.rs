//! `kompose-dr wal`: archive the server's WAL continuously, in the
//! foreground (its own systemd unit, or a terminal), until SIGTERM or
//! Ctrl-C — then the newest log is shipped and it exits 0.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Globals;
use crate::error::{Failure, Outcome};

/// Arguments of `wal`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the archiver until a signal.
pub async fn run(globals: &Globals, _args: Args) -> Result<Outcome, Failure> {
    let config = Arc::new(globals.load_config()?);
    let stop = CancellationToken::new();
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: shipping the newest WAL first");
            stop.cancel();
        })
    };
    let result = crate::ops::wal::run(config, stop).await;
    signals.abort();
    result.map(|()| Outcome::Success)
}
