//! The configuration in every snapshot, and `kompose-dr bootstrap` (issue
//! 25): a backup carries the configuration, its policies and drills and
//! the secret files it names (never the age identity); `bootstrap` writes
//! them back under an empty directory from a local or an S3 repository
//! with no configuration file, refuses a wrong identity, a wrong public
//! key, a missing or empty repository and an occupied directory in one
//! line with nothing written, and prints a skeleton for a repository
//! whose snapshots predate the `config` source.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::s3::Garage;
use crate::support::{Ran, Workspace, require, run_ok, signing_key};

/// The files of a workspace's configuration besides itself: an env_file
/// (which the configuration expands), a notification token, a policy and
/// a drill. Returns (path, secret) of each, the configuration included.
fn configured_files(ws: &Workspace) -> Vec<(PathBuf, bool)> {
    let d = ws.dir.path();
    let write = |rel: &str, body: &str, mode: u32| {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let notes = write("data/notes.txt", "the data\n", 0o644);
    let env = write(
        "secrets/env",
        &format!("NOTES_PATH={}\n", notes.display()),
        0o600,
    );
    let token = write("secrets/gotify.token", "Atoken-0123456789\n", 0o600);
    let policy = write(
        "policies/nightly.toml",
        "name = \"nightly\"\nschedule = \"0 0 3 * * *\"\nsources = [\"files/*\"]\n\n[retention]\nkeep_daily = 7\n",
        0o640,
    );
    let drill = write(
        "drills/quarterly.toml",
        "name = \"quarterly\"\nsnapshot = \"latest\"\nsources = [\"files/*\"]\n",
        0o644,
    );
    ws.prepend_top_level(&format!(
        "env_file = \"{}\"\npolicies_dir = \"{}\"\ndrills_dir = \"{}\"\n",
        env.display(),
        d.join("policies").display(),
        d.join("drills").display()
    ));
    let cfg = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!(
            "{cfg}\n[[files]]\nname = \"notes\"\npath = \"${{NOTES_PATH}}\"\n\n\
             [[notify]]\nkind = \"gotify\"\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ws.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    vec![
        (ws.config.clone(), false),
        (policy, false),
        (drill, false),
        (env, true),
        (ws.signing_key.clone(), true),
        (token, true),
    ]
}

/// The binary with no configuration file anywhere.
fn bare(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kompose-dr"));
    c.env("KOMPOSE_DR_CONFIG", "/nonexistent/kompose-dr.toml")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(Stdio::null())
        .args(args);
    c
}

/// `bootstrap` of `repo` into `to`, with `extra` flags.
fn bootstrap(repo: &str, identity: &Path, public_key: &str, to: &Path, extra: &[&str]) -> Command {
    let mut c = bare(&["bootstrap", "--repository", repo, "--identity"]);
    c.arg(identity)
        .args(["--public-key", public_key, "--to"])
        .arg(to)
        .args(extra);
    c
}

/// The restored copy of `original` under `to`.
fn under(to: &Path, original: &Path) -> PathBuf {
    to.join(original.strip_prefix("/").unwrap())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every file is back byte for byte with its mode, every directory 0700,
/// and the identity is nowhere.
fn assert_restored(to: &Path, files: &[(PathBuf, bool)], identity: &Path) {
    for (original, secret) in files {
        let copy = under(to, original);
        assert_eq!(
            std::fs::read(&copy).unwrap_or_default(),
            std::fs::read(original).unwrap(),
            "{} differs from {}",
            copy.display(),
            original.display()
        );
        let want = if *secret || mode(original) & 0o040 == 0 {
            0o600
        } else {
            0o640
        };
        assert_eq!(mode(&copy), want, "{}", copy.display());
        assert_eq!(mode(copy.parent().unwrap()), 0o700, "{}", copy.display());
    }
    assert!(!under(to, identity).exists(), "the identity was written");
    for f in walk(to) {
        let body = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains("AGE-SECRET-KEY-"),
            "{} holds an age secret key",
            f.display()
        );
    }
}

/// A refusal: exit status `code`, one `error:` line naming `fix`, and
/// `to` still empty.
fn assert_refused(ran: &Ran, code: i32, fix: &str, to: &Path) {
    ran.assert_exit(code);
    let errors: Vec<String> = ran
        .stderr()
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{}", ran.all());
    assert!(errors[0].contains(fix), "{fix} not in {}", errors[0]);
    assert!(!ran.all().contains("panicked"), "{}", ran.all());
    assert_eq!(
        walk(to),
        Vec::<PathBuf>::new(),
        "{} is not empty",
        to.display()
    );
}

#[test]
fn a_local_repository_gives_back_the_configuration_and_its_secrets() {
    require("tar");
    let ws = Workspace::new();
    ws.configure("");
    let files = configured_files(&ws);
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let m = &ws.manifests()[0];
    let config = Workspace::artifact(m, "config");
    assert_eq!(config["kind"], "config");
    // The stock tools open it: paths relative to `/`.
    let tar = ws.stock_decrypt(&ws.archive(config));
    let listed = Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&tar)?;
            c.wait_with_output()
        })
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let rel = ws.config.strip_prefix("/").unwrap().display().to_string();
    assert!(listed.lines().any(|l| l == rel), "{listed}");
    assert!(!listed.contains("identity.txt"), "{listed}");

    // restore, verify and a plan ignore it; verify checks it decrypts.
    let v = ws.run(&["--json", "verify"]).assert_exit(0).json();
    assert!(v.to_string().contains("\"config\""), "{v:#}");

    let to = ws.dir.path().join("boot");
    std::fs::create_dir(&to).unwrap();
    let repo = ws.repo.display().to_string();
    let start = std::time::Instant::now();
    let id = m["id"].as_str().unwrap();
    let ran = Ran::of(&mut bootstrap(
        &repo,
        &ws.identity,
        &ws.public_key,
        &to,
        &["--snapshot", id],
    ));
    ran.assert_exit(0);
    assert!(ran.stdout().contains(id), "{}", ran.all());
    eprintln!("bootstrap took {:?}", start.elapsed());
    assert_restored(&to, &files, &ws.identity);
    let out = ran.stdout();
    assert!(out.contains("encryption.identity_file"), "{out}");
    assert!(out.contains("never in a snapshot"), "{out}");
    assert!(out.contains("token_file"), "{out}");
    assert!(
        out.contains(&format!(
            "kompose-dr --config {} doctor",
            under(&to, &ws.config).display()
        )),
        "{out}"
    );
    assert!(out.contains("restore --repository local --yes"), "{out}");

    // The restored configuration loads (with the identity installed back
    // where it names it, which it still is here).
    let restored_cfg = under(&to, &ws.config);
    Ran::of(
        bare(&["--config"])
            .arg(&restored_cfg)
            .arg("snapshots")
            .env("KOMPOSE_DR_STATE_DIR", ws.state_dir()),
    )
    .assert_exit(0);

    // A second bootstrap refuses the occupied directory; --force moves it aside.
    let again = Ran::of(&mut bootstrap(
        &repo,
        &ws.identity,
        &ws.public_key,
        &to,
        &[],
    ));
    again.assert_exit(2);
    assert!(again.stderr().contains("--force"), "{}", again.all());
    assert_restored(&to, &files, &ws.identity);
    let forced = Ran::of(&mut bootstrap(
        &repo,
        &ws.identity,
        &ws.public_key,
        &to,
        &["--force", "--json"],
    ));
    forced.assert_exit(0);
    let report = forced.json();
    let aside = PathBuf::from(report["replaced"].as_str().unwrap());
    assert!(under(&aside, &ws.config).is_file());
    assert_restored(&to, &files, &ws.identity);
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    require("age-keygen");
    let ws = Workspace::new();
    ws.configure("");
    configured_files(&ws);
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    let repo = ws.repo.display().to_string();
    let to = ws.dir.path().join("boot");
    std::fs::create_dir(&to).unwrap();

    let other = ws.dir.path().join("other-identity.txt");
    run_ok(Command::new("age-keygen").arg("-o").arg(&other));
    let ran = Ran::of(&mut bootstrap(&repo, &other, &ws.public_key, &to, &[]));
    assert_refused(&ran, 2, "--identity", &to);

    let (_, other_pk) = signing_key(ws.dir.path(), "other-signing");
    let ran = Ran::of(&mut bootstrap(&repo, &ws.identity, &other_pk, &to, &[]));
    assert_refused(&ran, 1, "--public-key", &to);

    let missing = ws.dir.path().join("no-such-repo").display().to_string();
    let ran = Ran::of(&mut bootstrap(
        &missing,
        &ws.identity,
        &ws.public_key,
        &to,
        &[],
    ));
    assert_refused(&ran, 1, "check --repository", &to);

    // A repository initialised but never backed up to.
    let empty = Workspace::new();
    empty.configure("");
    empty.init();
    let ran = Ran::of(&mut bootstrap(
        &empty.repo.display().to_string(),
        &empty.identity,
        &empty.public_key,
        &to,
        &[],
    ));
    assert_refused(&ran, 1, "holds no snapshot", &to);

    let ran = Ran::of(&mut bootstrap(
        &repo,
        &ws.identity,
        &ws.public_key,
        &to,
        &["--snapshot", "20200101T000000Z-000000"],
    ));
    assert_refused(&ran, 2, "no snapshot 20200101T000000Z-000000", &to);

    // An occupied directory: refused before anything is read.
    std::fs::write(to.join("kompose-dr.toml"), "# mine\n").unwrap();
    let ran = Ran::of(&mut bootstrap(
        &repo,
        &ws.identity,
        &ws.public_key,
        &to,
        &[],
    ));
    ran.assert_exit(2);
    assert!(
        ran.stderr().contains("already holds files"),
        "{}",
        ran.all()
    );
    assert_eq!(walk(&to), [to.join("kompose-dr.toml")]);
}

#[test]
fn an_s3_repository_gives_back_the_configuration_with_its_key_files() {
    let garage = Garage::start();
    garage.bucket("kdr-boot");
    let ws = Workspace::new();
    let section = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-boot/stack",
        &garage.endpoint(),
        "",
    );
    ws.configure_repositories(&section, "");
    let mut files = configured_files(&ws);
    files.push((ws.dir.path().join("s3-key-id"), true));
    files.push((ws.dir.path().join("s3-secret"), true));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);

    let to = ws.dir.path().join("boot");
    let s3 = |to: &Path, endpoint: &str| {
        let mut c = bootstrap("s3://kdr-boot/stack", &ws.identity, &ws.public_key, to, &[]);
        c.args(["--endpoint", endpoint, "--region", "garage", "--path-style"])
            .env("AWS_ACCESS_KEY_ID", &garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret);
        c
    };
    let start = std::time::Instant::now();
    let ran = Ran::of(&mut s3(&to, &garage.endpoint()));
    ran.assert_exit(0);
    eprintln!("bootstrap from S3 took {:?}", start.elapsed());
    assert_restored(&to, &files, &ws.identity);
    assert!(
        ran.stdout().contains("restore --repository offsite --yes"),
        "{}",
        ran.all()
    );

    // An S3 server that does not answer: one line, nothing written.
    let empty = ws.dir.path().join("boot2");
    std::fs::create_dir(&empty).unwrap();
    let ran = Ran::of(&mut s3(&empty, "http://127.0.0.1:9"));
    assert_refused(&ran, 1, "--endpoint", &empty);
}

#[test]
fn snapshots_from_before_the_config_source_give_a_skeleton() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat-v1");
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(fx.join("repo"))
            .arg(dir.path().join("repo")),
    );
    let identity = dir.path().join("identity.txt");
    std::fs::copy(fx.join("identity.txt"), &identity).unwrap();
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public_key = std::fs::read_to_string(fx.join("signing.pub")).unwrap();
    let to = dir.path().join("boot");
    std::fs::create_dir(&to).unwrap();
    let ran = Ran::of(&mut bootstrap(
        &dir.path().join("repo").display().to_string(),
        &identity,
        public_key.trim(),
        &to,
        &[],
    ));
    ran.assert_exit(1);
    let out = ran.stdout();
    for want in [
        "No snapshot",
        "20261205T163613Z-24853d",
        "[[files]]\nname = \"acme\"",
        "name = \"notes\"",
        "[[directories]]\nname = \"app\"",
        "identity_file = \"TODO",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    assert_eq!(walk(&to), Vec::<PathBuf>::new());
}
