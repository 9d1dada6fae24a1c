//! Streaming reads that resume where a broken connection left off: the
//! body is copied into a bounded channel by a task, and when the connection
//! breaks or stalls the task asks again with a ranged GET pinned to the
//! object's ETag, so a changed object is noticed instead of spliced.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::Inner;
use crate::storage::{ObjectReader, StorageError};

/// Chunks buffered between the network and the reader.
const CHANNEL: usize = 16;

/// Opens `key` for a streaming read that resumes on broken connections.
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

/// The receiving end of the channel as a stream of chunks.
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
                    // `InvalidData`: the object was replaced, which is
                    // not a failure to read it (see restore::stream).
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} changed while it was being read: it was replaced",
                            inner.location(key)
                        ),
                    ));
                }
                tracing::warn!(error = %e, "ranged request failed");
                body = ByteStream::from_static(b"");
                // An empty body ends at once and counts as one more failure.
            }
        }
    }
}
