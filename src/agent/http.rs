//! The agent's HTTP endpoint (`agent.listen`): `/metrics` serves the
//! metrics textfile's series and `/healthz` says the agent is alive.
//!
//! It runs on hyper's HTTP/1 server and anything that can reach the address
//! can talk to it, so everything it holds is bounded:
//!
//! - at most [`Limits::max_connections`] connections are open at once. The
//!   accept loop takes a slot before it accepts, so when all slots are taken
//!   further clients wait in the kernel's listen backlog — they cost the
//!   agent no file descriptor and no task — and are served, in order, as
//!   slots free up. A scrape that arrives while the slots are held by stalled
//!   clients is answered late (at most [`Limits::header_timeout`] later),
//!   not refused;
//! - a client has [`Limits::header_timeout`] to send its request head
//!   (hyper's `header_read_timeout`, counted from the moment the connection
//!   is accepted), and [`Limits::connection_timeout`] for the whole
//!   exchange, so a slowloris is dropped in seconds;
//! - an accept error that is not about one connection (EMFILE, ENFILE,
//!   ENOBUFS…) is logged and followed by a pause that doubles up to one
//!   second, instead of a retry loop that keeps a core busy;
//! - one request per connection (`Connection: close`), as the endpoint has
//!   always answered, so no idle keep-alive connection holds a slot.
//!
//! [`Endpoint::stop`] stops accepting, lets requests in flight finish for
//! at most [`SHUTDOWN_GRACE`] and then drops what is left.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, RwLock, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Endpoint::stop`] lets requests in flight finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The largest request head accepted (hyper answers 431 beyond it): the
/// endpoint takes no body and no large header, and this bounds the memory a
/// connection holds.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The first pause after an accept error; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// The longest pause between accept attempts while accepting fails.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The bounds the endpoint keeps; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Connections open at once; further clients wait to be accepted.
    pub max_connections: usize,
    /// Time from accept to a complete request head.
    pub header_timeout: Duration,
    /// Time from accept to the connection's end, whatever it is doing.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the metrics textfile is; `None` without `[metrics]`. SIGHUP may
/// change it, so each `/metrics` request reads it anew.
pub(crate) type Textfile = Arc<RwLock<Option<PathBuf>>>;

/// A running endpoint. Dropping it leaves it running until the runtime
/// ends; [`Endpoint::stop`] stops it.
pub(crate) struct Endpoint {
    stop: CancellationToken,
    accept: JoinHandle<()>,
    connections: TaskTracker,
    open: Arc<OpenConnections>,
}

impl Endpoint {
    /// Serves `listener` in background tasks.
    pub(crate) fn start(listener: TcpListener, textfile: Textfile, limits: Limits) -> Endpoint {
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let open = Arc::new(OpenConnections::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            textfile,
            limits,
            stop.clone(),
            connections.clone(),
            open.clone(),
        ));
        Endpoint {
            stop,
            accept,
            connections,
            open,
        }
    }

    /// Stops accepting (the listening socket is closed), asks open
    /// connections to finish the request they serve, and waits for them at
    /// most [`SHUTDOWN_GRACE`].
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.accept.await {
            tracing::warn!(error = %e, "the HTTP endpoint's accept loop ended abnormally");
        }
        self.connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.connections.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                open = self.open.now.load(Ordering::Relaxed),
                "HTTP connections still open at shutdown are dropped"
            );
        }
    }
}

/// Counts the connections being served, independently of the semaphore
/// that caps them, so the cap can be observed.
#[derive(Default)]
struct OpenConnections {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// One open connection in [`OpenConnections`]; leaving it closes the count.
struct Open(Arc<OpenConnections>);

impl Open {
    fn enter(count: &Arc<OpenConnections>) -> Open {
        let now = count.now.fetch_add(1, Ordering::SeqCst) + 1;
        count.peak.fetch_max(now, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pause after accept errors: doubles from [`MIN_BACKOFF`] to
/// [`MAX_BACKOFF`], back to the start after a successful accept.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn pause(&mut self) -> Duration {
        let pause = self.next.unwrap_or(MIN_BACKOFF);
        self.next = Some((pause * 2).min(MAX_BACKOFF));
        pause
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

/// Whether an accept error concerns only the connection being accepted
/// (the next accept may well succeed) rather than the process or the
/// listening socket (EMFILE and the like, where retrying at once spins).
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

async fn accept_loop(
    listener: TcpListener,
    textfile: Textfile,
    limits: Limits,
    stop: CancellationToken,
    connections: TaskTracker,
    open: Arc<OpenConnections>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Backoff::default();
    loop {
        // A slot first: without one, clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff.reset();
                connections.spawn(serve_connection(
                    stream,
                    permit,
                    Open::enter(&open),
                    textfile.clone(),
                    limits.clone(),
                    stop.clone(),
                ));
            }
            Err(e) if concerns_one_connection(&e) => {
                tracing::debug!(error = %e, "a connection to the HTTP endpoint failed while being accepted");
            }
            Err(e) => {
                let pause = backoff.pause();
                tracing::warn!(
                    error = %e,
                    pause_ms = pause.as_millis() as u64,
                    "the HTTP endpoint cannot accept connections; pausing"
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _open: Open,
    textfile: Textfile,
    limits: Limits,
    stop: CancellationToken,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let textfile = textfile.clone();
        async move { Ok::<_, Infallible>(respond(req.uri().path(), &textfile).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "an HTTP connection ended with an error");
            }
            return;
        }
        _ = tokio::time::sleep(limits.connection_timeout) => {
            tracing::debug!("an HTTP connection outlived its timeout and is dropped");
            return;
        }
        _ = stop.cancelled() => {}
    }
    // Shutting down: the request in flight, if any, may finish.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

/// The answer to a request for `path`, whatever its method.
async fn respond(path: &str, textfile: &Textfile) -> Response<String> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/metrics" => {
            let path = textfile.read().await.clone();
            let body = path
                .map(|p| crate::events::metrics::Metrics::load(&p).render())
                .unwrap_or_default();
            (StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quick() -> Limits {
        Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            // Far longer, so the tests see the header timeout at work.
            connection_timeout: Duration::from_secs(10),
        }
    }

    async fn start(textfile: Option<PathBuf>, limits: Limits) -> (Endpoint, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Endpoint::start(listener, Arc::new(RwLock::new(textfile)), limits);
        (endpoint, addr)
    }

    /// Sends `request` and reads the answer to the end (the server closes).
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await
    }

    /// Waits until the server closes `s` (EOF or reset), ignoring anything
    /// it sends first.
    async fn closed(mut s: TcpStream) {
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn head_and_body(response: &str) -> (&str, &str) {
        response.split_once("\r\n\r\n").unwrap()
    }

    #[tokio::test]
    async fn metrics_and_healthz_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let textfile = dir.path().join("m.prom");
        let mut metrics = crate::events::metrics::Metrics::default();
        metrics.set(
            "kompose_dr_backup_last_status",
            &[("source", "files/f")],
            1.0,
        );
        metrics.write(&textfile).unwrap();
        let expected = metrics.render();
        let (endpoint, addr) = start(Some(textfile), Limits::default()).await;

        let health = get(addr, "/healthz").await;
        let (head, body) = head_and_body(&health);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(
            head.contains("\r\nContent-Type: text/plain\r\n"),
            "{health}"
        );
        assert!(head.contains("\r\nContent-Length: 3\r\n"), "{health}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{health}");
        assert_eq!(body, "ok\n");

        let m = get(addr, "/metrics").await;
        let (head, body) = head_and_body(&m);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{m}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{m}"
        );
        assert_eq!(body, expected);
        assert!(
            body.contains("kompose_dr_backup_last_status{source=\"files/f\"} 1"),
            "{m}"
        );

        let missing = get(addr, "/nope").await;
        let (head, body) = head_and_body(&missing);
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        assert!(
            head.contains("\r\nContent-Type: text/plain\r\n"),
            "{missing}"
        );
        assert_eq!(body, "not found\n");

        // Any method, as before; HTTP/1.0 clients are answered too.
        let post = exchange(addr, "POST /healthz HTTP/1.0\r\n\r\n").await;
        assert!(post.ends_with("\r\n\r\nok\n"), "{post}");

        endpoint.stop().await;
    }

    #[tokio::test]
    async fn metrics_without_a_textfile_are_empty() {
        let (endpoint, addr) = start(None, Limits::default()).await;
        let m = get(addr, "/metrics").await;
        let (head, body) = head_and_body(&m);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(head.contains("\r\nContent-Length: 0\r\n"), "{m}");
        assert_eq!(body, "");
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_stalls_in_its_header_is_dropped() {
        let limits = quick();
        let (endpoint, addr) = start(None, limits.clone()).await;

        // Half a header, then nothing.
        let start_stalled = Instant::now();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHo")
            .await
            .unwrap();
        // Half a header, then one byte every 50 ms: each byte arrives well
        // within any per-read timeout, the head never completes.
        let mut trickling = TcpStream::connect(addr).await.unwrap();
        trickling
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let trickle = tokio::spawn(async move {
            let start = Instant::now();
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    r = trickling.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return start.elapsed(),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if trickling.write_all(b"X").await.is_err() {
                            return start.elapsed();
                        }
                    }
                }
            }
        });
        // Connected, nothing sent.
        let silent = TcpStream::connect(addr).await.unwrap();

        let bound = limits.header_timeout + Duration::from_millis(1500);
        tokio::time::timeout(bound, closed(stalled))
            .await
            .expect("the stalled client is disconnected");
        let took = start_stalled.elapsed();
        assert!(took >= limits.header_timeout, "dropped too early: {took:?}");
        let trickled = tokio::time::timeout(bound, trickle)
            .await
            .expect("the trickling client is disconnected")
            .unwrap();
        assert!(trickled < bound, "{trickled:?}");
        tokio::time::timeout(bound, closed(silent))
            .await
            .expect("the silent client is disconnected");

        // The endpoint still serves.
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_and_are_served_when_slots_free() {
        let limits = quick();
        let (endpoint, addr) = start(None, limits.clone()).await;
        let cap = limits.max_connections;

        // Twice the cap of stalled clients.
        let mut stalled = Vec::new();
        for _ in 0..2 * cap {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            stalled.push(s);
        }
        // Give the accept loop time to take all it may take.
        tokio::time::sleep(limits.header_timeout / 3).await;
        assert_eq!(endpoint.open.now.load(Ordering::SeqCst), cap);

        // A normal request queues behind them and is answered once the
        // stalled clients have been dropped, batch after batch.
        let start = Instant::now();
        let answer = tokio::time::timeout(
            2 * limits.header_timeout + Duration::from_secs(3),
            get(addr, "/healthz"),
        )
        .await
        .expect("the request is answered after the stalled clients are dropped");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        assert!(
            start.elapsed() >= limits.header_timeout / 2,
            "answered before any slot was freed: {:?}",
            start.elapsed()
        );
        for s in stalled {
            tokio::time::timeout(limits.header_timeout + Duration::from_secs(2), closed(s))
                .await
                .expect("every stalled client is disconnected");
        }
        assert_eq!(
            endpoint.open.peak.load(Ordering::SeqCst),
            cap,
            "never more than the cap open at once"
        );
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn stop_closes_the_listener_and_open_connections() {
        let (endpoint, addr) = start(None, Limits::default()).await;
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        // Let it be accepted.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let start = Instant::now();
        endpoint.stop().await;
        assert!(
            start.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(1), closed(stalled))
            .await
            .expect("open connections are closed at stop");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listening socket is closed"
        );
    }

    #[test]
    fn accept_errors_back_off_to_a_second() {
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..9).map(|_| b.pause()).collect();
        assert_eq!(pauses[0], MIN_BACKOFF);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        b.reset();
        assert_eq!(b.pause(), MIN_BACKOFF);

        let emfile = io::Error::from_raw_os_error(24);
        assert!(!concerns_one_connection(&emfile), "EMFILE backs off");
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(concerns_one_connection(&aborted));
    }
}
