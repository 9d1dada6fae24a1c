//! The Docker test rig itself (scripts/docker-rig, support/docker.rs): the
//! private engine answers, the production imitation runs with no published
//! port, `docker exec` carries pg_dump and a PostgreSQL session, container
//! addresses answer inside the engine's network namespace, and the
//! machine's own network is left as it was.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::{DOCKER_RIG, Stack, engine, require_rig};
use crate::support::{PG_BIN, Ran, run_ok, wait_until};

#[test]
fn the_private_engine_answers_and_is_not_the_machines() {
    let e = engine();
    let version = run_ok(
        e.docker()
            .args(["version", "--format", "{{.Server.Version}}"]),
    );
    assert!(!version.trim().is_empty());
    let root = run_ok(e.docker().args(["info", "--format", "{{.DockerRootDir}}"]));
    assert_eq!(Path::new(root.trim()), e.dir.join("data"));
    assert!(e.host.starts_with("unix://") && e.host.ends_with("/docker.sock"));
    assert!(e.socket.starts_with(&e.dir));
    // Its own network namespace, with its default bridge inside.
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(std::fs::read_link(e.netns_path()).unwrap(), own);
    let links = run_ok(e.in_netns("ip").args(["-o", "link"]));
    assert!(links.contains("docker0"), "{links}");
    for image in [&e.postgres_image, &e.redis_image, &e.mosquitto_image] {
        assert!(image.starts_with("kdr-test/"), "{image}");
        run_ok(e.docker().args(["image", "inspect", image]));
    }
}

#[test]
fn the_production_imitation_runs_with_no_published_port() {
    let e = engine();
    let t0 = Instant::now();
    let s = Stack::start(e);
    eprintln!("stack up in {:?}", t0.elapsed());
    for (c, uid) in [(&s.postgres, 999), (&s.redis, 999), (&s.mqtt, 1883)] {
        assert_eq!(run_ok(e.docker().args(["port", c])).trim(), "", "{c}");
        assert_eq!(
            e.inspect(c, "{{json .HostConfig.PortBindings}}"),
            "{}",
            "{c}"
        );
        assert_eq!(e.inspect(c, "{{.State.Running}}"), "true", "{c}");
        // The service runs as its image's user, as in the official images.
        let pid = e.inspect(c, "{{.State.Pid}}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid_line.split_whitespace().nth(1),
            Some(uid.to_string().as_str()),
            "{c}: {uid_line}"
        );
    }
    let label = format!("kdr-test.stack={}", s.suffix);
    let mut expected = vec![s.mqtt.clone(), s.postgres.clone(), s.redis.clone()];
    expected.sort();
    assert_eq!(e.containers_with_label(&label), expected);
    assert_eq!(s.psql("kompose", "select current_user"), "kompose");
    // The official image's pg_hba.conf: trust for local and 127.0.0.1,
    // scram-sha-256 for every other address.
    let hba = run_ok(
        s.exec(&s.postgres)
            .args(["cat", "/var/lib/postgresql/data/pg_hba.conf"]),
    );
    assert!(
        hba.lines()
            .any(|l| l.trim() == "host all all all scram-sha-256"),
        "{hba}"
    );
    // `docker exec -u postgres` works as well as the default (root) user.
    let who = run_ok(
        e.docker()
            .args(["exec", "-u", "postgres", &s.postgres, "psql", "-X", "-qtA"])
            .args(["-U", "kompose", "-d", "postgres", "-c", "select 7"]),
    );
    assert_eq!(who.trim(), "7");
}

#[test]
fn pg_dump_through_docker_exec_yields_a_dump_pg_restore_lists() {
    let e = engine();
    let s = Stack::start(e);
    s.psql("kompose", "create database app");
    s.psql(
        "app",
        "create table items (id int primary key, name text);
         insert into items select g, 'item ' || g from generate_series(1, 1000) g;",
    );
    let out = s
        .exec(&s.postgres)
        .args(["pg_dump", "-Fc", "-U", "kompose", "-d", "app"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"PGDMP"), "not a custom-format dump");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("app.dump");
    std::fs::write(&dump, &out.stdout).unwrap();
    let list = run_ok(
        Command::new(Path::new(PG_BIN).join("pg_restore"))
            .arg("-l")
            .arg(&dump),
    );
    assert!(list.contains("TABLE public items"), "{list}");
    assert!(list.contains("TABLE DATA public items"), "{list}");
}

#[test]
fn the_nc_bridge_carries_a_postgres_session() {
    let e = engine();
    let s = Stack::start(e);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut child = tokio::process::Command::from(s.exec(&s.postgres))
            .args(["nc", "127.0.0.1", "5432"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let mut config = tokio_postgres::Config::new();
        config
            .user(&s.pg_user)
            .password(&s.pg_password)
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(30),
            config.connect_raw(stream, tokio_postgres::NoTls),
        )
        .await
        .expect("the startup over the bridge hung")
        .expect("a PostgreSQL session over docker exec nc");
        let conn = tokio::spawn(connection);
        let row = client
            .query_one("select 40 + $1::int, current_user::text", &[&2i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        assert_eq!(row.get::<_, String>(1), "kompose");
        drop(client);
        // The client's Terminate makes the server close: nc exits, and so
        // does the exec.
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("nc did not exit when the server closed")
            .unwrap();
        assert!(status.success(), "{status}");
        conn.await.unwrap().unwrap();
    });
}

#[test]
fn a_container_address_answers_inside_the_engines_namespace() {
    let e = engine();
    let s = Stack::start(e);
    let addr = s.mqtt_address();
    assert!(
        !run_ok(Command::new("ip").args(["-o", "addr"])).contains(&format!(" {addr}/")),
        "{addr} is an address of the machine's own namespace"
    );
    // The machine's mosquitto_pub, run in the engine's namespace, publishes
    // a retained message; a subscriber in the container gets it.
    run_ok(
        e.in_netns("mosquitto_pub")
            .args(["-h", &addr, "-p", "1883", "-t", "kdr-test/rig", "-r"])
            .args(["-m", "through the namespace"]),
    );
    let got = run_ok(
        s.exec(&s.mqtt)
            .args(["mosquitto_sub", "-h", "127.0.0.1", "-t", "kdr-test/rig"])
            .args(["-C", "1", "-W", "10"]),
    );
    assert_eq!(got.trim(), "through the namespace");
    // PostgreSQL's address on the stack network takes the official image's
    // password authentication (scram-sha-256).
    let pg = s.address(&s.postgres);
    let out = Ran::of(
        e.in_netns(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-qtA", "-h", &pg, "-U", &s.pg_user, "-d", "postgres"])
            .args(["-c", "select inet_server_addr()"])
            .env("PGPASSWORD", &s.pg_password)
            .env("PGCONNECT_TIMEOUT", "10"),
    );
    out.assert_exit(0);
    assert_eq!(out.stdout().trim(), pg);
}

#[test]
fn redis_keeps_its_data_on_the_volume_across_a_restart() {
    let e = engine();
    let s = Stack::start(e);
    assert_eq!(s.redis_cli(&["SET", "greeting", "hello"]), "OK");
    s.stop_container(&s.redis);
    assert_eq!(e.inspect(&s.redis, "{{.State.Running}}"), "false");
    s.start_container(&s.redis);
    assert_eq!(s.redis_cli(&["GET", "greeting"]), "hello");
    // The append-only files, owned by the container's redis user (999).
    let data = e.volume_path(&s.redis_volume);
    let aof = data.join("appendonlydir");
    let meta = std::fs::metadata(&aof).unwrap();
    assert_eq!(meta.uid(), 999, "{}", aof.display());
    assert!(std::fs::read_dir(&aof).unwrap().count() >= 2);
}

/// The interfaces of the machine's own network namespace, by name and
/// address, ignoring counters and state.
fn own_links() -> Vec<String> {
    let out = run_ok(Command::new("ip").args(["-o", "link"]));
    let mut links: Vec<String> = out
        .lines()
        .map(|l| {
            let name = l.split(':').nth(1).unwrap_or("").trim();
            let mac = l
                .split_whitespace()
                .skip_while(|w| !w.starts_with("link/"))
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            format!("{name} {mac}")
        })
        .collect();
    links.sort();
    links
}

#[test]
fn an_engine_leaves_the_machines_network_and_disk_as_they_were() {
    require_rig();
    let before = own_links();
    let dir = Path::new("/var/tmp").join(format!("kdr-dk-own-{}", std::process::id()));
    let out = Ran::of(Command::new(DOCKER_RIG).arg("start").arg(&dir));
    out.assert_exit(0);
    let host = out
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("DOCKER_HOST=").map(str::to_owned))
        .unwrap();
    let docker = |args: &[&str]| {
        run_ok(
            Command::new("docker")
                .arg("-H")
                .arg(&host)
                .env("DOCKER_CONFIG", dir.join("cli"))
                .args(args),
        )
    };
    // A user-defined bridge and a running container on it: a bridge and a
    // veth pair, inside the engine's namespace only.
    let rootfs = dir.join("tiny");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("docker")
        .arg("-H")
        .arg(&host)
        .env("DOCKER_CONFIG", dir.join("cli"))
        .args(["import", "-", "kdr-test/tiny:1"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(import.status.success(), "{import:?}");
    docker(&["network", "create", "kdr-net-own"]);
    // A shell that ends on SIGTERM (as pid 1 it would otherwise ignore it,
    // and the engine's stop would wait 10 s for it).
    docker(&[
        "run",
        "-d",
        "--name",
        "tiny",
        "--network",
        "kdr-net-own",
        "kdr-test/tiny:1",
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; /bin/busybox sleep 600 & wait",
    ]);
    assert_eq!(
        own_links(),
        before,
        "the engine changed the machine's interfaces"
    );

    let t0 = Instant::now();
    run_ok(Command::new(DOCKER_RIG).arg("stop").arg(&dir));
    eprintln!(
        "engine with a running container stopped in {:?}",
        t0.elapsed()
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(
        own_links(),
        before,
        "the engine changed the machine's interfaces"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left under {}:\n{mounts}",
        dir.display()
    );
}

#[test]
fn the_watchdog_cleans_up_when_the_watched_process_is_gone() {
    require_rig();
    let dir = Path::new("/var/tmp").join(format!("kdr-dk-wd-{}", std::process::id()));
    let mut watched = Command::new("sleep").arg("600").spawn().unwrap();
    let out = Ran::of(
        Command::new(DOCKER_RIG)
            .arg("start")
            .arg(&dir)
            .arg("--watch")
            .arg(watched.id().to_string()),
    );
    out.assert_exit(0);
    let dockerd: u32 = out
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("DOCKERD_PID=").map(|p| p.parse().unwrap()))
        .unwrap();
    assert!(dir.join("docker.sock").exists());
    watched.kill().unwrap();
    watched.wait().unwrap();
    wait_until("the watchdog's cleanup", 30, || !dir.exists());
    // dockerd is gone (a zombie at most, when nobody reaps it).
    let state = std::fs::read_to_string(format!("/proc/{dockerd}/stat")).unwrap_or_default();
    let state = state.rsplit(") ").next().unwrap_or("").chars().next();
    assert!(
        matches!(state, None | Some('Z' | 'X')),
        "dockerd: {state:?}"
    );
}
