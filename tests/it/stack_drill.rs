//! The stack drill (issue 26): the whole stack brought up from the
//! repository in scratch containers on an internal network of its own,
//! with an app cloned from production and waited on until Docker reports
//! it healthy; the RTO in the report; everything removed afterwards, on
//! SIGTERM too; production untouched.
//!
//! The app is the rig's PostgreSQL image running a loop, with a Docker
//! healthcheck that is the small program: it connects to PostgreSQL and
//! Redis by their production aliases with the production environment,
//! checks its table, and reads its bind-mounted certificate file.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::docker::{Engine, Stack, engine, kdr, run};
use crate::support::{Workspace, run_ok, wait_until};

const LABEL: &str = "io.kompose-dr.scratch";

/// What the app checks, every second as its healthcheck and every two
/// seconds in its log.
const APP_CHECK: &str = r#"psql "$DATABASE_URL" -X -q -t -c 'select count(*) from app_table' && grep -q resolver /etc/app/acme.json && printf 'AUTH %s\r\nPING\r\nQUIT\r\n' "$REDIS_PASSWORD" | nc -w 3 redis 6379 | grep -q PONG"#;

/// The production app: a container and its data volume, removed on drop.
struct App {
    engine: &'static Engine,
    name: String,
    volume: String,
}

impl App {
    /// Starts `NAME-SFX` on the stack's network under `alias`, as
    /// production runs it: the production env, its certificate
    /// bind-mounted, a volume of its own holding a file, an HTTP server
    /// whose `/health` exists while the check passes, and, if asked, the
    /// check as its Docker healthcheck.
    fn start(
        engine: &'static Engine,
        stack: &Stack,
        acme: &std::path::Path,
        name: &str,
        healthcheck: bool,
    ) -> App {
        let app = App {
            engine,
            name: format!("{name}-{}", stack.suffix),
            volume: format!("{name}-data-{}", stack.suffix),
        };
        run_ok(engine.docker().args(["volume", "create", &app.volume]));
        let mut docker = engine.docker();
        docker
            .args(["run", "-d", "--name", &app.name])
            .args(["--network", &stack.network, "--network-alias", name])
            .args(["-e", "DATABASE_URL=postgresql://kompose@postgres:5432/app"])
            .args(["-e", "PGPASSWORD", "-e", "REDIS_PASSWORD"])
            .args(["-v", &format!("{}:/var/lib/app", app.volume)])
            .args(["-v", &format!("{}:/etc/app/acme.json:ro", acme.display())]);
        // Without a Docker healthcheck (judged over HTTP), the app also
        // needs the file its volume had in production: a volume that
        // [[directories]] backs up comes back into its clone.
        let seed = if healthcheck {
            ""
        } else {
            " && test -f /var/lib/app/seed"
        };
        if healthcheck {
            docker
                .args(["--health-cmd", APP_CHECK])
                .args(["--health-interval", "1s", "--health-timeout", "5s"])
                .args(["--health-retries", "3", "--health-start-period", "2s"]);
        }
        run_ok(
            docker
                .args(["--entrypoint", "sh"])
                .arg(&engine.postgres_image)
                .args([
                    "-c",
                    &format!(
                        "echo app data > /var/lib/app/state; mkdir -p /www; httpd -p 8080 -h /www; \
                         while :; do if {APP_CHECK}{seed}; then echo ok > /www/health; echo app ok; \
                         else rm -f /www/health; echo app check failed; fi; sleep 1; done"
                    ),
                ])
                .env("PGPASSWORD", &stack.pg_password)
                .env("REDIS_PASSWORD", &stack.redis_password),
        );
        app
    }

    fn health(&self) -> String {
        self.engine.inspect(&self.name, "{{.State.Health.Status}}")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self
            .engine
            .docker()
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .engine
            .docker()
            .args(["volume", "rm", "-f", &self.volume])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Labelled containers, networks and volumes: what a drill leaves.
fn leftovers(engine: &Engine) -> Vec<String> {
    let mut all = engine.containers_with_label(LABEL);
    all.extend(engine.objects_with_label("network", LABEL));
    all.extend(engine.objects_with_label("volume", LABEL));
    all
}

/// What must not change in production: container ids and start times,
/// the networks' members, the app volume's file, the data.
fn production(engine: &Engine, stack: &Stack, apps: &[&App]) -> Vec<String> {
    let mut v = Vec::new();
    for c in [&stack.postgres, &stack.redis]
        .into_iter()
        .chain(apps.iter().map(|a| &a.name))
    {
        v.push(engine.inspect(c, "{{.Id}} {{.State.StartedAt}} {{.State.Running}}"));
    }
    v.push(engine.inspect(
        &stack.network,
        "{{range $id, $c := .Containers}}{{$c.Name}} {{end}}",
    ));
    for a in apps {
        v.push(run_ok(
            stack.exec(&a.name).args(["cat", "/var/lib/app/state"]),
        ));
    }
    v.push(stack.psql("app", "select count(*) from app_table"));
    v.push(stack.redis_cli(&["GET", "session"]));
    v
}

/// A drill stopped by `signal` once its first clone exists.
fn interrupt(ws: &Workspace, engine: &Engine, drill: &str, signal: nix::sys::signal::Signal) {
    let mut child = kdr(ws, engine)
        .args(["drill", "--drill", drill])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while engine.containers_with_label(LABEL).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no clone started"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    assert!(!child.wait().unwrap().success(), "{signal}");
}

fn configure(ws: &Workspace, engine: &Engine, stack: &Stack, acme: &std::path::Path, web: &App) {
    ws.configure(&format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [postgres]\ncontainer = \"{pg}\"\ndatabases = [\"*\"]\n\n\
         [redis]\ncontainer = \"{redis}\"\npassword = \"{redis_pw}\"\n\n\
         [[files]]\nname = \"traefik-acme\"\npath = \"{acme}\"\n\n\
         [[directories]]\nname = \"web-data\"\nvolume = \"{web_volume}\"\n\n\
         [scratch]\nruntime = \"docker\"\n\n\
         [metrics]\ntextfile = \"{metrics}\"\n",
        metrics = ws.dir.path().join("kompose-dr.prom").display(),
        host = engine.host,
        pg = stack.postgres,
        redis = stack.redis,
        redis_pw = stack.redis_password,
        acme = acme.display(),
        web_volume = web.volume,
    ));
    ws.prepend_top_level(&format!(
        "reports_dir = \"{}\"\n",
        ws.dir.path().join("reports").display()
    ));
}

/// The drill: `app` judged by its Docker healthcheck, `web` by an HTTP
/// check through its alias.
fn drill_file(ws: &Workspace, app: &App, web: &App, timeout: &str) -> String {
    let path = ws.dir.path().join("stack.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"quarterly-stack\"\nscope = \"stack\"\napps = [\"{app}\", \"{web}\"]\napp_timeout = \"{timeout}\"\n\n\
             [[app]]\nname = \"{web}\"\nhttp = \"http://web_app:8080/health\"\n",
            app = app.name,
            web = web.name,
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_stack_comes_back_in_scratch_and_production_is_untouched() {
    let engine = engine();
    let stack = Stack::start(engine);
    stack.psql("postgres", "CREATE DATABASE app");
    stack.psql(
        "app",
        "CREATE ROLE app_owner; CREATE TABLE app_table AS SELECT g AS id FROM generate_series(1, 30) g; \
         ALTER TABLE app_table OWNER TO app_owner",
    );
    stack.redis_cli(&["SET", "session", "ada"]);
    let ws = Workspace::new();
    let acme = ws.dir.path().join("acme.json");
    std::fs::write(&acme, r#"{"resolver":{"Account":{}}}"#).unwrap();
    std::fs::set_permissions(&acme, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let app = App::start(engine, &stack, &acme, "link_app", true);
    let web = App::start(engine, &stack, &acme, "web_app", false);
    wait_until("the production app healthy", 60, || {
        app.health() == "healthy"
    });
    run_ok(
        stack
            .exec(&web.name)
            .args(["sh", "-c", "echo seed > /var/lib/app/seed"]),
    );
    configure(&ws, engine, &stack, &acme, &web);
    run(&ws, engine, &["init"]).assert_exit(0);
    run(&ws, engine, &["backup"]).assert_exit(0);
    let drill = drill_file(&ws, &app, &web, "90s");
    let before = production(engine, &stack, &[&app, &web]);

    // A good drill: the app's clone comes up healthy on the restored data.
    let t = Instant::now();
    let out = run(&ws, engine, &["--json", "drill", "--drill", &drill]);
    out.assert_exit(0);
    eprintln!("good stack drill: {:.1} s", t.elapsed().as_secs_f64());
    let report = &out.json()[0];
    let st = &report["stack"];
    assert!(report["ok"].as_bool().unwrap(), "{report:#}");
    let rto = st["rto_seconds"].as_f64().expect("an RTO");
    assert!(rto > 0.0 && rto < t.elapsed().as_secs_f64(), "{st:#}");
    assert!(st["snapshot_age_seconds"].as_f64().unwrap() >= 0.0);
    for (i, a) in [&app, &web].into_iter().enumerate() {
        assert_eq!(st["apps"][i]["app"], a.name.as_str());
        let healthy = st["apps"][i]["seconds_to_healthy"].as_f64();
        assert!(healthy.is_some_and(|s| s > 0.0), "{st:#}");
    }
    for s in [
        "postgres/globals",
        "postgres/app",
        "redis",
        "files/traefik-acme",
        "directories/web-data",
    ] {
        assert!(
            report["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["source"] == s && v["ok"] == true),
            "{s} not restored: {report:#}"
        );
    }
    let md = std::fs::read_to_string(report["report_files"][1].as_str().unwrap()).unwrap();
    assert!(md.contains("RTO") && md.contains("healthy"), "{md}");
    assert_eq!(leftovers(engine), Vec::<String>::new());
    assert_eq!(production(engine, &stack, &[&app, &web]), before);
    let prom = std::fs::read_to_string(ws.dir.path().join("kompose-dr.prom")).unwrap();
    for m in [
        "kompose_dr_drill_rto_seconds{drill=\"quarterly-stack\"}",
        "kompose_dr_drill_snapshot_age_seconds{drill=\"quarterly-stack\"}",
        "kompose_dr_drill_app_healthy_seconds{",
    ] {
        assert!(prom.contains(m), "{m} missing:\n{prom}");
    }

    // SIGTERM mid-drill: everything labelled goes.
    interrupt(&ws, engine, &drill, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(leftovers(engine), Vec::<String>::new());
    assert_eq!(production(engine, &stack, &[&app, &web]), before);

    // kill -9 leaves the clones, their network and volumes behind; the
    // next drill sweeps them (below).
    interrupt(&ws, engine, &drill, nix::sys::signal::Signal::SIGKILL);
    let left = leftovers(engine);
    assert!(
        left.iter().any(|n| n.starts_with("kompose-dr-drill-net-")),
        "{left:?}"
    );
    assert_eq!(production(engine, &stack, &[&app, &web]), before);

    // A snapshot whose database lacks the app's table: the drill fails,
    // naming the app and showing its log.
    stack.psql("app", "DROP TABLE app_table");
    run(&ws, engine, &["backup"]).assert_exit(0);
    stack.psql(
        "app",
        "CREATE TABLE app_table AS SELECT g AS id FROM generate_series(1, 30) g",
    );
    let drill = drill_file(&ws, &app, &web, "20s");
    let out = run(&ws, engine, &["--json", "drill", "--drill", &drill]);
    out.assert_exit(1);
    let report = &out.json()[0];
    let st = &report["stack"];
    assert!(!report["ok"].as_bool().unwrap(), "{report:#}");
    assert!(st["rto_seconds"].is_null(), "{st:#}");
    let a = &st["apps"][0];
    assert_eq!(a["ok"], false);
    assert!(
        st["failure"].as_str().unwrap().contains(&app.name),
        "{st:#}"
    );
    assert!(
        a["log"].as_str().unwrap().contains("app_table"),
        "the app's log is not in the report: {a:#}"
    );
    let md = std::fs::read_to_string(report["report_files"][1].as_str().unwrap()).unwrap();
    assert!(md.contains("app_table") && md.contains(&app.name), "{md}");
    assert_eq!(leftovers(engine), Vec::<String>::new());
}

#[test]
fn a_stack_drill_without_the_docker_runtime_is_refused_naming_the_key() {
    let ws = Workspace::new();
    ws.configure("");
    let out = ws.run(&["drill", "--stack"]);
    out.assert_failed();
    assert!(
        out.stderr().contains("[scratch] runtime = \"docker\""),
        "{}",
        out.all()
    );
    // A per-source drill with checks is not run as a stack drill.
    let file = ws.dir.path().join("checks.toml");
    std::fs::write(
        &file,
        "name = \"q\"\n\n[[check]]\nsource = \"redis\"\nmin_keys = 1\n",
    )
    .unwrap();
    let out = ws.run(&["drill", "--stack", "--drill", file.to_str().unwrap()]);
    out.assert_exit(2);
    assert!(
        out.stderr().contains("leave out [[check]]"),
        "{}",
        out.all()
    );
}
