//! The archived WAL in a repository (docs/DESIGN.md §11): records read,
//! checked and signed like manifests, and removed record first.
//!
//! A record is trusted only as far as a manifest is: its signature must
//! check out (unless `--allow-unsigned`), its key must be the one built from
//! its own fields, and the file it names must be the key kompose-dr builds
//! for it. The archived file is then read against the record's size and
//! sha256, as an artifact is against its manifest.

use bytes::Bytes;

use super::validate::{Invalid, MAX_DOCUMENT, is_sha256};
use super::{DamagedManifest, Repository, RepositoryError};
use crate::model::wal::{
    Segment, WAL_RECORD_VERSION, WalKind, WalRecord, parse_history, valid_segment_size,
};
use crate::storage::{PutMode, StorageError, keys};

/// Whether `s` is a system identifier as PostgreSQL prints it.
pub fn is_system_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a record read at `key`: everything in it that names a key or a
/// file must be what kompose-dr would have written.
pub fn validate(r: &WalRecord, key: &str) -> Result<(), Invalid> {
    if r.version > WAL_RECORD_VERSION {
        return Err(Invalid(format!(
            "record version {} is newer than this kompose-dr reads",
            r.version
        )));
    }
    if !is_system_identifier(&r.system_identifier) {
        return Err(Invalid("its system identifier is not a number".into()));
    }
    if !valid_segment_size(r.segment_size) {
        return Err(Invalid(format!(
            "segment size {} is not one PostgreSQL uses",
            r.segment_size
        )));
    }
    match r.kind {
        WalKind::History => {
            if parse_history(&r.name) != Some(r.timeline) {
                return Err(Invalid(format!(
                    "`{}` is not timeline {}'s history",
                    r.name.escape_debug(),
                    r.timeline
                )));
            }
        }
        _ => match Segment::parse(&r.name, r.segment_size) {
            Some(s) if s.timeline == r.timeline => {}
            _ => {
                return Err(Invalid(format!(
                    "`{}` is not a WAL segment of timeline {}",
                    r.name.escape_debug(),
                    r.timeline
                )));
            }
        },
    }
    let partial = r.kind == WalKind::Partial;
    let expected = keys::wal_record_key(&r.system_identifier, r.timeline, &r.name, partial);
    if key != expected {
        return Err(Invalid(format!("a record at {key} must be at {expected}")));
    }
    let path_ok = if partial {
        let stem = keys::wal_file_key(&r.system_identifier, r.timeline, &r.name, Some(""));
        let stem = stem.trim_end_matches(".zst.age");
        r.path
            .strip_prefix(stem)
            .and_then(|t| t.strip_suffix(".zst.age"))
            .is_some_and(|t| {
                t.len() == 16
                    && t.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
    } else {
        r.path == keys::wal_file_key(&r.system_identifier, r.timeline, &r.name, None)
    };
    if !path_ok {
        return Err(Invalid(format!(
            "it names the file `{}`, which is not its own",
            r.path.escape_debug()
        )));
    }
    if !is_sha256(&r.sha256) {
        return Err(Invalid("its digest is not a sha256".into()));
    }
    Ok(())
}

/// Why a WAL record could not be read again.
#[derive(Debug, thiserror::Error)]
pub enum RecordAgainError {
    /// It is gone (a partial segment's record, removed once the segment
    /// was complete).
    #[error("{0} does not exist")]
    Gone(String),
    /// It is there and refused.
    #[error("{key}: {why}: refusing it")]
    Refused {
        /// The record's key.
        key: String,
        /// Why.
        why: String,
    },
}

/// A record as read: its body with the signature checked, or why not.
enum Read {
    /// Nothing is there.
    Missing,
    /// The body, its signature checked.
    Body(Bytes),
    /// There, and refused (too large, wrongly signed).
    Refused(String),
}

/// How many times a refused partial segment's record is read again, and
/// how long apart: the archiver overwrites it as it ships newer copies,
/// signature first, then the record, so a reader between the two writes
/// sees the new signature beside the old record.
const REREADS: u32 = 3;
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

impl Repository {
    /// The record at `key` with its signature checked; a partial
    /// segment's record that is refused is read again ([`REREADS`]) before
    /// the refusal counts: a forged one stays refused, a half-replaced one
    /// reads whole.
    async fn read_wal_record(&self, key: &str) -> Result<Read, StorageError> {
        let mut tries = if key.ends_with(".partial.json") {
            REREADS
        } else {
            0
        };
        loop {
            let read = match self.read_document(key, MAX_DOCUMENT).await {
                Ok(Some(body)) => match self.check_signed(key, &body).await {
                    Ok(_) => Read::Body(body),
                    Err(e) => Read::Refused(e.to_string()),
                },
                Ok(None) => Read::Missing,
                Err(StorageError::NotAnObject { message, .. }) => Read::Refused(message),
                Err(e) => return Err(e),
            };
            if !matches!(read, Read::Refused(_)) || tries == 0 {
                return Ok(read);
            }
            tries -= 1;
            tokio::time::sleep(REREAD_AFTER).await;
        }
    }
}

impl Repository {
    /// The clusters with archived WAL (their system identifiers).
    pub async fn wal_clusters(&self) -> Result<Vec<String>, RepositoryError> {
        let dirs = self
            .backend()
            .list_dirs(keys::WAL)
            .await
            .map_err(|e| self.storage(e))?;
        Ok(dirs
            .into_iter()
            .filter(|d| is_system_identifier(d))
            .collect())
    }

    /// Every WAL record of cluster `system_identifier` that checks out, and
    /// the ones that do not (named, with why).
    pub async fn wal_records(
        &self,
        system_identifier: &str,
    ) -> Result<(Vec<WalRecord>, Vec<DamagedManifest>), RepositoryError> {
        let objects = self
            .backend()
            .list(&keys::wal_cluster_prefix(system_identifier))
            .await
            .map_err(|e| self.storage(e))?;
        let mut good = Vec::new();
        let mut damaged = Vec::new();
        for o in objects.into_iter().filter(|o| o.key.ends_with(".json")) {
            let bad = |message: String| DamagedManifest {
                key: o.key.clone(),
                message,
            };
            if o.size > MAX_DOCUMENT {
                damaged.push(bad(format!(
                    "{} bytes is more than any record kompose-dr writes",
                    o.size
                )));
                continue;
            }
            let body = match self.read_wal_record(&o.key).await {
                Ok(Read::Body(b)) => b,
                Ok(Read::Missing) => continue,
                Ok(Read::Refused(message)) => {
                    damaged.push(bad(message));
                    continue;
                }
                Err(e) => return Err(self.storage(e)),
            };
            match serde_json::from_slice::<WalRecord>(&body) {
                Ok(r) if r.system_identifier == system_identifier => match validate(&r, &o.key) {
                    Ok(()) => good.push(r),
                    Err(m) => damaged.push(bad(m.0)),
                },
                Ok(_) => damaged.push(bad("it names another cluster".into())),
                Err(e) => damaged.push(bad(e.to_string())),
            }
        }
        Ok((good, damaged))
    }

    /// The current record of `r`'s file (a partial segment's record is
    /// replaced as the archiver ships newer copies), checked like any, and
    /// never older than `r`.
    pub async fn wal_record_again(&self, r: &WalRecord) -> Result<WalRecord, RecordAgainError> {
        let key = keys::wal_record_key(
            &r.system_identifier,
            r.timeline,
            &r.name,
            r.kind == WalKind::Partial,
        );
        let refused = |why: String| RecordAgainError::Refused {
            key: key.clone(),
            why,
        };
        let body = match self.read_wal_record(&key).await {
            Ok(Read::Body(b)) => b,
            Ok(Read::Missing) => return Err(RecordAgainError::Gone(key)),
            Ok(Read::Refused(why)) => return Err(refused(why)),
            Err(e) => return Err(refused(e.to_string())),
        };
        let again: WalRecord = serde_json::from_slice(&body).map_err(|e| refused(e.to_string()))?;
        validate(&again, &key).map_err(|m| refused(m.0))?;
        if again.system_identifier != r.system_identifier {
            return Err(refused("it names another cluster".into()));
        }
        // A record only moves forward: an older signed copy put back
        // between planning and fetching would hide WAL the plan counted on.
        // (A complete segment that replaced a partial one covers it all.)
        if again.kind == r.kind
            && (again.covered_until < r.covered_until || again.end_lsn < r.end_lsn)
        {
            return Err(refused(
                "it went backwards since the plan read it (an older signed copy was put back)"
                    .into(),
            ));
        }
        Ok(again)
    }

    /// Writes (or replaces) a record, signed: the archived file it names
    /// must already be durable.
    pub async fn put_wal_record(&self, r: &WalRecord) -> Result<(), RepositoryError> {
        let key = keys::wal_record_key(
            &r.system_identifier,
            r.timeline,
            &r.name,
            r.kind == WalKind::Partial,
        );
        let body = serde_json::to_vec_pretty(r).expect("a record serialises");
        self.put_signed(&key, body, PutMode::Overwrite).await
    }

    /// Removes an archived WAL file: its record (and signature) first, so
    /// that no reader ever finds a record without its file.
    pub async fn delete_wal(&self, r: &WalRecord) -> Result<(), RepositoryError> {
        let key = keys::wal_record_key(
            &r.system_identifier,
            r.timeline,
            &r.name,
            r.kind == WalKind::Partial,
        );
        self.delete_object(&key).await?;
        self.delete_object(&keys::signature_key(&key)).await?;
        self.delete_object(&r.path).await
    }

    /// Removes one object (a missing one is not an error).
    pub async fn delete_object(&self, key: &str) -> Result<(), RepositoryError> {
        self.backend()
            .delete(key)
            .await
            .map_err(|e| self.storage(e))
    }

    /// Reads a small object whole.
    pub async fn get_object(&self, key: &str) -> Result<Bytes, RepositoryError> {
        self.backend().get(key).await.map_err(|e| self.storage(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> (WalRecord, String) {
        let r = WalRecord {
            version: 1,
            system_identifier: "7312345678901234567".into(),
            name: "000000010000000000000003".into(),
            timeline: 1,
            kind: WalKind::Segment,
            segment_size: 16 << 20,
            path: "wal/7312345678901234567/00000001/000000010000000000000003.zst.age".into(),
            plaintext_bytes: 16 << 20,
            stored_bytes: 100,
            sha256: "a".repeat(64),
            archived_at: chrono::Utc::now(),
            covered_until: None,
            end_lsn: None,
        };
        let key = keys::wal_record_key(&r.system_identifier, 1, &r.name, false);
        (r, key)
    }

    #[test]
    fn a_record_kompose_dr_writes_passes_and_forgeries_are_named() {
        let (r, key) = record();
        validate(&r, &key).unwrap();
        type Forgery = Box<dyn Fn(&mut WalRecord)>;
        let forged: Vec<Forgery> = vec![
            Box::new(|r| r.path = "data/x/postgres/app.dump.zst.age".into()),
            Box::new(|r| r.name = "000000020000000000000003".into()),
            Box::new(|r| r.name = "../../etc/passwd".into()),
            Box::new(|r| r.segment_size = 1000),
            Box::new(|r| r.sha256 = "x".into()),
            Box::new(|r| r.system_identifier = "../1".into()),
            Box::new(|r| r.version = 99),
            Box::new(|r| r.kind = WalKind::Partial),
        ];
        for (i, f) in forged.iter().enumerate() {
            let mut bad = r.clone();
            f(&mut bad);
            assert!(validate(&bad, &key).is_err(), "forgery {i} passed");
        }
        let mut p = r.clone();
        p.kind = WalKind::Partial;
        p.path = format!(
            "wal/7312345678901234567/00000001/000000010000000000000003.partial-{}.zst.age",
            "0123456789abcdef"
        );
        validate(
            &p,
            &keys::wal_record_key(&p.system_identifier, 1, &p.name, true),
        )
        .unwrap();
    }

    /// A partial segment's record, in a repository `repo` initialised now.
    async fn partial_in(repo: &Repository) -> WalRecord {
        let r = age::x25519::Identity::generate().to_public();
        repo.init(&[r], &crate::repository::stack::new_id())
            .await
            .unwrap();
        let (mut old, _) = record();
        old.kind = WalKind::Partial;
        old.path = keys::wal_file_key(
            &old.system_identifier,
            1,
            &old.name,
            Some("0123456789abcdef"),
        );
        old
    }

    #[tokio::test]
    async fn a_partial_record_put_back_older_than_planned_is_refused() {
        let mem = crate::storage::memory::MemoryBackend::new();
        let repo = Repository::with_backend("mem", std::sync::Arc::new(mem));
        let mut old = partial_in(&repo).await;
        let t = chrono::Utc::now();
        old.covered_until = Some(t - chrono::Duration::seconds(60));
        repo.put_wal_record(&old).await.unwrap();
        // The plan read a newer one; the older, signed all the same, was
        // put back before the fetch.
        let planned = WalRecord {
            covered_until: Some(t),
            ..old.clone()
        };
        let e = repo.wal_record_again(&planned).await.unwrap_err();
        assert!(
            matches!(e, RecordAgainError::Refused { .. })
                && e.to_string().contains("went backwards"),
            "{e}"
        );
        assert_eq!(repo.wal_record_again(&old).await.unwrap(), old);
    }

    /// The archiver replaces a partial segment's record signature first:
    /// a reader between the two writes reads the old record beside the
    /// new signature. It reads again, and gets the new record whole; a
    /// record that stays wrongly signed stays refused.
    #[tokio::test]
    async fn a_half_replaced_partial_record_reads_whole_and_a_forged_one_stays_refused() {
        use crate::storage::Backend;
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let trust = crate::model::config::Trust {
            public_key: Some(kp.pk.to_base64()),
            signing_key: Some(crate::model::secret::Secret::new(
                kp.sk.to_box(None).unwrap().into_string(),
            )),
            allow_unsigned: false,
            seen_dir: None,
        };
        let mem = crate::storage::memory::MemoryBackend::new();
        let repo =
            Repository::with_backend("mem", std::sync::Arc::new(mem.clone())).trusting(trust);
        let old = partial_in(&repo).await;
        let key = keys::wal_record_key(&old.system_identifier, 1, &old.name, true);
        repo.put_wal_record(&old).await.unwrap();
        let old_body = mem.get(&key).await.unwrap();
        let newer = WalRecord {
            covered_until: Some(chrono::Utc::now()),
            ..old.clone()
        };
        repo.put_wal_record(&newer).await.unwrap();
        let new_body = mem.get(&key).await.unwrap();
        // The new signature is there, the old record still beside it; the
        // archiver's second write lands while the reader waits.
        mem.put(&key, old_body.clone(), PutMode::Overwrite)
            .await
            .unwrap();
        let (finish, body) = (mem.clone(), new_body.clone());
        let k = key.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(REREAD_AFTER / 2).await;
            finish.put(&k, body, PutMode::Overwrite).await.unwrap();
        });
        let again = repo.wal_record_again(&old).await.unwrap();
        assert_eq!(again, newer);
        writer.await.unwrap();
        // Left half-replaced (or forged), it is refused after the rereads.
        mem.put(&key, old_body, PutMode::Overwrite).await.unwrap();
        let e = repo.wal_record_again(&old).await.unwrap_err();
        assert!(matches!(e, RecordAgainError::Refused { .. }), "{e}");
        let (good, bad) = repo.wal_records(&old.system_identifier).await.unwrap();
        assert!(good.is_empty());
        assert_eq!(bad.len(), 1, "{bad:?}");
    }
}
