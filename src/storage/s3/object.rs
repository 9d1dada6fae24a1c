//! Requests on one whole object: a PUT (with the repository's Object Lock
//! retention and `If-None-Match` for create-new) and a GET from an offset,
//! optionally pinned to an ETag. The writer and the reader build on these.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::Utc;

use super::Inner;
use crate::model::config::ObjectLockMode;
use crate::storage::{PutMode, StorageError};

impl Inner {
    /// The Object Lock mode and retain-until date for a new object, if the
    /// repository is configured with Object Lock.
    pub(super) fn lock_fields(
        &self,
    ) -> Option<(
        aws_sdk_s3::types::ObjectLockMode,
        aws_sdk_s3::primitives::DateTime,
    )> {
        self.cfg.object_lock.map(|l| {
            let mode = match l.mode {
                ObjectLockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
                ObjectLockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
            };
            let until = Utc::now() + chrono::Duration::days(i64::from(l.days));
            (
                mode,
                aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp()),
            )
        })
    }

    /// One PUT of a whole object, with the repository's Object Lock
    /// retention (lock leases excepted: they come and go).
    pub(super) async fn put_object(
        &self,
        key: &str,
        data: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let mut req = self
            .client()
            .await
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(data.clone()));
        if mode == PutMode::CreateNew {
            req = req.if_none_match("*");
        }
        if let Some((lock, until)) = self.lock_fields()
            && !key.starts_with(crate::storage::keys::LOCKS)
        {
            req = req
                .object_lock_mode(lock)
                .object_lock_retain_until_date(until)
                .content_md5(content_md5(&data));
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("write", &self.location(key), e))
    }

    /// A GET of `key`, from byte `from` on, pinned to `etag` if given.
    pub(super) async fn get_object(
        &self,
        key: &str,
        from: u64,
        etag: Option<&str>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        let mut req = self
            .client()
            .await
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.full_key(key));
        if from > 0 {
            req = req.range(format!("bytes={from}-"));
        }
        if let Some(t) = etag {
            req = req.if_match(t);
        }
        req.send()
            .await
            .map_err(|e| self.error("read", &self.location(key), e))
    }
}

/// `Content-MD5` of a body: base64 of its MD5.
pub(super) fn content_md5(body: &[u8]) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}
