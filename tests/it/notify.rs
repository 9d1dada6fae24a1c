//! Notifications beyond MQTT: Gotify, ntfy, a webhook and the
//! healthchecks dead-man's switch.
//!
//! Neither a Gotify nor an ntfy server (nor healthchecks) is installable
//! from this machine's package registries, so the receiver is a real HTTP
//! listener started by the test (127.0.0.1, a free port) that records every
//! request and answers 200. It checks the exact request shape of each
//! protocol: method, path, headers, and body — Gotify's JSON
//! `{title, message, priority}` with `X-Gotify-Key`; ntfy's `Title`,
//! `Priority` and `Tags` headers with the text as body; the webhook's event
//! JSON; healthchecks' `/start`, `` and `/fail` pings.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::support::{Workspace, closed_port, wait_until};

const TOKEN: &str = "gotify-token-A1b2C3d4";
const NTFY_TOKEN: &str = "tk_ntfysecret998877";
const UUID: &str = "5f1e8a2c-9d3b-4c7e-8f60-1a2b3c4d5e6f";
const DRILL_UUID: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: BTreeMap<String, String>,
    body: String,
}

/// A real HTTP/1.1 listener recording what it receives.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                sink.lock().unwrap().push(Request {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                );
            }
        });
        Receiver { port, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }

    /// The requests whose path starts with `prefix`.
    fn to(&self, prefix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

/// `[[notify]]` for Gotify, ntfy and a webhook, and `[healthchecks]`, all
/// at `base` (the receiver, or a closed port); `on` for every target.
fn notify_sections(base: &str, on: &str) -> String {
    format!(
        "[[notify]]\nkind = \"gotify\"\nurl = \"{base}/gotify/\"\ntoken = \"{TOKEN}\"\non = {on}\npriority = 8\ntimeout = \"3s\"\n\n\
         [[notify]]\nkind = \"ntfy\"\nurl = \"{base}/ntfy/kompose\"\ntoken = \"{NTFY_TOKEN}\"\non = {on}\npriority = 5\ntimeout = \"3s\"\n\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"{base}/hook\"\non = {on}\ntimeout = \"3s\"\n\n\
         [healthchecks]\nurl = \"{base}/ping/{UUID}\"\ndrill_url = \"{base}/ping/{DRILL_UUID}\"\ntimeout = \"3s\"\n\n"
    )
}

/// A workspace backing up one good file, and one missing file if `broken`.
fn files_workspace(broken: bool) -> (Workspace, String) {
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, "{}").unwrap();
    let mut files = format!(
        "[[files]]\nname = \"acme\"\npath = \"{}\"\n\n",
        acme.display()
    );
    if broken {
        files.push_str(&format!(
            "[[files]]\nname = \"gone\"\npath = \"{}\"\n\n",
            ws.dir.path().join("gone.json").display()
        ));
    }
    let metrics = format!(
        "[metrics]\ntextfile = \"{}\"\n\n",
        ws.dir.path().join("kompose_dr.prom").display()
    );
    (ws, format!("{files}{metrics}"))
}

#[test]
fn a_failing_backup_tells_gotify_ntfy_the_webhook_and_healthchecks() {
    let rx = Receiver::start();
    let (ws, sources) = files_workspace(true);
    ws.configure(&format!(
        "{sources}{}",
        notify_sections(&rx.url(""), "[\"failure\"]")
    ));
    ws.init();
    let out = ws.run(&["-v", "backup"]);
    out.assert_exit(3);
    wait_until("the notifications", 10, || rx.requests().len() >= 5);

    let gotify = rx.to("/gotify/");
    assert_eq!(gotify.len(), 1, "{:?}", rx.requests());
    let g = &gotify[0];
    assert_eq!(g.method, "POST");
    assert_eq!(g.path, "/gotify/message");
    assert_eq!(g.headers["x-gotify-key"], TOKEN);
    assert!(g.headers["content-type"].starts_with("application/json"));
    let body: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert!(
        body["title"].as_str().unwrap().contains("backup failed"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("files/gone failed"),
        "{body}"
    );
    assert_eq!(body["priority"], 8);

    let ntfy = rx.to("/ntfy/");
    assert_eq!(ntfy.len(), 1);
    let n = &ntfy[0];
    assert_eq!(
        (n.method.as_str(), n.path.as_str()),
        ("POST", "/ntfy/kompose")
    );
    assert!(n.headers["title"].contains("backup failed"), "{n:?}");
    assert_eq!(n.headers["priority"], "5");
    assert!(n.headers["tags"].contains("rotating_light"), "{n:?}");
    assert_eq!(n.headers["authorization"], format!("Bearer {NTFY_TOKEN}"));
    assert!(n.body.contains("files/gone failed"), "{n:?}");

    let hook = rx.to("/hook");
    assert_eq!(hook.len(), 1);
    let ev: serde_json::Value = serde_json::from_str(&hook[0].body).unwrap();
    assert_eq!(hook[0].method, "POST");
    assert_eq!(ev["event_type"], "backup.failed");
    assert_eq!(ev["service"], "kompose-dr");
    assert!(
        ev["data"]["failed"].to_string().contains("files/gone"),
        "{ev}"
    );
    assert!(!hook[0].headers.contains_key("authorization"));

    let pings: Vec<String> = rx.to("/ping/").into_iter().map(|r| r.path).collect();
    assert_eq!(
        pings,
        vec![format!("/ping/{UUID}/start"), format!("/ping/{UUID}/fail")]
    );
    // No token, and not the healthchecks uuid, in the logs.
    for secret in [TOKEN, NTFY_TOKEN, UUID] {
        assert!(!out.all().contains(secret), "{secret} in:\n{}", out.all());
    }
}

#[test]
fn a_good_backup_sends_nothing_to_failure_only_targets_and_pings_success() {
    let rx = Receiver::start();
    let (ws, sources) = files_workspace(false);
    ws.configure(&format!(
        "{sources}{}",
        notify_sections(&rx.url(""), "[\"failure\"]")
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    wait_until("the pings", 10, || rx.to("/ping/").len() >= 2);
    let pings: Vec<String> = rx.to("/ping/").into_iter().map(|r| r.path).collect();
    assert_eq!(
        pings,
        vec![format!("/ping/{UUID}/start"), format!("/ping/{UUID}")]
    );
    assert_eq!(rx.requests().len(), 2, "{:?}", rx.requests());

    // With on = ["failure", "success"], a success is told too.
    ws.configure(&format!(
        "{sources}{}",
        notify_sections(&rx.url(""), "[\"failure\", \"success\"]")
    ));
    ws.run(&["backup"]).assert_exit(0);
    wait_until("the notifications", 10, || rx.to("/gotify/").len() == 1);
    let body: serde_json::Value = serde_json::from_str(&rx.to("/gotify/")[0].body).unwrap();
    assert!(
        body["title"].as_str().unwrap().contains("backup completed"),
        "{body}"
    );
    assert_eq!(body["priority"], 8);
}

#[test]
fn a_receiver_that_is_down_never_fails_the_backup_and_is_counted() {
    let port = closed_port();
    let closed = format!("http://127.0.0.1:{}", port.port);
    let (ws, sources) = files_workspace(false);
    ws.configure(&format!(
        "{sources}{}",
        notify_sections(&closed, "[\"failure\", \"success\"]")
    ));
    ws.init();
    let out = ws.run(&["-v", "--json", "backup"]);
    out.assert_exit(0);
    assert!(
        out.stderr().contains("could not send the notification"),
        "{}",
        out.stderr()
    );
    for secret in [TOKEN, NTFY_TOKEN, UUID] {
        assert!(!out.all().contains(secret), "{secret} in:\n{}", out.all());
    }
    let prom = std::fs::read_to_string(ws.dir.path().join("kompose_dr.prom")).unwrap();
    for target in ["gotify", "ntfy", "webhook"] {
        assert!(
            prom.contains(&format!(
                "kompose_dr_notify_failures_total{{target=\"{target}\"}} 1"
            )),
            "{prom}"
        );
    }
    // The start and the success ping.
    assert!(
        prom.contains("kompose_dr_notify_failures_total{target=\"healthchecks\"} 2"),
        "{prom}"
    );
}

#[test]
fn a_drill_pings_its_own_check_and_tells_its_verdict() {
    let rx = Receiver::start();
    let (ws, sources) = files_workspace(false);
    let drills = ws.dir.path().join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    std::fs::write(
        drills.join("files.toml"),
        "name = \"files\"\nsources = [\"files/*\"]\n",
    )
    .unwrap();
    ws.configure(&format!(
        "{sources}{}",
        notify_sections(&rx.url(""), "[\"failure\", \"success\"]")
    ));
    ws.prepend_top_level(&format!(
        "drills_dir = \"{}\"\nreports_dir = \"{}\"",
        drills.display(),
        ws.dir.path().join("reports").display()
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    wait_until("the backup's notices", 10, || rx.to("/gotify/").len() == 1);
    ws.run(&["drill"]).assert_exit(0);
    wait_until("the drill's notices", 10, || rx.to("/gotify/").len() == 2);
    let pings: Vec<String> = rx
        .to(&format!("/ping/{DRILL_UUID}"))
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        pings,
        vec![
            format!("/ping/{DRILL_UUID}/start"),
            format!("/ping/{DRILL_UUID}")
        ]
    );
    let body: serde_json::Value = serde_json::from_str(&rx.to("/gotify/")[1].body).unwrap();
    assert!(
        body["title"]
            .as_str()
            .unwrap()
            .contains("drill files passed"),
        "{body}"
    );
    let hook: serde_json::Value = serde_json::from_str(&rx.to("/hook")[1].body).unwrap();
    assert_eq!(hook["event_type"], "drill.completed");
}

#[test]
fn prune_pings_its_own_check_and_a_dry_run_pings_nothing() {
    let rx = Receiver::start();
    let prune_uuid = "77aa88bb-99cc-4dde-8eff-001122334455";
    let (ws, sources) = files_workspace(false);
    ws.configure(&format!(
        "{sources}[healthchecks]\nurl = \"{}\"\nprune_url = \"{}\"\n",
        rx.url(&format!("/ping/{UUID}")),
        rx.url(&format!("/ping/{prune_uuid}"))
    ));
    ws.init();
    ws.run(&["prune", "--dry-run"]).assert_exit(0);
    ws.run(&["prune"]).assert_exit(0);
    wait_until("the prune pings", 10, || rx.requests().len() >= 2);
    let pings: Vec<String> = rx.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        pings,
        vec![
            format!("/ping/{prune_uuid}/start"),
            format!("/ping/{prune_uuid}")
        ]
    );
}
