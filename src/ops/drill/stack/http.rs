//! The `[[app]] http` check of a stack drill: one `GET`, sent to the
//! address the URL's host (an alias) has on the drill's network, with the
//! URL's `Host:`; a 2xx answer is healthy. Plain HTTP only, no redirects
//! followed, the body not read.

use std::net::IpAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;

use super::error::HttpError;

/// How long one check may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET url` from `addr`: the status when it is 2xx, else why not.
pub(super) async fn get(addr: IpAddr, url: &url::Url) -> Result<u16, HttpError> {
    match tokio::time::timeout(TIMEOUT, request(addr, url)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(TIMEOUT)),
    }
}

async fn request(addr: IpAddr, url: &url::Url) -> Result<u16, HttpError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((addr, port))
        .await
        .map_err(|source| HttpError::Connect { addr, port, source })?;
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::USER_AGENT,
            concat!("kompose-dr/", env!("CARGO_PKG_VERSION"), " (stack drill)"),
        )
        .body(String::new())
        .map_err(HttpError::Request)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await;
    driver.abort();
    let status = res?.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(HttpError::Status(status))
    }
}
