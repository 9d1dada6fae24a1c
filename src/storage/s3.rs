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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use super::{Backend, ObjectMeta, ObjectReader, ObjectWriter, PutMode, StorageError};
use crate::config::repository::{MAX_PARTS, format_size};
use crate::config::{ObjectLockMode, S3Config};

/// An S3 bucket and prefix.
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
}

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

impl Inner {
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async { build_client(&self.cfg).await })
            .await
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.cfg.prefix)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.full_key(key))
    }

    fn bucket_location(&self) -> String {
        self.cfg.to_string()
    }

    fn lock_fields(
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
    async fn put_object(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
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
            && !key.starts_with(crate::lock::lease::PREFIX)
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
    async fn get_object(
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

    /// Maps an SDK error to a message that says what to fix.
    fn error<E>(
        &self,
        op: &'static str,
        location: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let detail = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
        let endpoint = self
            .cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.cfg.region));
        let message = explain(
            &self.cfg,
            &endpoint,
            status,
            code.as_deref(),
            err.message(),
            &detail,
            matches!(err, SdkError::TimeoutError(_)),
        );
        if status == Some(404) && code.as_deref() != Some("NoSuchBucket") {
            return StorageError::NotFound(location.to_owned());
        }
        if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
            return StorageError::AlreadyExists(location.to_owned());
        }
        StorageError::Remote {
            op,
            location: location.to_owned(),
            message,
        }
    }
}

/// `Content-MD5` of a body: base64 of its MD5.
fn content_md5(body: &[u8]) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

/// The message for a failed request: what happened and what to do.
fn explain(
    cfg: &S3Config,
    endpoint: &str,
    status: Option<u16>,
    code: Option<&str>,
    server_message: Option<&str>,
    detail: &str,
    timeout: bool,
) -> String {
    let lower = detail.to_ascii_lowercase();
    let server = server_message.unwrap_or_default().to_ascii_lowercase();
    // Some stores (Garage) answer AccessDenied with the reason in the text.
    let code = match code {
        Some("AccessDenied") | Some("Forbidden") if server.contains("signature") => {
            Some("SignatureDoesNotMatch")
        }
        Some("AccessDenied") | Some("Forbidden")
            if server.contains("no such key") || server.contains("access key") =>
        {
            Some("InvalidAccessKeyId")
        }
        c => c,
    };
    let said = server_message
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    match (status, code) {
        (_, Some("InvalidAccessKeyId")) => format!(
            "the store does not know this access key id{said}: check access_key_id_file (or AWS_ACCESS_KEY_ID)"
        ),
        (_, Some("SignatureDoesNotMatch")) => format!(
            "the store rejected the request signature{said}: the secret access key is wrong; check secret_access_key_file (or AWS_SECRET_ACCESS_KEY)"
        ),
        (_, Some("RequestTimeTooSkewed")) => format!(
            "this host's clock differs too much from the store's{said}: synchronise the clock (timedatectl set-ntp true)"
        ),
        (_, Some("NoSuchBucket")) => format!(
            "bucket `{}` does not exist at {endpoint}: create it, or fix the bucket in the repository url",
            cfg.bucket
        ),
        (_, Some("AccessDenied")) | (Some(403), _) => format!(
            "access denied{said}: grant this key read, write and delete on bucket `{}` (Garage: garage bucket allow --read --write --owner {} --key KEY), and check the key and secret",
            cfg.bucket, cfg.bucket
        ),
        (Some(404), None) => format!(
            "not found at {endpoint}: check that bucket `{}` exists and path_style suits the store (self-hosted stores usually need path_style = true)",
            cfg.bucket
        ),
        (_, Some("InvalidRequest")) | (_, Some("NotImplemented")) if cfg.object_lock.is_some() => {
            format!(
                "the store refused the request{said}: if it does not support Object Lock, remove object_lock from this repository; on AWS the bucket must be created with Object Lock enabled"
            )
        }
        (Some(s), _) if s >= 500 => format!(
            "the store answered HTTP {s}{said} after {} attempts: it is failing or overloaded; try again later",
            cfg.attempts
        ),
        (Some(s), c) => format!("the store answered HTTP {s} {}{said}", c.unwrap_or("")),
        (None, _) if timeout => format!(
            "no answer from {endpoint} within {} ({} attempts): the store is unreachable or too slow; check the network or raise `timeout`",
            humantime::format_duration(cfg.timeout),
            cfg.attempts
        ),
        (None, _)
            if lower.contains("dns error")
                || lower.contains("failed to lookup")
                || lower.contains("name or service not known") =>
        {
            format!("cannot resolve the host of {endpoint}: check the endpoint's host name and DNS")
        }
        (None, _)
            if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake") =>
        {
            format!(
                "TLS with {endpoint} failed: check http:// against https:// in the endpoint and that the store's certificate is trusted ({detail})"
            )
        }
        (None, _) if lower.contains("connection refused") => format!(
            "connection to {endpoint} refused: is the store running and the endpoint's port right?"
        ),
        (None, _) => format!("request to {endpoint} failed: {detail}"),
    }
}

async fn build_client(cfg: &S3Config) -> Client {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig, tls};
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.attempts)
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(20));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10).min(cfg.timeout))
        .operation_attempt_timeout(cfg.timeout)
        .build();
    // The SDK's default HTTPS client (connector settings and sleep from the
    // SDK, proxies from the environment), but on rustls with ring, the TLS
    // provider MQTT uses: one for the whole binary, and no aws-lc to build.
    let http_client =
        aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
            let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ));
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        });
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client)
        .region(aws_config::Region::new(cfg.region.clone()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(c) = &cfg.credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            c.access_key_id.expose(),
            c.secret_access_key.expose(),
            None,
            None,
            "kompose-dr configuration",
        ));
    }
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.path_style)
        // Checksums only where S3 requires them: self-hosted stores differ
        // in which flexible checksums they accept; sigv4 signs the payload.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        self.inner.bucket_location()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        // Build the client now, so that the first part is not delayed by it.
        self.inner.client().await;
        Ok(Box::new(S3Writer {
            inner: self.inner.clone(),
            key: key.to_owned(),
            buf: BytesMut::new(),
            size: 0,
            upload: None,
            next_part: 1,
            inflight: JoinSet::new(),
            done: Vec::new(),
            _alive: super::AliveWriter::new(),
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        self.inner.put_object(key, data, mode).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let inner = &self.inner;
        let out = inner.get_object(key, 0, None).await?;
        out.body
            .collect()
            .await
            .map(|b| b.into_bytes())
            .map_err(|e| StorageError::Remote {
                op: "read",
                location: inner.location(key),
                message: format!("the connection broke: {e}"),
            })
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        download::open(self.inner.clone(), key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
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
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&inner.cfg.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
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
                let Some(rel) = k.strip_prefix(&inner.cfg.prefix) else {
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

async fn abort(inner: &Inner, key: &str, id: &str) -> Result<(), StorageError> {
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

/// Removing something already gone is success.
fn gone_is_fine(e: StorageError) -> Result<(), StorageError> {
    match e {
        StorageError::NotFound(_) => Ok(()),
        e => Err(e),
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
struct S3Writer {
    inner: Arc<Inner>,
    key: String,
    buf: BytesMut,
    size: u64,
    upload: Option<String>,
    next_part: i32,
    inflight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    _alive: super::AliveWriter,
}

impl S3Writer {
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
                format_size(self.inner.cfg.max_object_size()),
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
        if self.size > self.inner.cfg.max_object_size() {
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
            super::spawn_cleanup(async move { abort_logged(&inner, &key, &id).await });
        }
    }
}

mod download {
    //! Streaming reads that resume where a broken connection left off.

    use super::*;
    use tokio::sync::mpsc;

    /// Chunks buffered between the network and the reader.
    const CHANNEL: usize = 16;

    pub(super) async fn open(inner: Arc<Inner>, key: &str) -> Result<ObjectReader, StorageError> {
        // The first request is made here, so that a missing object or
        // refused credentials fail `open` itself.
        let first = inner.get_object(key, 0, None).await?;
        let size = first.content_length().unwrap_or(-1).max(-1);
        let etag = first.e_tag().map(str::to_owned);
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL);
        let key = key.to_owned();
        tokio::spawn(async move {
            if let Err(e) = pump(&inner, &key, first.body, size, etag, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    fn tokio_stream_from(
        mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Copies the body into the channel; on a broken or stalled connection
    /// asks again from the first missing byte.
    async fn pump(
        inner: &Inner,
        key: &str,
        mut body: ByteStream,
        size: i64,
        etag: Option<String>,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> std::io::Result<()> {
        let mut offset: i64 = 0;
        let mut failures: u32 = 0;
        let stall = inner.cfg.timeout;
        loop {
            let next = tokio::time::timeout(stall, body.next()).await;
            let problem = match next {
                Ok(Some(Ok(chunk))) => {
                    offset += chunk.len() as i64;
                    failures = 0;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the reader went away
                    }
                    continue;
                }
                Ok(None) if size < 0 || offset >= size => return Ok(()),
                Ok(None) => format!("the connection ended at byte {offset} of {size}"),
                Ok(Some(Err(e))) => format!("the connection broke at byte {offset}: {e}"),
                Err(_) => format!(
                    "no data for {} at byte {offset}",
                    humantime::format_duration(stall)
                ),
            };
            failures += 1;
            if failures >= inner.cfg.attempts {
                return Err(std::io::Error::other(format!(
                    "reading {}: {problem}; gave up after {} attempts",
                    inner.location(key),
                    inner.cfg.attempts
                )));
            }
            let backoff = Duration::from_millis(
                (250u64 << failures.min(6)).min(10_000) / 2
                    + rand::random::<u64>() % ((250u64 << failures.min(6)).min(10_000) / 2 + 1),
            );
            tracing::warn!(
                object = %inner.location(key),
                offset,
                attempt = failures + 1,
                "{problem}; resuming with a ranged request"
            );
            tokio::time::sleep(backoff).await;
            match inner.get_object(key, offset as u64, etag.as_deref()).await {
                Ok(out) => body = out.body,
                Err(e) => {
                    if matches!(e, StorageError::AlreadyExists(_)) {
                        return Err(std::io::Error::other(format!(
                            "{} changed while it was being read",
                            inner.location(key)
                        )));
                    }
                    tracing::warn!(error = %e, "ranged request failed");
                    body = ByteStream::from_static(b"");
                    // An empty body ends at once and counts as one more failure.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> S3Config {
        S3Config {
            bucket: "backups".into(),
            prefix: "prod/".into(),
            endpoint: Some("http://garage:3900".into()),
            region: "garage".into(),
            path_style: true,
            credentials: None,
            part_size: 16 << 20,
            concurrency: 4,
            timeout: Duration::from_secs(120),
            attempts: 6,
            object_lock: None,
        }
    }

    #[tokio::test]
    async fn an_artifact_over_10000_parts_fails_before_it_is_sent() {
        // A 4-byte part size (below S3's minimum, only possible here)
        // caps objects at 40,000 bytes; nothing reaches the network.
        let mut c = cfg();
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.part_size = 4;
        c.credentials = Some(crate::config::S3Credentials {
            access_key_id: crate::secret::Secret::new("id"),
            secret_access_key: crate::secret::Secret::new("secret"),
        });
        let backend = S3Backend::new(&c);
        let mut w = backend.create("data/x/big.zst.age").await.unwrap();
        let e = w.write(Bytes::from(vec![0u8; 40_001])).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("exceeds 10000 parts of 4 B"), "{m}");
        assert!(m.contains("raise part_size"), "{m}");
        w.abort().await;
    }

    #[test]
    fn errors_say_what_to_fix() {
        let c = cfg();
        let e = "http://garage:3900";
        // (status, code, server message, transport detail, timed out) → expected text
        type Case<'a> = (
            Option<u16>,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            bool,
            &'a str,
        );
        let cases: [Case; 11] = [
            (
                Some(403),
                Some("InvalidAccessKeyId"),
                None,
                "",
                false,
                "access_key_id_file",
            ),
            (
                Some(403),
                Some("SignatureDoesNotMatch"),
                None,
                "",
                false,
                "secret access key is wrong",
            ),
            (
                Some(403),
                Some("AccessDenied"),
                Some("Forbidden: Invalid signature"),
                "",
                false,
                "secret access key is wrong",
            ),
            (
                Some(403),
                Some("AccessDenied"),
                Some("No such key: GK00"),
                "",
                false,
                "access_key_id_file",
            ),
            (
                Some(404),
                Some("NoSuchBucket"),
                None,
                "",
                false,
                "bucket `backups` does not exist",
            ),
            (
                Some(403),
                Some("RequestTimeTooSkewed"),
                None,
                "",
                false,
                "clock",
            ),
            (
                Some(403),
                Some("AccessDenied"),
                None,
                "",
                false,
                "grant this key",
            ),
            (
                Some(503),
                Some("SlowDown"),
                None,
                "",
                false,
                "after 6 attempts",
            ),
            (
                None,
                None,
                None,
                "dns error: failed to lookup address",
                false,
                "cannot resolve",
            ),
            (
                None,
                None,
                None,
                "invalid peer certificate: UnknownIssuer",
                false,
                "TLS",
            ),
            (None, None, None, "", true, "raise `timeout`"),
        ];
        for (status, code, said, detail, timeout, want) in cases {
            let m = explain(&c, e, status, code, said, detail, timeout);
            assert!(m.contains(want), "{code:?} {said:?} {detail}: {m}");
        }
    }
}
