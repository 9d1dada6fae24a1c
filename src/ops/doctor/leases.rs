//! `repository NAME: lock`: the writer-lock leases of an S3 repository,
//! judged as the next writer would judge them — by the store's clock, each
//! for its own time to live but never more than the configured `lease_ttl`.
//! A lease that cannot be read, or that asks for more than `lease_ttl`, is
//! not one kompose-dr wrote as it is: the check fails naming its key and
//! when it goes stale.

use bytes::Bytes;

use super::{Check, check};
use crate::model::config::{Location, RepositoryConfig};
use crate::repository::Repository;
use crate::storage::{Backend, PutMode, StorageError};

/// The check of `repo`'s leases; none for a local repository (its lock is
/// a `flock`, which the kernel releases).
pub(super) async fn leases(rc: &RepositoryConfig, repo: &Repository, checks: &mut Vec<Check>) {
    let Location::S3(s3) = &rc.location else {
        return;
    };
    let backend = repo.backend();
    let result = async {
        let now = store_now(&**backend).await?;
        crate::repository::lock::lease::survey(&**backend, s3.lease_ttl, now).await
    }
    .await;
    let name = format!("repository {}: lock", repo.name());
    checks.push(check(
        name,
        match result {
            Ok(seen) => verdict(&seen, s3.lease_ttl.as_secs()),
            Err(e) => Err(format!("cannot list the leases: {e}").into()),
        },
    ));
}

/// The store's clock now: the time it stamps on a probe written just now
/// (and removed).
async fn store_now(
    backend: &dyn Backend,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StorageError> {
    let key = format!("doctor/clock-{:08x}", rand::random::<u32>());
    backend
        .put(
            &key,
            Bytes::from_static(b"kompose-dr doctor clock\n"),
            PutMode::Overwrite,
        )
        .await?;
    let listed = backend.list("doctor/").await;
    backend.delete(&key).await?;
    Ok(listed?
        .into_iter()
        .find(|o| o.key == key)
        .and_then(|o| o.modified))
}

/// Passes unless a lease is suspect (unreadable, or asking for more than
/// the configured time to live) and not yet stale.
fn verdict(seen: &[crate::repository::lock::lease::Seen], ttl: u64) -> super::Verdict {
    if seen.is_empty() {
        return Ok("no lease: no writer holds the lock".into());
    }
    let say = |s: &crate::repository::lock::lease::Seen| {
        if s.stale {
            format!("{} — stale: the next writer removes it", s.description)
        } else {
            s.description.clone()
        }
    };
    let all = seen.iter().map(say).collect::<Vec<_>>().join("; ");
    if seen.iter().any(|s| s.suspect && !s.stale) {
        Err(format!(
            "{all}. A lease kompose-dr did not write as it is (unreadable, or asking for more than lease_ttl = {ttl}s) \
             blocks writers until it goes stale: if no kompose-dr writes here, remove it; if another host does, \
             give every host the same lease_ttl"
        )
        .into())
    } else {
        Ok(all)
    }
}
