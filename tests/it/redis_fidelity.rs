//! Redis restore fidelity: key counts taken from the saved file and
//! compared like with like (TTL'd session keys that expire between a backup
//! and a drill do not fail it; a real difference does).

use std::process::Command;
use std::time::{Duration, Instant};

use kompose_dr::sources::redis::rdb;

use crate::support::{Redis, Workspace, run_ok};

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `INFO keyspace` of `redis` as counts per database.
fn keyspace(redis: &Redis) -> std::collections::BTreeMap<String, rdb::Counts> {
    let text = redis.cli(&["INFO", "keyspace"]);
    let info = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    kompose_dr::sources::redis::parse_keyspace_counts(&info)
}

/// Keys of every type and encoding Redis 7 writes, in three databases, some
/// with a TTL far away.
fn every_type(redis: &Redis) {
    let long = "x".repeat(1000);
    let mut cmds = format!("SET s1 hello\nSET n1 12345\nSET big {long}\nSET t1 v EX 100000\n");
    cmds.push_str("RPUSH l1 a b c\nEXPIRE l1 100000\n");
    let many: Vec<String> = (0..200)
        .map(|i| format!("element-{i}-{}", &long[..100]))
        .collect();
    cmds.push_str(&format!("RPUSH l2 {}\n", many.join(" ")));
    cmds.push_str("SADD st1 1 2 3\nSADD st2 a b c\n");
    let members: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    cmds.push_str(&format!("SADD st3 {}\n", members.join(" ")));
    cmds.push_str("ZADD z1 1 a 2 b\n");
    let scored: Vec<String> = (0..500).map(|i| format!("{i}.5 m{i}")).collect();
    cmds.push_str(&format!("ZADD z2 {}\n", scored.join(" ")));
    cmds.push_str("HSET h1 f v\nPEXPIRE h1 900000000\n");
    let fields: Vec<String> = (0..1000).map(|i| format!("f{i} v{i}")).collect();
    cmds.push_str(&format!("HSET h2 {}\n", fields.join(" ")));
    cmds.push_str("XADD x1 * f v\nXADD x1 * g w\nXGROUP CREATE x1 grp 0\n");
    cmds.push_str("XREADGROUP GROUP grp consumer COUNT 1 STREAMS x1 >\n");
    cmds.push_str("XADD x2 MAXLEN 0 * f v\n");
    cmds.push_str("SELECT 3\nSET other v\nSET other2 v PX 100000000\n");
    cmds.push_str("SELECT 5\nSADD s5 1\nEXPIRE s5 100000\n");
    redis.pipe(&cmds);
    redis.cli(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=kdrlib\nredis.register_function('kdr_f', function() return 1 end)",
    ]);
}

#[test]
fn the_rdb_count_agrees_with_redis_for_every_type_and_encoding() {
    let redis = Redis::start(false, None);
    every_type(&redis);
    redis.cli(&["SAVE"]);
    let file = std::fs::File::open(redis.dir.path().join("dump.rdb")).unwrap();
    let counted = rdb::scan(file).unwrap().counts_at(now_ms());
    assert_eq!(counted, keyspace(&redis));
    assert_eq!(counted["db0"].volatile, 3, "{counted:?}");

    // The same data as an AOF base.
    let redis = Redis::start(true, None);
    every_type(&redis);
    redis.cli(&["BGREWRITEAOF"]);
    crate::support::wait_until("the rewrite", 30, || {
        redis
            .cli(&["INFO", "persistence"])
            .contains("aof_rewrite_in_progress:0")
            && !redis
                .cli(&["INFO", "persistence"])
                .contains("aof_rewrite_scheduled:1")
    });
    let dir = redis.dir.path().join("appendonlydir");
    let base = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".base.rdb"))
        .expect("an RDB base");
    let counted = rdb::scan(std::fs::File::open(base).unwrap())
        .unwrap()
        .counts_at(now_ms());
    assert_eq!(counted, keyspace(&redis));
}

/// Rewrites a snapshot's facts with `edit`, re-encrypted with the stock
/// tools and the manifest signed again, as the backup host could.
fn forge_facts(ws: &Workspace, edit: impl FnOnce(&mut serde_json::Value)) {
    use sha2::Digest;
    let m = &ws.manifests()[0];
    let facts_path = ws.repo.join(m["facts"]["path"].as_str().unwrap());
    let mut facts: serde_json::Value =
        serde_json::from_slice(&ws.stock_decrypt(&facts_path)).unwrap();
    edit(&mut facts);
    let plain = ws.dir.path().join("facts.json");
    std::fs::write(&plain, facts.to_string()).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("zstd -q -c \"$1\" | age -r \"$2\" > \"$3\"")
            .arg("sh")
            .arg(&plain)
            .arg(&ws.recipient)
            .arg(&facts_path),
    );
    let bytes = std::fs::read(&facts_path).unwrap();
    let manifest_path = ws
        .repo
        .join(format!("snapshots/{}.json", m["id"].as_str().unwrap()));
    let mut mj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    mj["facts"]["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    mj["facts"]["stored_bytes"] = bytes.len().into();
    std::fs::write(&manifest_path, serde_json::to_vec(&mj).unwrap()).unwrap();
    ws.sign(&manifest_path);
}

/// 300 keys and 1000 session keys with a 5 s TTL; a backup before they
/// expire, a verify and a drill after: both pass, and the facts say what
/// the file held. Facts that differ from the file by one key fail.
fn sessions_expire_between_backup_and_drill(aof: bool) {
    let redis = Redis::start(aof, Some("redis-secret-pw"));
    redis.fill(300);
    let set_at = Instant::now();
    let sessions: String = (0..1000)
        .map(|i| format!("SET session:{i} token-{i} PX 5000\n"))
        .collect();
    redis.pipe(&sessions);
    let ws = Workspace::new();
    ws.configure(&Workspace::redis_section(&redis));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    assert!(
        set_at.elapsed() < Duration::from_secs(5),
        "the backup took so long that the sessions expired first"
    );
    // Past the sessions' expiry.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(set_at.elapsed()));
    let out = ws.run(&["--json", "verify"]);
    out.assert_exit(0);
    let stdout = out.stdout();
    assert!(
        stdout.contains("1300 keys in 1 database(s), as recorded; 1000 with a TTL"),
        "{stdout}"
    );
    if !aof {
        assert!(stdout.contains("of which Redis still held 0"), "{stdout}");
    }
    let drill = ws.dir.path().join("drill.toml");
    std::fs::write(
        &drill,
        "name = \"sessions\"\n\n[[check]]\nsource = \"redis\"\nmin_keys = 300\n",
    )
    .unwrap();
    ws.prepend_top_level(&format!(
        "reports_dir = \"{}\"",
        ws.dir.path().join("reports").display()
    ));
    ws.run(&["drill", "--drill", drill.to_str().unwrap()])
        .assert_exit(0);

    // The facts say what the file held at the backup.
    let m = &ws.manifests()[0];
    let facts: serde_json::Value = serde_json::from_slice(
        &ws.stock_decrypt(&ws.repo.join(m["facts"]["path"].as_str().unwrap())),
    )
    .unwrap();
    let redis_facts = &facts["sources"]["redis"];
    assert_eq!(redis_facts["keys"]["db0"], 1300, "{redis_facts}");
    assert_eq!(redis_facts["volatile"]["db0"], 1000, "{redis_facts}");
    assert!(redis_facts["counted_at"].is_string(), "{redis_facts}");

    // The facts say one key more than the file holds: a real difference.
    forge_facts(&ws, |f| {
        f["sources"]["redis"]["keys"]["db0"] = 1301.into();
    });
    let out = ws.run(&["verify"]);
    out.assert_exit(1);
    out.assert_stdout_contains(
        "db0: the restored file holds 1300 keys (1000 with a TTL) at the backup's time, the backup recorded 1301 (1000)",
    );
}

#[test]
fn rdb_sessions_that_expire_after_the_backup_do_not_fail_verify_or_a_drill() {
    sessions_expire_between_backup_and_drill(false);
}

#[test]
fn aof_sessions_that_expire_after_the_backup_do_not_fail_verify_or_a_drill() {
    sessions_expire_between_backup_and_drill(true);
}

/// A Redis with data in its own directory, backed up with `data_dir` set,
/// then stopped (SIGKILL: it writes nothing more); and the workspace.
fn backed_up_then_stopped() -> (Workspace, Redis) {
    let mut redis = Redis::start(false, None);
    redis.fill(50);
    let ws = Workspace::new();
    ws.configure(&redis_with_dir(&redis, "127.0.0.1", redis.port));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    redis.kill();
    (ws, redis)
}

/// `[redis]` at `host:port` with `redis`' directory as `data_dir`.
fn redis_with_dir(redis: &Redis, host: &str, port: u16) -> String {
    format!(
        "[redis]\nurl = \"redis://{host}:{port}\"\ndata_dir = \"{}\"\n",
        redis.dir.path().display()
    )
}

/// Every entry under `dir` with its bytes (directories: empty).
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
                out.insert(p, Vec::new());
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_redis_host_that_does_not_resolve_refuses_the_restore() {
    let (ws, redis) = backed_up_then_stopped();
    let before = contents(redis.dir.path());
    ws.configure(&redis_with_dir(&redis, "no-such-host.invalid", redis.port));
    let out = ws.run(&["restore", "--source", "redis", "--replace", "--yes"]);
    out.assert_exit(1);
    let all = out.all();
    assert!(
        all.contains("cannot tell whether Redis at no-such-host.invalid:")
            && all.contains("does not resolve")
            && all.contains("--to ANOTHER_DIR"),
        "{all}"
    );
    assert_eq!(
        contents(redis.dir.path()),
        before,
        "the data directory changed"
    );
}

#[test]
fn a_redis_port_that_never_answers_refuses_the_restore() {
    let (ws, redis) = backed_up_then_stopped();
    let before = contents(redis.dir.path());
    // A listener that accepts nothing, its queue full: further connections
    // neither succeed nor are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        held.push(s);
        assert!(held.len() < 5000, "the listen queue never filled");
    }
    ws.configure(&redis_with_dir(&redis, "127.0.0.1", addr.port()));
    let out = ws.run(&["restore", "--source", "redis", "--replace", "--yes"]);
    out.assert_exit(1);
    let all = out.all();
    assert!(
        all.contains(&format!(
            "cannot tell whether Redis at 127.0.0.1:{}",
            addr.port()
        )) && all.contains("neither answered nor refused"),
        "{all}"
    );
    assert_eq!(
        contents(redis.dir.path()),
        before,
        "the data directory changed"
    );
    drop(held);
}

#[test]
fn a_redis_started_after_the_question_is_caught_before_the_move() {
    crate::support::require("script");
    let (ws, redis) = backed_up_then_stopped();
    let before = contents(redis.dir.path());
    std::fs::create_dir_all(ws.tmp()).unwrap();
    let cmd = format!(
        "{} --config {} restore --source redis --replace",
        env!("CARGO_BIN_EXE_kompose-dr"),
        ws.config.display()
    );
    // On a terminal (script), so that it asks.
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TMPDIR", ws.tmp())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    crate::support::wait_until("the question", 60, || {
        seen.lock().unwrap().contains("Type 'yes'")
    });
    // Someone starts Redis while the question waits.
    let again = Redis::start_on(
        tempfile::Builder::new()
            .prefix("kdr-redis-again-")
            .tempdir()
            .unwrap(),
        redis.port,
        false,
        None,
    );
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"yes\n").unwrap();
        let status = child.wait().unwrap();
        drop(stdin);
        reader.join().unwrap();
        let all = seen.lock().unwrap().clone();
        assert_ne!(status.code(), Some(0), "{all}");
        assert!(
            all.contains(&format!("Redis is running at 127.0.0.1:{}", redis.port)),
            "{all}"
        );
    }
    assert_eq!(
        contents(redis.dir.path()),
        before,
        "the data directory changed"
    );
    drop(again);
}

/// `(pid, ppid, state, comm)` of every process, from `/proc/*/stat`.
fn processes() -> Vec<(i32, i32, char, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state, comm));
    }
    out
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    processes()
        .iter()
        .any(|(p, _, state, _)| *p == pid && *state != 'Z')
}

/// The TCP ports and unix socket paths `pid` listens on.
fn listening(pid: i32) -> (Vec<u16>, Vec<std::path::PathBuf>) {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_string_lossy()
                        .strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tcp = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                tcp.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    let mut unix = Vec::new();
    for line in std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[3] == "00010000" && inodes.iter().any(|i| i == f[6]) {
            unix.push(std::path::PathBuf::from(f[7]));
        }
    }
    (tcp, unix)
}

/// A `verify` of a Redis snapshot, stopped (SIGSTOP) while its scratch
/// Redis runs: the scratch server can be looked at from outside. Dropping
/// it kills both.
struct Frozen {
    _ws: Workspace,
    _redis: Redis,
    kdr: std::process::Child,
    scratch: i32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.kdr.kill();
        let _ = self.kdr.wait();
        if alive(self.scratch) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.scratch),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn frozen_verify() -> Frozen {
    let redis = Redis::start(false, None);
    // Enough keys that loading them takes a moment.
    redis.fill(30_000);
    let ws = Workspace::new();
    ws.configure(&Workspace::redis_section(&redis));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let mut kdr = ws
        .kdr()
        .args(["verify", "--source", "redis"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = kdr.id() as i32;
    let start = Instant::now();
    let scratch = loop {
        let found = processes()
            .into_iter()
            .find(|(_, ppid, _, comm)| *ppid == pid && comm == "redis-server");
        if let Some((p, ..)) = found {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
            break p;
        }
        assert!(
            kdr.try_wait().unwrap().is_none(),
            "verify ended before its scratch Redis was seen"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no scratch Redis appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let frozen = Frozen {
        _ws: ws,
        _redis: redis,
        kdr,
        scratch,
    };
    assert!(alive(scratch), "the scratch Redis ended before it was seen");
    crate::support::wait_until("the scratch Redis to listen", 20, || {
        let (tcp, unix) = listening(scratch);
        !tcp.is_empty() || !unix.is_empty()
    });
    frozen
}

/// The scratch user's uid and gid (`[scratch] user`, default `postgres`).
fn scratch_user() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user (scripts/setup creates it)");
    (u.uid.as_raw(), u.gid.as_raw())
}

#[test]
fn the_scratch_redis_has_no_tcp_port_only_a_socket_in_a_private_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = frozen_verify();
    let (tcp, unix) = listening(f.scratch);
    assert!(
        tcp.is_empty(),
        "the scratch Redis listens on TCP ports {tcp:?}"
    );
    assert_eq!(unix.len(), 1, "{unix:?}");
    let dir = unix[0].parent().unwrap();
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "{}",
        dir.display()
    );
    assert_eq!(
        meta.uid(),
        scratch_user().0,
        "{} belongs to uid {}",
        dir.display(),
        meta.uid()
    );
    let conf = std::fs::metadata(dir.join("redis.conf")).unwrap();
    assert_eq!(conf.permissions().mode() & 0o7777, 0o600);
}

#[test]
fn the_scratch_redis_runs_as_the_scratch_user() {
    let f = frozen_verify();
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.scratch)).unwrap();
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![scratch_user().0; 4], "{status}");
}

#[test]
fn the_scratch_redis_wants_a_password_that_no_command_line_shows() {
    use std::io::{Read, Write};
    let f = frozen_verify();
    let (tcp, unix) = listening(f.scratch);
    let mut answer = [0u8; 64];
    let n = match (unix.first(), tcp.first()) {
        (Some(path), _) => {
            let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            s.read(&mut answer).unwrap()
        }
        (None, Some(port)) => {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            s.read(&mut answer).unwrap()
        }
        (None, None) => panic!("the scratch Redis listens nowhere"),
    };
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("-NOAUTH"),
        "PING without a password got {answer:?}"
    );
    let conf = std::fs::read_to_string(unix[0].parent().unwrap().join("redis.conf")).unwrap();
    let password = conf
        .lines()
        .find_map(|l| l.strip_prefix("requirepass "))
        .unwrap();
    assert!(password.len() >= 32, "a short password: {password:?}");
    for pid in [f.scratch, f.kdr.id() as i32] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(password),
            "the password is on the command line of {pid}"
        );
    }
}

#[test]
fn the_scratch_redis_dies_when_kompose_dr_is_killed() {
    let mut f = frozen_verify();
    let scratch = f.scratch;
    f.kdr.kill().unwrap();
    f.kdr.wait().unwrap();
    let start = Instant::now();
    while alive(scratch) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the scratch Redis still serves the restored data after kill -9 of kompose-dr"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_docker_scratch_redis_wants_a_password_its_container_does_not_show() {
    use kompose_dr::scratch::ScratchRuntime;
    let engine = crate::support::docker::engine();
    let ws = Workspace::new();
    ws.configure(&format!(
        "[docker]\nhost = \"{}\"\n\n[scratch]\nruntime = \"docker\"\nredis_image = \"{}\"\n",
        engine.host, engine.redis_image
    ));
    let config = kompose_dr::model::config::Config::load(&ws.config).unwrap();
    let redis = Redis::start(false, None);
    redis.fill(12);
    redis.cli(&["SAVE"]);
    let data = tempfile::Builder::new()
        .prefix("kdr-scratch-data-")
        .tempdir()
        .unwrap();
    std::fs::copy(
        redis.dir.path().join("dump.rdb"),
        data.path().join("dump.rdb"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runtime = kompose_dr::scratch::docker::DockerRuntime::new(&config);
        let scratch = runtime.redis(data.path(), false).await.unwrap();
        let cfg = scratch.connection();
        let password = cfg
            .password
            .as_ref()
            .expect("a password")
            .expose()
            .to_owned();
        let name = cfg.container.as_ref().unwrap().name.clone();
        assert_eq!(engine.inspect(&name, "{{.HostConfig.NetworkMode}}"), "none");
        let ports = engine.inspect(&name, "{{json .HostConfig.PortBindings}}");
        assert!(ports == "{}" || ports == "null", "published: {ports}");
        let seen = engine.inspect(&name, "{{json .Config}} {{json .Args}} {{json .Path}}");
        assert!(!seen.contains(&password), "the password shows in {seen}");
        let out =
            crate::support::Ran::of(engine.docker().args(["exec", &name, "redis-cli", "PING"]));
        assert!(out.all().contains("NOAUTH"), "{}", out.all());
        let mut con = kompose_dr::clients::redis::connect(&cfg).await.unwrap();
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        assert_eq!(n, 12);
        drop(scratch);
    });
}
