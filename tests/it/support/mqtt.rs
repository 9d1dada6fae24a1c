//! A throw-away Mosquitto broker per test and `mosquitto_sub` subscribers
//! that collect what kompose-dr publishes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{on_free_ports, rand_u64, require, run_ok, wait_started, wait_until};

/// A throw-away Mosquitto broker on a free port.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Mosquitto {
    /// Starts a broker; with `credentials`, anonymous clients are refused.
    pub fn start(credentials: Option<(&str, &str)>) -> Mosquitto {
        on_free_ports("mosquitto", |[port]| Self::launch(port, credentials))
    }

    /// Starts a broker on `port`; `None` if the port is taken.
    fn launch(port: u16, credentials: Option<(&str, &str)>) -> Option<Mosquitto> {
        let bin = require("mosquitto");
        let dir = tempfile::Builder::new()
            .prefix("kdr-mqtt-")
            .tempdir()
            .unwrap();
        let mut conf = format!("listener {port} 127.0.0.1\npersistence false\nuser root\n");
        match credentials {
            None => conf.push_str("allow_anonymous true\n"),
            Some((user, pass)) => {
                require("mosquitto_passwd");
                let pwfile = dir.path().join("passwd");
                run_ok(
                    Command::new("mosquitto_passwd")
                        .args(["-c", "-b"])
                        .arg(&pwfile)
                        .args([user, pass]),
                );
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    pwfile.display()
                ));
            }
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log_path = dir.path().join("mosquitto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        if !wait_started("mosquitto", 10, &mut child, &log_path, &["running"]) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let m = Mosquitto { dir, port, child };
        wait_until("mosquitto", 10, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(m)
    }

    /// Subscribes to `topic` (with `mosquitto_sub`) and returns once the
    /// subscription is live; the subscriber collects `topic payload` lines.
    pub fn subscribe(&self, topic: &str, credentials: Option<(&str, &str)>) -> Subscriber {
        require("mosquitto_sub");
        let out = self.dir.path().join(format!("sub-{}.log", rand_u64()));
        let mut c = Command::new("mosquitto_sub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-q",
            "1",
            "-v",
            "-t",
            topic,
            "-t",
            "probe/#",
        ]);
        if let Some((u, p)) = credentials {
            c.args(["-u", u, "-P", p]);
        }
        let child = c
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sub = Subscriber { child, out };
        wait_until("the MQTT subscription", 10, || {
            let mut p = Command::new("mosquitto_pub");
            p.args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "probe/x",
                "-m",
                "probe",
            ]);
            if let Some((u, pw)) = credentials {
                p.args(["-u", u, "-P", pw]);
            }
            let _ = p.output();
            std::fs::read_to_string(&sub.out)
                .unwrap_or_default()
                .contains("probe/x")
        });
        sub
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mosquitto_sub`.
pub struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    /// The messages received on topics other than the probe: (topic, JSON).
    pub fn messages(&self) -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("probe/"))
            .filter_map(|l| {
                let (topic, payload) = l.split_once(' ')?;
                Some((topic.to_owned(), serde_json::from_str(payload).ok()?))
            })
            .collect()
    }

    /// Waits until `n` messages arrived (at most 10 s).
    pub fn wait_for(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        wait_until("MQTT messages", 10, || self.messages().len() >= n);
        self.messages()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mosquitto_on_a_taken_port_is_tried_again() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(Mosquitto::launch(port, None).is_none());
}
