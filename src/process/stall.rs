//! The stall watchdog: a piece of work (one source of a backup) that makes
//! no progress for a set time is stopped.
//!
//! A wait for a child, a server or a lock can hang forever: one
//! `ACCESS EXCLUSIVE` lock, a server that accepts a connection and never
//! answers, a pipe nobody writes to. Bounding each wait on its own misses
//! the one nobody thought of, so the work as a whole is watched instead:
//! [`watch`] runs it and stops it — drops it, which kills its children
//! (they are killed on drop) and aborts its uploads — once nothing has
//! called [`progress`] for the limit. The pipeline calls [`progress`] for
//! every piece of data it takes from a source; slow steps that move no
//! data but are alive (counting the rows of one table) call it too.
//!
//! The watched work finds its watchdog through a task-local, so code deep
//! inside it reports progress without a handle passed down every call;
//! outside [`watch`], [`progress`] does nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static WATCHED: Arc<Beat>;
}

/// When the watched work last made progress.
#[derive(Debug)]
struct Beat {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Beat {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// The watched work made no progress for `limit` and was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("made no progress for {}", humantime::format_duration(*.limit))]
pub struct Stalled {
    /// The limit that ran out.
    pub limit: Duration,
}

/// Tells the watchdog of the current work, if any, that it is alive.
pub fn progress() {
    let _ = WATCHED.try_with(|b| b.touch());
}

/// Runs `work` until it ends, or until it has made no progress (no
/// [`progress`] call from inside it) for `limit`; then drops it and says so.
pub async fn watch<F: Future>(limit: Duration, work: F) -> Result<F::Output, Stalled> {
    let beat = Arc::new(Beat {
        start: Instant::now(),
        last: AtomicU64::new(0),
    });
    let work = WATCHED.scope(beat.clone(), work);
    tokio::pin!(work);
    loop {
        let due = beat.last() + limit;
        tokio::select! {
            out = &mut work => return Ok(out),
            () = tokio::time::sleep_until(due) => {
                if beat.last() + limit <= Instant::now() {
                    return Err(Stalled { limit });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_keeps_moving_runs_past_the_limit() {
        let limit = Duration::from_secs(10);
        let out = watch(limit, async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                progress();
            }
            42
        })
        .await;
        assert_eq!(out, Ok(42));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_stops_moving_is_stopped_after_the_limit() {
        let limit = Duration::from_secs(10);
        let start = Instant::now();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let out = watch(limit, async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(3)).await;
            progress();
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(out, Err(Stalled { limit }));
        assert_eq!(start.elapsed(), Duration::from_secs(13));
        assert!(dropped.load(Ordering::SeqCst), "the work was dropped");
        assert_eq!(Stalled { limit }.to_string(), "made no progress for 10s",);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_outside_a_watch_does_nothing() {
        progress();
        let inner = watch(Duration::from_secs(1), async {
            // Progress reported by a spawned task is not the work's own.
            tokio::spawn(async {
                loop {
                    progress();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            std::future::pending::<()>().await
        })
        .await;
        assert!(inner.is_err());
    }
}
