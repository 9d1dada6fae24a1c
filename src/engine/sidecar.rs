//! Sidecars: long-lived helper containers of one kompose-dr process (the
//! WAL archiver's pg_receivewal, sharing the server's network namespace),
//! made with [`Engine::run_scratch`] under a label of their own. The
//! successor of a killed process removes what it left by that label, once
//! it holds the lock that proves no other process uses it.

use super::{Engine, EngineError};

impl Engine {
    /// Removes every container, running or not, labelled `key=value`.
    /// Returns how many went.
    pub async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, EngineError> {
        let list = self.list(Some(&format!("{key}={value}"))).await?;
        let mut removed = 0;
        for c in list {
            // The engine's filter already matched; checked again so that
            // a filter the engine ignored cannot remove a stranger.
            let ours = c
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .is_some_and(|v| v == value);
            if let (true, Some(id)) = (ours, c.id) {
                tracing::info!(container = %id, label = %key, "removing a container a killed kompose-dr left");
                self.remove(&id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
