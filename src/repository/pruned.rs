//! Prune's signed records of what it removed (`pruned/<ID>.json`).
//!
//! Each snapshot names its predecessor, so a snapshot that is gone shows as
//! a broken link. Prune removes snapshots too, and says so here before it
//! removes them, signed like a manifest: a link broken by prune is
//! accounted for, any other is a snapshot that vanished. Someone who can
//! write to the store can still delete; they cannot make a deletion look
//! like prune's without the signing key.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::validate::MAX_DOCUMENT;
use super::{DamagedManifest, Repository, RepositoryError};
use crate::model::time::is_snapshot_id;
use crate::storage::{PutMode, keys};

/// The format version of the records this build writes.
pub const PRUNE_RECORD_VERSION: u32 = 1;

/// The most records read: one a prune run, so decades of nightly runs.
pub const MAX_RECORDS: usize = 50_000;

/// The most snapshots one record names.
pub const MAX_REMOVED: usize = 100_000;

/// What one prune run removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRecord {
    /// Format version.
    pub version: u32,
    /// The run's id (the record's file name).
    pub id: String,
    /// The stack whose snapshots it removed.
    pub stack: Option<String>,
    /// The repository (its configured name) it removed them from: a record
    /// copied into another repository accounts for nothing there.
    pub repository: String,
    /// The host that ran it.
    pub host: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The snapshots it removed.
    pub removed: Vec<String>,
}

/// Why a record read at some key is not one kompose-dr writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the record's shape.
    #[error("not a prune record: {0}")]
    Parse(String),
    /// A field is not what kompose-dr writes there.
    #[error("{0}")]
    Invalid(String),
}

/// Why a prune record in the store is not used (reported as damaged).
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// The key is not an object (a directory, a special file).
    #[error("{0}")]
    NotAnObject(String),
    /// Its signature does not check out.
    #[error(transparent)]
    Unsigned(#[from] super::CheckError),
    /// It is not a record kompose-dr writes.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Parses and checks a record read at `key`.
pub fn parse(body: &[u8], key: &str) -> Result<PruneRecord, RecordError> {
    let r: PruneRecord =
        serde_json::from_slice(body).map_err(|e| RecordError::Parse(e.to_string()))?;
    let invalid = |m: String| Err(RecordError::Invalid(m));
    if r.version > PRUNE_RECORD_VERSION {
        return invalid(format!(
            "record version {} is newer than this kompose-dr reads",
            r.version
        ));
    }
    if !is_snapshot_id(&r.id) || keys::prune_record_key(&r.id) != key {
        return invalid(format!(
            "a record named `{}` cannot be at {key}",
            r.id.escape_debug()
        ));
    }
    if r.removed.len() > MAX_REMOVED {
        return invalid(format!(
            "{} snapshots is more than one prune removes",
            r.removed.len()
        ));
    }
    if let Some(bad) = r.removed.iter().find(|id| !is_snapshot_id(id)) {
        return invalid(format!("`{}` is not a snapshot id", bad.escape_debug()));
    }
    if r.stack
        .as_deref()
        .is_some_and(|s| !super::stack::is_stack_id(s))
    {
        return invalid("its stack is not a stack id".into());
    }
    Ok(r)
}

impl Repository {
    /// Records, signed, that prune is about to remove `removed`: written
    /// before the first manifest goes, so that no removal is ever unrecorded.
    pub async fn record_prune(&self, removed: &[String]) -> Result<(), RepositoryError> {
        let now = Utc::now();
        let record = PruneRecord {
            version: PRUNE_RECORD_VERSION,
            id: crate::model::time::snapshot_id(now),
            stack: self.marker_state().await.stack,
            repository: self.name.clone(),
            host: crate::model::host::name(),
            at: now,
            removed: removed.to_vec(),
        };
        let body = serde_json::to_vec_pretty(&record).expect("a record serialises");
        self.put_signed(
            &keys::prune_record_key(&record.id),
            body,
            PutMode::CreateNew,
        )
        .await
    }

    /// Every snapshot id a prune record that checks out names, and the
    /// records that do not (named, with why).
    pub async fn pruned(
        &self,
    ) -> Result<(BTreeSet<String>, Vec<DamagedManifest>), RepositoryError> {
        let objects = self
            .backend
            .list(keys::PRUNED)
            .await
            .map_err(|e| self.storage(e))?;
        let objects: Vec<_> = objects
            .into_iter()
            .filter(|o| o.key.ends_with(".json"))
            .collect();
        if objects.len() > MAX_RECORDS {
            return Err(RepositoryError::TooMany {
                name: self.name.clone(),
                prefix: keys::PRUNED,
                count: objects.len(),
                limit: MAX_RECORDS,
            });
        }
        let mut removed = BTreeSet::new();
        let mut damaged = Vec::new();
        for o in objects {
            match self.read_record(&o.key).await? {
                Ok(Some(r)) if r.repository == self.name => removed.extend(r.removed),
                Ok(Some(r)) => damaged.push(DamagedManifest {
                    key: o.key,
                    message: format!(
                        "a record of what prune removed from repository `{}`, not from this one: it accounts for nothing here",
                        r.repository.escape_debug()
                    ),
                }),
                Ok(None) => {}
                Err(e) => damaged.push(DamagedManifest {
                    key: o.key,
                    message: e.to_string(),
                }),
            }
        }
        Ok((removed, damaged))
    }

    /// One record, checked: `Ok(Err(why))` for one that does not check out.
    async fn read_record(
        &self,
        key: &str,
    ) -> Result<Result<Option<PruneRecord>, Unusable>, RepositoryError> {
        let body = match self.read_document(key, MAX_DOCUMENT).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Ok(None)),
            Err(crate::storage::StorageError::NotAnObject { message, .. }) => {
                return Ok(Err(Unusable::NotAnObject(message)));
            }
            Err(e) => return Err(self.storage(e)),
        };
        if let Err(e) = self.check_signed(key, &body).await {
            return Ok(Err(e.into()));
        }
        Ok(parse(&body, key).map(Some).map_err(Unusable::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> (PruneRecord, String) {
        let id = "20261201T040000Z-abcdef".to_owned();
        let key = keys::prune_record_key(&id);
        let r = PruneRecord {
            version: 1,
            id,
            stack: Some(super::super::stack::new_id()),
            repository: "local".into(),
            host: "h".into(),
            at: Utc::now(),
            removed: vec!["20261101T030000Z-123456".into()],
        };
        (r, key)
    }

    #[test]
    fn a_record_kompose_dr_writes_passes_and_forgeries_are_named() {
        let (r, key) = record();
        assert_eq!(parse(&serde_json::to_vec(&r).unwrap(), &key).unwrap(), r);
        type Forgery = Box<dyn Fn(&mut PruneRecord)>;
        let forged: Vec<Forgery> = vec![
            Box::new(|r| r.id = "20261201T040000Z-abcdee".into()),
            Box::new(|r| r.removed.push("../../etc".into())),
            Box::new(|r| r.stack = Some("x".into())),
            Box::new(|r| r.version = 9),
        ];
        for (i, f) in forged.iter().enumerate() {
            let mut bad = r.clone();
            f(&mut bad);
            assert!(
                parse(&serde_json::to_vec(&bad).unwrap(), &key).is_err(),
                "forgery {i} passed"
            );
        }
        assert!(matches!(parse(b"{}", &key), Err(RecordError::Parse(_))));
    }
}
