//! A throw-away Garage (S3-compatible) server and a fault-injecting TCP
//! proxy to put between kompose-dr and it.
//!
//! Garage is found at `$GARAGE_BIN`, then in scripts/setup's cache
//! (`~/.cache/kompose-dr/tools/bin/garage`), then on PATH. Each
//! [`Garage`] runs single-node in its own temporary directory on free ports,
//! with one access key; it is killed when dropped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{on_free_ports, wait_started};

/// The Garage binary, or a panic saying how to get it.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let cached = std::env::var_os("KOMPOSE_DR_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/kompose-dr/tools")
        })
        .join("bin/garage");
    if cached.is_file() {
        return cached;
    }
    super::require("garage")
}

/// A running single-node Garage.
pub struct Garage {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub key_id: String,
    pub secret: String,
    config: PathBuf,
}

impl Garage {
    /// Starts Garage, lays out its single node and creates an access key.
    pub fn start() -> Garage {
        let mut g = on_free_ports("garage", |[port, rpc, admin]| {
            Self::launch(port, rpc, admin)
        });
        g.lay_out();
        g
    }

    /// Starts the server on its three ports in a new directory, once both
    /// APIs listen; `None` if a port is taken.
    fn launch(port: u16, rpc: u16, admin: u16) -> Option<Garage> {
        let bin = garage_bin();
        let dir = tempfile::Builder::new()
            .prefix("kdr-garage-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .unwrap();
        let log_path = dir.path().join("garage.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // The APIs say when they listen (at info); the rest only warns.
            .env("RUST_LOG", "warn,garage_api_common=info")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let listening = ["S3 API server listening", "Admin API server listening"];
        let started = wait_started("garage", 60, &mut child, &log_path, &listening);
        let g = Garage {
            child,
            dir,
            port,
            key_id: String::new(),
            secret: String::new(),
            config,
        };
        started.then_some(g)
    }

    /// Lays out the single node and creates the test's access key.
    fn lay_out(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = loop {
            let out = self.cmd().args(["node", "id", "-q"]).output().unwrap();
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}",
                std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let node = node.split('@').next().unwrap().to_owned();
        self.retry(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        self.retry(&["layout", "apply", "--version", "1"]);
        let out = self.retry(&["json-api", "CreateKey", r#"{"name":"kompose-dr-test"}"#]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        self.key_id = v["accessKeyId"].as_str().unwrap().to_owned();
        self.secret = v["secretAccessKey"].as_str().unwrap().to_owned();
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(garage_bin());
        c.arg("-c").arg(&self.config).env("RUST_LOG", "warn");
        c
    }

    /// Runs a garage CLI command, retrying while the fresh layout settles.
    fn retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cmd().args(args).output().unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Creates a bucket the test key may read, write and own.
    pub fn bucket(&self, name: &str) {
        self.retry(&["bucket", "create", name]);
        self.retry(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ]);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes the key id and secret to files in `dir`, mode 0600.
    pub fn credential_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let id = dir.join("s3-key-id");
        let secret = dir.join("s3-secret");
        std::fs::write(&id, format!("{}\n", self.key_id)).unwrap();
        std::fs::write(&secret, format!("{}\n", self.secret)).unwrap();
        for p in [&id, &secret] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (id, secret)
    }

    /// A `[[repository]]` section for `s3://bucket/prefix` at `endpoint`
    /// (this server's, or a proxy's), plus `extra` lines.
    pub fn repository(
        &self,
        dir: &Path,
        name: &str,
        url: &str,
        endpoint: &str,
        extra: &str,
    ) -> String {
        let (id, secret) = self.credential_files(dir);
        format!(
            "[[repository]]\nname = \"{name}\"\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\nregion = \"garage\"\npath_style = true\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n{extra}\n",
            id.display(),
            secret.display()
        )
    }

    /// An SDK client for the test's own checks.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(&self.key_id, &self.secret, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("garage"))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .force_path_style(true)
            // The SDK has no default HTTP client in this build (no aws-lc).
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every object key in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        block_on(async {
            let out = self
                .client()
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect()
        })
    }

    /// The keys of every open multipart upload in `bucket`.
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        block_on(async {
            let out = self
                .client()
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            out.uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_owned))
                .collect()
        })
    }

    /// Starts a multipart upload and leaves it open, as a killed run would.
    pub fn start_upload(&self, bucket: &str, key: &str) {
        block_on(async {
            self.client()
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
        })
    }

    /// Downloads an object to `to`.
    pub fn download(&self, bucket: &str, key: &str, to: &Path) {
        block_on(async {
            let out = self
                .client()
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let bytes = out.body.collect().await.unwrap().into_bytes();
            std::fs::write(to, &bytes).unwrap();
        })
    }

    /// Writes an object.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let body = body.to_vec();
        block_on(async {
            self.client()
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap();
        })
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[0]
}

/// Runs a future on a fresh current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// What the proxy does to the traffic, triggered by bytes forwarded.
#[derive(Default)]
struct Faults {
    /// Cut every open connection once this many bytes went upstream.
    reset_after_up: Option<u64>,
    /// Cut every open connection once this many bytes came downstream.
    reset_after_down: Option<u64>,
    /// Stop forwarding for a while once this many bytes went upstream.
    stall_after_up: Option<(u64, Duration)>,
    /// Answer this status to this many requests that follow a reset.
    respond_after_reset: Option<(u16, u32)>,
    /// Answer this status to every request whose head contains the text.
    respond_matching: Option<(String, u16)>,
    /// Hold every request whose first line contains the text, forwarding
    /// nothing, until the instant; then cut its connection.
    stall_matching: Vec<(String, Instant)>,
}

#[derive(Default)]
struct State {
    up: AtomicU64,
    down: AtomicU64,
    epoch: AtomicU64,
    down_switch: AtomicBool,
    stall_until: Mutex<Option<Instant>>,
    respond_left: Mutex<Option<(u16, u32)>>,
    faults: Mutex<Faults>,
    heads: Mutex<Vec<String>>,
    injected: AtomicU64,
    next_id: AtomicU64,
    frozen_below: AtomicU64,
}

/// A TCP proxy on a free port that forwards to `upstream` and injects
/// faults: dropped connections, 5xx answers and stalls.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
    _rt: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Starts forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(State::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    if st.down_switch.load(Ordering::SeqCst) {
                        return; // dropped: connection closed at once
                    }
                    if let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        serve(st, client, server).await;
                    }
                });
            }
        });
        FaultProxy {
            port,
            state,
            _rt: rt,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cut every connection once `bytes` more went upstream; then answer
    /// `status` to the next `count` requests.
    pub fn reset_after_up(&self, bytes: u64, then: Option<(u16, u32)>) {
        let mut f = self.state.faults.lock().unwrap();
        f.reset_after_up = Some(self.state.up.load(Ordering::SeqCst) + bytes);
        f.respond_after_reset = then;
    }

    /// Cut every connection once `bytes` more came downstream.
    pub fn reset_after_down(&self, bytes: u64) {
        self.state.faults.lock().unwrap().reset_after_down =
            Some(self.state.down.load(Ordering::SeqCst) + bytes);
    }

    /// Once `bytes` more went upstream, every open connection hangs for
    /// `pause` and is then cut.
    pub fn stall_after_up(&self, bytes: u64, pause: Duration) {
        self.state.faults.lock().unwrap().stall_after_up =
            Some((self.state.up.load(Ordering::SeqCst) + bytes, pause));
    }

    /// Answer `status` to every request whose head contains `text`.
    pub fn respond_matching(&self, text: &str, status: u16) {
        self.state.faults.lock().unwrap().respond_matching = Some((text.to_owned(), status));
    }

    /// From now on for `pause`, every request whose first line contains
    /// `text` hangs (nothing is forwarded) until the pause is over, and its
    /// connection is then cut; later requests pass.
    pub fn stall_matching(&self, text: &str, pause: Duration) {
        self.state
            .faults
            .lock()
            .unwrap()
            .stall_matching
            .push((text.to_owned(), Instant::now() + pause));
    }

    /// Refuse (close) every new connection.
    pub fn set_down(&self, down: bool) {
        self.state.down_switch.store(down, Ordering::SeqCst);
    }

    /// How many faults were injected.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// The request heads seen (first 2 KiB of each).
    pub fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }
}

fn status_line(status: u16) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn is_request_head(b: &[u8]) -> bool {
    ["GET ", "PUT ", "POST ", "DELETE ", "HEAD "]
        .iter()
        .any(|m| b.starts_with(m.as_bytes()))
}

async fn serve(st: Arc<State>, client: tokio::net::TcpStream, server: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let epoch = st.epoch.load(Ordering::SeqCst);
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let st_up = st.clone();
    let cw_up = cw.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if is_request_head(chunk) {
                let head = String::from_utf8_lossy(&chunk[..n.min(2048)]).into_owned();
                st_up.heads.lock().unwrap().push(head.clone());
                let first_line = head.lines().next().unwrap_or_default().to_owned();
                let hold = st_up
                    .faults
                    .lock()
                    .unwrap()
                    .stall_matching
                    .iter()
                    .filter(|(t, until)| first_line.contains(t.as_str()) && Instant::now() < *until)
                    .map(|(_, until)| *until)
                    .max();
                if let Some(until) = hold {
                    st_up.injected.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep_until(until.into()).await;
                    return;
                }
                let status = {
                    let f = st_up.faults.lock().unwrap();
                    f.respond_matching
                        .as_ref()
                        .filter(|(t, _)| first_line.contains(t.as_str()))
                        .map(|(_, s)| *s)
                }
                .or_else(|| {
                    let mut left = st_up.respond_left.lock().unwrap();
                    match left.as_mut() {
                        Some((s, n)) if *n > 0 => {
                            *n -= 1;
                            Some(*s)
                        }
                        _ => None,
                    }
                });
                if let Some(s) = status {
                    st_up.injected.fetch_add(1, Ordering::SeqCst);
                    // Read the request body first, as a server would.
                    let lower = head.to_ascii_lowercase();
                    let length: u64 = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let head_len = chunk
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(n, |p| p + 4);
                    let mut left = length.saturating_sub((n - head_len) as u64);
                    while left > 0 {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(m) => left = left.saturating_sub(m as u64),
                        }
                    }
                    let _ = cw_up.lock().await.write_all(&status_line(s)).await;
                    return;
                }
            }
            if !gate(&st_up, epoch, id).await {
                return;
            }
            if sw.write_all(chunk).await.is_err() {
                return;
            }
            let total = st_up.up.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let mut f = st_up.faults.lock().unwrap();
            if f.reset_after_up.is_some_and(|t| total >= t) {
                f.reset_after_up = None;
                *st_up.respond_left.lock().unwrap() = f.respond_after_reset.take();
                st_up.epoch.fetch_add(1, Ordering::SeqCst);
                st_up.injected.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if let Some((t, pause)) = f.stall_after_up
                && total >= t
            {
                f.stall_after_up = None;
                *st_up.stall_until.lock().unwrap() = Some(Instant::now() + pause);
                st_up
                    .frozen_below
                    .store(st_up.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
                st_up.injected.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let st_down = st.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !gate(&st_down, epoch, id).await {
                return;
            }
            if cw.lock().await.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let total = st_down.down.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let mut f = st_down.faults.lock().unwrap();
            if f.reset_after_down.is_some_and(|t| total >= t) {
                f.reset_after_down = None;
                st_down.epoch.fetch_add(1, Ordering::SeqCst);
                st_down.injected.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    // Either direction ending closes both, so a reset really cuts.
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

/// False if the connection was cut. A connection open when a stall began
/// hangs (forwards nothing) for the pause and is then cut, as a dead peer's
/// would be; connections opened later pass.
async fn gate(st: &State, epoch: u64, id: u64) -> bool {
    if st.epoch.load(Ordering::SeqCst) != epoch {
        return false;
    }
    if id >= st.frozen_below.load(Ordering::SeqCst) {
        return true;
    }
    loop {
        let until = *st.stall_until.lock().unwrap();
        match until {
            Some(t) if Instant::now() < t => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return false,
        }
    }
}

impl FaultProxy {
    /// Cuts every connection open now (at its next byte either way), as a
    /// network that drops; connections opened later pass.
    pub fn cut_all(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        self.state.injected.fetch_add(1, Ordering::SeqCst);
    }

    /// Every connection open now hangs for `pause` and is then cut;
    /// connections opened later pass.
    pub fn stall_now(&self, pause: Duration) {
        *self.state.stall_until.lock().unwrap() = Some(Instant::now() + pause);
        self.state
            .frozen_below
            .store(self.state.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
        self.state.injected.fetch_add(1, Ordering::SeqCst);
    }

    /// Back to a clean network: no pending fault, no stall, new
    /// connections accepted. Connections cut or stalled before stay so.
    pub fn clear(&self) {
        *self.state.faults.lock().unwrap() = Faults::default();
        *self.state.respond_left.lock().unwrap() = None;
        *self.state.stall_until.lock().unwrap() = None;
        self.state.down_switch.store(false, Ordering::SeqCst);
    }
}

impl Garage {
    /// The body of an object.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        block_on(async {
            let out = self
                .client()
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }
}

#[test]
fn garage_on_a_taken_port_is_tried_again() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let (rpc, admin) = (super::free_port(), super::free_port());
    assert!(Garage::launch(port, rpc, admin).is_none());
}
