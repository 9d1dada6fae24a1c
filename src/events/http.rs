//! A minimal HTTP/1.1 client for notifications: one POST, one status,
//! bounded by a timeout, over TCP or TLS (rustls with ring and the
//! system's roots, like MQTT and S3).
//!
//! hyper's connection-level client does the protocol; nothing here pools,
//! follows redirects or reads a response body beyond its status. The URL
//! is never put into an error message: a healthchecks URL is itself a
//! secret, so callers name the target by its kind.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper_util::rt::TokioIo;

/// Why a request did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server could not be reached (DNS, refused, TLS).
    #[error("cannot reach {host}: {message}")]
    Connect {
        /// `host:port`.
        host: String,
        /// What failed.
        message: String,
    },
    /// TLS could not be set up (the system's root certificates).
    #[error("cannot reach {host}: {source}")]
    Tls {
        /// `host:port`.
        host: String,
        /// Why.
        #[source]
        source: super::tls::TlsError,
    },
    /// The request failed midway.
    #[error("request to {host} failed: {message}")]
    Request {
        /// `host:port`.
        host: String,
        /// What failed.
        message: String,
    },
    /// The server answered, but not with success.
    #[error("{host} answered HTTP {status}")]
    Status {
        /// `host:port`.
        host: String,
        /// The status code.
        status: u16,
    },
    /// No answer in time.
    #[error("no answer from {host} within {after}")]
    Timeout {
        /// `host:port`.
        host: String,
        /// The timeout, for people.
        after: String,
    },
}

/// A body of one chunk.
struct Full(Option<Bytes>);

impl Body for Full {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// `POST url` with `headers` and `body`; Ok with the status when it is
/// 2xx, within `timeout` for everything.
pub async fn post(
    url: &url::Url,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<u16, HttpError> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let target = format!("{host}:{port}");
    match tokio::time::timeout(timeout, request(url, &host, port, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            host: target,
            after: humantime::format_duration(timeout).to_string(),
        }),
    }
}

async fn request(
    url: &url::Url,
    host: &str,
    port: u16,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<u16, HttpError> {
    let target = format!("{host}:{port}");
    let connect_err = |message: String| HttpError::Connect {
        host: target.clone(),
        message,
    };
    // An IPv6 literal is `[::1]` in a URL and in Host:, bare to connect.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut req = hyper::Request::post(path)
        .header(hyper::header::HOST, host_header)
        .header(
            hyper::header::USER_AGENT,
            concat!("kompose-dr/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONTENT_LENGTH, body.len());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req.body(Full(Some(body))).map_err(|e| HttpError::Request {
        host: target.clone(),
        message: format!("bad header: {e}"),
    })?;
    let status = if url.scheme() == "https" {
        let config = super::tls::client_config(None).map_err(|source| HttpError::Tls {
            host: target.clone(),
            source,
        })?;
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| connect_err(format!("bad TLS name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        send(TokioIo::new(tls), req, &target).await?
    } else {
        send(TokioIo::new(tcp), req, &target).await?
    };
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(HttpError::Status {
            host: target,
            status,
        })
    }
}

async fn send<T>(io: T, req: hyper::Request<Full>, target: &str) -> Result<u16, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| HttpError::Request {
        host: target.to_owned(),
        message: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(failed)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await.map_err(failed);
    driver.abort();
    Ok(res?.status().as_u16())
}
