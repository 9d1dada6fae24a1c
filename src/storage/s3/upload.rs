//! The streaming multipart writer: parts of `part_size` are sent while the
//! next one fills, at most `concurrency` parts of the whole repository in
//! flight (one semaphore shared by every writer), and the upload is aborted
//! on failure, on `abort`, and when the writer is dropped unfinished.
//! Listing and aborting open multipart uploads (abandoned writes) lives
//! here too.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::errors::gone_is_fine;
use super::object::content_md5;
use super::{Inner, S3Backend};
use crate::model::s3_limits::{MAX_PARTS, max_object_size};
use crate::model::units::bytes as format_size;
use crate::storage::{AliveWriter, ObjectWriter, PutMode, StorageError};

impl S3Backend {
    /// Open multipart uploads under `prefix`: key (relative), upload id,
    /// when it was started.
    pub async fn uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, Option<DateTime<Utc>>)>, StorageError> {
        let inner = &self.inner;
        let full = inner.full_key(prefix);
        let client = inner.client().await;
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = client
                .list_multipart_uploads()
                .bucket(&inner.cfg.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| inner.error("list uploads", &inner.location(prefix), e))?;
            for u in page.uploads() {
                let (Some(k), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(rel) = super::listed(&inner.cfg.prefix, k) else {
                    continue;
                };
                let initiated = u
                    .initiated()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0));
                out.push((rel.to_owned(), id.to_owned(), initiated));
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

/// Aborts the multipart upload `id` of `key`; one already gone is fine.
pub(super) async fn abort(inner: &Inner, key: &str, id: &str) -> Result<(), StorageError> {
    match inner
        .client()
        .await
        .abort_multipart_upload()
        .bucket(&inner.cfg.bucket)
        .key(inner.full_key(key))
        .upload_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => gone_is_fine(inner.error("abort upload", &inner.location(key), e)),
    }
}

/// [`abort`], logging the outcome: a writer being torn down has nobody to
/// return an error to, and prune removes what is left.
async fn abort_logged(inner: &Inner, key: &str, id: &str) {
    match abort(inner, key, id).await {
        Ok(()) => tracing::debug!(key = %key, "multipart upload aborted"),
        Err(e) => {
            tracing::warn!(error = %e, "could not abort the multipart upload; prune removes it later")
        }
    }
}

/// A streaming multipart upload.
pub(super) struct S3Writer {
    inner: Arc<Inner>,
    key: String,
    buf: BytesMut,
    size: u64,
    upload: Option<String>,
    next_part: i32,
    inflight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    _alive: AliveWriter,
}

impl S3Writer {
    /// A writer of `key`; nothing is sent before the first full part.
    pub(super) fn new(inner: Arc<Inner>, key: &str) -> S3Writer {
        S3Writer {
            inner,
            key: key.to_owned(),
            buf: BytesMut::new(),
            size: 0,
            upload: None,
            next_part: 1,
            inflight: JoinSet::new(),
            done: Vec::new(),
            _alive: AliveWriter::new(),
        }
    }

    fn part_size(&self) -> usize {
        self.inner.cfg.part_size as usize
    }

    /// Collects finished parts, failing on the first failed one.
    fn reap(&mut self) -> Result<(), StorageError> {
        while let Some(r) = self.inflight.try_join_next() {
            self.done.push(joined(r)?);
        }
        Ok(())
    }

    /// Sends one full part, waiting for a slot if `concurrency` are in flight.
    async fn send_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        if self.upload.is_none() {
            let mut req = inner
                .client()
                .await
                .create_multipart_upload()
                .bucket(&inner.cfg.bucket)
                .key(inner.full_key(&self.key));
            if let Some((mode, until)) = inner.lock_fields() {
                req = req
                    .object_lock_mode(mode)
                    .object_lock_retain_until_date(until);
            }
            let out = req
                .send()
                .await
                .map_err(|e| inner.error("start upload", &inner.location(&self.key), e))?;
            let id = out.upload_id().ok_or_else(|| StorageError::Remote {
                op: "start upload",
                location: inner.location(&self.key),
                message: "the store returned no upload id".into(),
            })?;
            self.upload = Some(id.to_owned());
        }
        let number = self.next_part;
        if number as u64 > MAX_PARTS {
            return Err(self.too_large());
        }
        self.next_part += 1;
        self.reap()?;
        let permit = inner
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.reap()?;
        let id = self.upload.clone().expect("started above");
        let key = self.key.clone();
        self.inflight.spawn(async move {
            let _permit = permit;
            let mut req = inner
                .client()
                .await
                .upload_part()
                .bucket(&inner.cfg.bucket)
                .key(inner.full_key(&key))
                .upload_id(&id)
                .part_number(number)
                .body(ByteStream::from(part.clone()));
            if inner.cfg.object_lock.is_some() {
                // S3 wants an integrity header on Object Lock uploads.
                req = req.content_md5(content_md5(&part));
            }
            let out = req.send().await.map_err(|e| {
                inner.error(
                    "upload part",
                    &format!("{} part {number}", inner.location(&key)),
                    e,
                )
            })?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_owned))
                .part_number(number)
                .build())
        });
        tracing::trace!(key = %self.key, part = number, "part sent");
        Ok(())
    }

    fn too_large(&self) -> StorageError {
        StorageError::TooLarge {
            location: self.inner.location(&self.key),
            message: format!(
                "the artifact exceeds {} parts of {} ({}), S3's limit for one object: raise part_size for this repository (64MiB allows {})",
                MAX_PARTS,
                format_size(self.inner.cfg.part_size),
                format_size(max_object_size(self.inner.cfg.part_size)),
                format_size(64 * 1024 * 1024 * MAX_PARTS)
            ),
        }
    }

    async fn complete(&mut self) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        if self.upload.is_none() {
            // Smaller than one part: a single PUT.
            let body = std::mem::take(&mut self.buf).freeze();
            return inner.put_object(&self.key, body, PutMode::Overwrite).await;
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.send_part(last).await?;
        }
        while let Some(r) = self.inflight.join_next().await {
            self.done.push(joined(r)?);
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let id = self.upload.clone().expect("multipart");
        inner
            .client()
            .await
            .complete_multipart_upload()
            .bucket(&inner.cfg.bucket)
            .key(inner.full_key(&self.key))
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| inner.error("complete upload", &inner.location(&self.key), e))?;
        self.upload = None;
        Ok(())
    }

    /// Stops the parts in flight and aborts the upload.
    async fn abort_now(&mut self) {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        if let Some(id) = self.upload.take() {
            abort_logged(&self.inner, &self.key, &id).await;
        }
    }
}

fn joined(
    r: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
) -> Result<CompletedPart, StorageError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(StorageError::Remote {
            op: "upload part",
            location: String::new(),
            message: format!("the upload task ended: {e}"),
        }),
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        if self.size > max_object_size(self.inner.cfg.part_size) {
            return Err(self.too_large());
        }
        let part = self.part_size();
        while !chunk.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = BytesMut::with_capacity(part);
            }
            let take = (part - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(take));
            if self.buf.len() == part {
                let full = std::mem::take(&mut self.buf).freeze();
                if let Err(e) = self.send_part(full).await {
                    self.abort_now().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        match self.complete().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort_now().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_now().await;
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped unfinished (Ctrl-C, SIGTERM, a failed source): abort the
        // upload in the background; the process waits for it before exit.
        self.inflight.abort_all();
        if let Some(id) = self.upload.take() {
            let inner = self.inner.clone();
            let key = self.key.clone();
            crate::storage::spawn_cleanup(async move { abort_logged(&inner, &key, &id).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Backend;
    use crate::storage::s3::test_config as cfg;

    #[tokio::test]
    async fn an_artifact_over_10000_parts_fails_before_it_is_sent() {
        // A 4-byte part size (below S3's minimum, only possible here)
        // caps objects at 40,000 bytes; nothing reaches the network.
        let mut c = cfg();
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.part_size = 4;
        c.credentials = Some(crate::model::config::S3Credentials {
            access_key_id: crate::model::secret::Secret::new("id"),
            secret_access_key: crate::model::secret::Secret::new("secret"),
        });
        let backend = S3Backend::new(&c);
        let mut w = backend.create("data/x/big.zst.age").await.unwrap();
        let e = w.write(Bytes::from(vec![0u8; 40_001])).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("exceeds 10000 parts of 4 B"), "{m}");
        assert!(m.contains("raise part_size"), "{m}");
        w.abort().await;
    }
}
