//! Stack ids: which stack a repository's snapshots belong to.
//!
//! `init` makes one id for a configuration and writes it into the signed
//! marker of every repository it creates (reusing the id an existing
//! repository of the configuration already has), and every manifest
//! committed there carries it. `copy` carries manifests over byte for byte,
//! so a copied snapshot keeps its stack. Readers take `latest`, a point in
//! time, retention and the agent's schedule from this stack's snapshots
//! only; a snapshot of another stack (signed by the same key, written for
//! another host or repository) is listed apart and used only when named.
//!
//! A repository written before stack ids has none until the first backup
//! after the upgrade adopts it ([`Repository::adopt`]).

use super::{FORMAT_VERSION, MARKER, Marker, MarkerState, Repository, RepositoryError};
use crate::storage::PutMode;

/// A new stack id (a random UUID).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `s` is a stack id as kompose-dr writes it: a UUID in its
/// lower-case hyphenated form.
pub fn is_stack_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// The stack id for repositories about to be created or adopted: the one
/// the first of `markers` (the configuration's repositories that could be
/// read) carries, else a new one.
pub fn choose<'a>(markers: impl IntoIterator<Item = &'a Marker>) -> String {
    markers
        .into_iter()
        .find_map(|m| m.stack.clone())
        .unwrap_or_else(new_id)
}

impl Repository {
    /// Gives a repository written before stack ids the stack id `stack`:
    /// its marker is rewritten with it (format version 2) and signed.
    /// Returns whether it did; a repository that has an id keeps it. Call
    /// while holding the writer lock.
    pub async fn adopt(&self, stack: &str) -> Result<bool, RepositoryError> {
        let marker = self.marker().await?;
        if marker.stack.is_some() {
            return Ok(false);
        }
        if !self.may_commit() {
            return Err(self.signature(super::signing::SignatureError::CannotSign {
                what: MARKER.into(),
                why: "adopting a repository written before stack ids re-signs its marker: set [signing] key_file".into(),
            }));
        }
        // The snapshots it holds now are this stack's; a snapshot without
        // a stack id planted later is not.
        let legacy: Vec<String> = self
            .listing()
            .await?
            .ours
            .into_iter()
            .map(|m| m.id)
            .collect();
        let adopted = Marker {
            version: FORMAT_VERSION,
            stack: Some(stack.to_owned()),
            legacy: Some(legacy),
            ..marker
        };
        let body = serde_json::to_vec_pretty(&adopted).expect("marker serialises");
        self.put_signed(MARKER, body, PutMode::Overwrite).await?;
        self.set_state(MarkerState {
            signed: true,
            stack: adopted.stack,
            legacy: adopted.legacy.map(|l| l.into_iter().collect()),
        });
        tracing::warn!(
            repository = %self.name,
            stack,
            "repository written before stack ids adopted: its marker now names this stack (once, after the upgrade); \
             its older snapshots belong to it"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_in_one_spelling() {
        let id = new_id();
        assert!(is_stack_id(&id));
        assert!(!is_stack_id(&id.to_uppercase()));
        assert!(!is_stack_id(&id.replace('-', "")));
        assert!(!is_stack_id("../x"));
        assert!(!is_stack_id(""));
    }

    #[test]
    fn the_first_existing_id_is_kept() {
        let m = |stack: Option<&str>| Marker {
            format: "kompose-dr".into(),
            version: 2,
            created_at: chrono::Utc::now(),
            recipients: vec![],
            stack: stack.map(str::to_owned),
            legacy: None,
        };
        let a = new_id();
        assert_eq!(choose(&[m(None), m(Some(&a)), m(Some("other"))]), a);
        assert!(is_stack_id(&choose(&[m(None)])));
    }
}
