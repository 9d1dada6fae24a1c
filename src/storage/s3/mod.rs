//! A repository on an S3-compatible store (AWS S3, Garage, MinIO, B2,
//! Wasabi), on aws-sdk-s3.
//!
//! - **Uploads** stream: an [`ObjectWriter`] fills one part (16 MiB by
//!   default) at a time and sends it while the next one fills. At most
//!   `concurrency` parts of the whole repository are in flight; a writer
//!   that would exceed that waits, which holds back the pipeline behind it.
//!   Memory is therefore bounded by `(concurrency + writers) × part_size`,
//!   whatever the artifact's size. Objects smaller than one part go up in a
//!   single PUT. A multipart upload is aborted on failure, on `abort`, and
//!   when a writer is dropped unfinished (Ctrl-C, SIGTERM).
//! - **Retries** are the SDK's standard mode: every request (each part on
//!   its own) is retried on 5xx, throttling, timeouts and connection resets
//!   with exponential backoff and full jitter, up to `retries` times; one
//!   attempt may take at most `timeout`.
//! - **Downloads** stream through a bounded channel and resume with a ranged
//!   GET (pinned to the object's ETag) when a connection drops or stalls.
//! - **Errors** are mapped to messages that say what to fix: unknown key,
//!   wrong secret, access denied, missing bucket, DNS, TLS, clock skew.
//!
//! Objects are only visible once complete (S3 semantics), so the
//! repository's commit protocol — the manifest last — holds unchanged.
//!
//! **Keys** are held to what kompose-dr builds ([`super::is_valid_key`]),
//! as on a local repository: one with an empty part, `.`, `..`, a NUL or a
//! backslash is refused before it reaches the store
//! ([`StorageError::BadKey`]), and a listed object or upload whose key is
//! not one is skipped with a warning, never used (anyone who can write to
//! the bucket can name objects anything).
//!
//! The files: this one holds the backend and its [`Backend`] impl;
//! `client` builds the SDK client, `object` the single-object PUT and GET,
//! `upload` the multipart writer, `download` the resumable reader, `errors`
//! the mapping of SDK errors to messages (S3's protocol limits are [`crate::model::s3_limits`]).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{OnceCell, Semaphore};

use super::{Backend, ObjectMeta, ObjectReader, ObjectWriter, PutMode, StorageError};

mod client;
mod download;
mod errors;
mod object;
mod upload;

use crate::model::config::S3Config;
use errors::gone_is_fine;
use upload::abort;

/// An S3 bucket and prefix.
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
}

/// What every request, writer and reader of one backend shares.
struct Inner {
    cfg: S3Config,
    client: OnceCell<Client>,
    /// Parts in flight, shared by every writer of this repository.
    parts: Arc<Semaphore>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.inner.cfg.to_string())
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A backend for the configured bucket (no I/O until first use).
    pub fn new(cfg: &S3Config) -> Self {
        S3Backend {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                client: OnceCell::new(),
                parts: Arc::new(Semaphore::new(cfg.concurrency)),
            }),
        }
    }
}

/// `key`, if kompose-dr could have built it; else [`StorageError::BadKey`].
fn checked(key: &str) -> Result<&str, StorageError> {
    if super::is_valid_key(key) {
        Ok(key)
    } else {
        Err(StorageError::BadKey(key.escape_debug().to_string()))
    }
}

/// `prefix`, if it is empty (the whole repository) or a valid key with at
/// most one `/` after it; else [`StorageError::BadKey`].
fn checked_prefix(prefix: &str) -> Result<&str, StorageError> {
    if prefix.is_empty() {
        return Ok(prefix);
    }
    checked(prefix.strip_suffix('/').unwrap_or(prefix)).map(|_| prefix)
}

/// The repository key of a listed object (`full`, the bucket's key), if it
/// is under the repository's `prefix` and one kompose-dr could have
/// written; anything else is skipped with a warning.
fn listed<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    let rel = full.strip_prefix(prefix)?;
    if super::is_valid_key(rel) {
        Some(rel)
    } else {
        tracing::warn!(
            key = %full.escape_debug(),
            "skipping an object whose key kompose-dr never writes (an empty part, `.`, `..`, NUL or backslash): remove it from the bucket"
        );
        None
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.cfg.prefix)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.full_key(key))
    }

    fn bucket_location(&self) -> String {
        self.cfg.to_string()
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        self.inner.bucket_location()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let key = checked(key)?;
        // Build the client now, so that the first part is not delayed by it.
        self.inner.client().await;
        Ok(Box::new(upload::S3Writer::new(self.inner.clone(), key)))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.inner.put_object(checked(key)?, data, mode).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let key = checked(key)?;
        let inner = &self.inner;
        let out = inner.get_object(key, 0, None).await?;
        let limit = super::MAX_SMALL_OBJECT;
        let too_large = || StorageError::NotAnObject {
            location: inner.location(key),
            message: format!(
                "more than {} MiB: no manifest, marker or facts file is that large",
                limit >> 20
            ),
        };
        if out.content_length.is_some_and(|n| n as u64 > limit) {
            return Err(too_large());
        }
        // Read at most the limit, whatever the store says the size is.
        let mut body = out.body;
        let mut data = bytes::BytesMut::new();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| StorageError::Remote {
                op: "read",
                location: inner.location(key),
                message: format!("the connection broke: {e}"),
            })?;
            if data.len() as u64 + piece.len() as u64 > limit {
                return Err(too_large());
            }
            data.extend_from_slice(&piece);
        }
        Ok(data.freeze())
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        download::open(self.inner.clone(), checked(key)?).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = checked_prefix(prefix)?;
        let inner = &self.inner;
        let full = inner.full_key(prefix);
        let mut out = Vec::new();
        let mut pages = inner
            .client()
            .await
            .list_objects_v2()
            .bucket(&inner.cfg.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| inner.error("list", &inner.location(prefix), e))?;
            for o in page.contents() {
                let Some(rel) = o.key().and_then(|k| listed(&inner.cfg.prefix, k)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = checked(key)?;
        let inner = &self.inner;
        match inner
            .client()
            .await
            .delete_object()
            .bucket(&inner.cfg.bucket)
            .key(inner.full_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => gone_is_fine(inner.error("delete", &inner.location(key), e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        // Never the whole repository.
        checked(prefix.strip_suffix('/').unwrap_or(prefix))?;
        let inner = &self.inner;
        let keys: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(inner.full_key(k))
                        .build()
                        .expect("key is set")
                })
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .expect("objects are set");
            let out = inner
                .client()
                .await
                .delete_objects()
                .bucket(&inner.cfg.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| inner.error("delete", &inner.location(prefix), e))?;
            if let Some(e) = out.errors().first() {
                return Err(StorageError::Remote {
                    op: "delete",
                    location: inner.location(e.key().unwrap_or(prefix)),
                    message: format!(
                        "the store refused: {} {} (with Object Lock, objects stay until their retention ends)",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                });
            }
        }
        // Unfinished uploads under the prefix go too.
        for (key, id, _) in self.uploads(prefix).await? {
            abort(&self.inner, &key, &id).await?;
        }
        Ok(())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = checked_prefix(prefix)?;
        let inner = &self.inner;
        let full = inner.full_key(prefix);
        let mut out = std::collections::BTreeSet::new();
        let mut pages = inner
            .client()
            .await
            .list_objects_v2()
            .bucket(&inner.cfg.bucket)
            .prefix(&full)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| inner.error("list", &inner.location(prefix), e))?;
            for p in page.common_prefixes() {
                if let Some(name) = p
                    .prefix()
                    .and_then(|p| p.strip_prefix(&full))
                    .map(|n| n.trim_end_matches('/'))
                    .filter(|n| !n.is_empty())
                    .and_then(|n| listed("", n))
                {
                    out.insert(name.to_owned());
                }
            }
        }
        for (key, _, _) in self.uploads(prefix).await? {
            if let Some(name) = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once('/'))
                .map(|(n, _)| n)
            {
                out.insert(name.to_owned());
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn abandoned_writes(
        &self,
        before: DateTime<Utc>,
        remove: bool,
    ) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        for (key, id, initiated) in self.uploads("").await? {
            if initiated.is_some_and(|t| t >= before) {
                continue;
            }
            if remove {
                abort(&self.inner, &key, &id).await?;
            }
            out.push(format!("{key} (multipart upload {id})"));
        }
        Ok(out)
    }
}

/// A configuration for unit tests: a path-style store that is never reached.
#[cfg(test)]
fn test_config() -> S3Config {
    S3Config {
        bucket: "backups".into(),
        prefix: "prod/".into(),
        endpoint: Some("http://garage:3900".into()),
        region: "garage".into(),
        path_style: true,
        credentials: None,
        part_size: 16 << 20,
        concurrency: 4,
        timeout: std::time::Duration::from_secs(120),
        attempts: 6,
        object_lock: None,
        lease_ttl: std::time::Duration::from_secs(300),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: [&str; 8] = [
        "",
        "../etc/passwd",
        "data/../../x",
        "/snapshots/x.json",
        "data//x",
        "./x",
        "locks/a\0.json",
        "locks\\a.json",
    ];

    #[test]
    fn only_keys_kompose_dr_builds_pass() {
        for key in BAD {
            assert!(
                matches!(checked(key), Err(StorageError::BadKey(_))),
                "{key:?}"
            );
        }
        assert_eq!(checked("snapshots/x.json").unwrap(), "snapshots/x.json");
        for prefix in ["", "locks/", "data/20260101T000000Z-abcdef/", "wal/0000"] {
            assert_eq!(checked_prefix(prefix).unwrap(), prefix);
        }
        for prefix in ["/", "../", "data//", "data/./", "data/../"] {
            assert!(checked_prefix(prefix).is_err(), "{prefix:?}");
        }
    }

    #[test]
    fn listed_keys_that_kompose_dr_never_writes_are_skipped() {
        assert_eq!(listed("prod/", "prod/locks/a.json"), Some("locks/a.json"));
        for full in [
            "prod/../x",
            "prod/locks/../../x.json",
            "prod/locks//a.json",
            "prod//locks/a.json",
            "prod/",
            "other/locks/a.json",
        ] {
            assert_eq!(listed("prod/", full), None, "{full:?}");
        }
    }

    /// Refused before any request: the test store does not exist, and a
    /// request would fail (or wait) with another error.
    #[tokio::test]
    async fn every_call_refuses_a_bad_key_before_reaching_the_store() {
        let b = S3Backend::new(&test_config());
        let bad = |r: Result<(), StorageError>| matches!(r, Err(StorageError::BadKey(_)));
        for key in BAD {
            assert!(
                bad(b.put(key, Bytes::new(), PutMode::Overwrite).await),
                "{key:?}"
            );
            assert!(bad(b.get(key).await.map(drop)), "{key:?}");
            assert!(bad(b.open(key).await.map(drop)), "{key:?}");
            assert!(bad(b.create(key).await.map(drop)), "{key:?}");
            assert!(bad(b.delete(key).await), "{key:?}");
        }
        for prefix in ["", "/", "../", "data//"] {
            assert!(bad(b.delete_prefix(prefix).await), "{prefix:?}");
        }
        for prefix in ["/", "../", "data/../"] {
            assert!(bad(b.list(prefix).await.map(drop)), "{prefix:?}");
            assert!(bad(b.list_dirs(prefix).await.map(drop)), "{prefix:?}");
        }
    }
}
