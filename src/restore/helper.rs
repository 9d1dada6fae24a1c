//! The swap through a helper container: how a restore replaces the files
//! of a directory the host may not reach (a named volume, a Redis
//! container's data directory).
//!
//! The helper (a scratch container from the users' image, as root, no
//! network) mounts the directory; its current entries — all but
//! kompose-dr's own `.kompose-dr-*` — are moved aside to
//! `.kompose-dr-replaced-<time>/` inside it, the caller fills it (an upload
//! of the staged, checked files), and when that fails the previous entries
//! are put back. The helper is removed when the swap ends.

use std::future::Future;
use std::path::PathBuf;

use crate::engine::scratch::ScratchSpec;
use crate::engine::{Engine, EngineError, ExecSpec};

/// Moves every entry of `$1` but ours into `$2` (made here).
const MOVE_ASIDE: &str = "cd \"$1\" && mkdir \"$2\" && for f in * .[!.]* ..?*; do \
    case \"$f\" in '*'|'.[!.]*'|'..?*'|.kompose-dr-*) ;; *) mv -- \"$f\" \"$2/\" ;; esac; done";

/// Removes what the failed fill left in `$1` and moves `$2`'s entries back.
const PUT_BACK: &str = "cd \"$1\" && for f in * .[!.]* ..?*; do case \"$f\" in '*'|'.[!.]*'|'..?*'|.kompose-dr-*) ;; *) rm -rf -- \"$f\" ;; esac; done && \
    for f in \"$2\"/* \"$2\"/.[!.]* \"$2\"/..?*; do [ -e \"$f\" ] || [ -L \"$f\" ] && mv -- \"$f\" .; done; rmdir -- \"$2\"";

/// Why a swap through a helper failed, and what it left; `E` is why the
/// caller's fill failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperSwapError<E: std::error::Error + 'static = EngineError> {
    /// The helper could not be started: nothing was changed.
    #[error("cannot start the helper container: {0}")]
    Start(#[source] EngineError),
    /// The current entries could not be moved aside: nothing was changed
    /// that the move did not undo.
    #[error("cannot move the current files aside: {0}")]
    Aside(#[source] EngineError),
    /// The fill failed; the previous entries were put back.
    #[error("{0}")]
    Fill(#[source] E),
    /// The fill failed and putting the previous entries back failed too:
    /// they are in the directory `aside`.
    #[error("{fill}; putting the previous files back failed too ({put_back})")]
    PutBack {
        /// Why the fill failed.
        fill: E,
        /// Why putting back failed.
        #[source]
        put_back: EngineError,
        /// Where the previous entries are, inside the directory.
        aside: String,
    },
}

/// In a helper container started from `spec` (which mounts `dir`), moves
/// the entries of `dir` aside, then runs `fill` with the helper's id;
/// puts the previous entries back if it fails. Returns the name of the
/// directory, inside `dir`, that holds the previous entries.
pub async fn swap_through_helper<F, Fut, E>(
    engine: &Engine,
    spec: ScratchSpec,
    dir: &str,
    fill: F,
) -> Result<String, HelperSwapError<E>>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    let aside = format!(
        ".kompose-dr-replaced-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let helper = engine
        .run_scratch(ScratchSpec {
            user: Some("0".into()),
            ..spec
        })
        .await
        .map_err(HelperSwapError::Start)?;
    let sh = |script: &str| ExecSpec::new(["sh", "-c", script, "sh", dir, &aside]);
    engine
        .output(&helper.id, sh(MOVE_ASIDE))
        .await
        .map_err(HelperSwapError::Aside)?;
    if let Err(fill_error) = fill(helper.id.clone()).await {
        return Err(match engine.output(&helper.id, sh(PUT_BACK)).await {
            Ok(_) => HelperSwapError::Fill(fill_error),
            Err(put_back) => HelperSwapError::PutBack {
                fill: fill_error,
                put_back,
                aside,
            },
        });
    }
    Ok(aside)
}

/// The staged files under `staging` as a tar stream for the engine's
/// archive upload ([`crate::engine::Engine::upload`]): its root as `./`,
/// symlinks stored as links.
pub fn staged_tar(
    staging: PathBuf,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    crate::engine::tar_stream(move |b| {
        b.follow_symlinks(false);
        b.append_dir_all(".", &staging)
    })
}
