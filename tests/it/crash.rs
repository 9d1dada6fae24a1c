//! The crash-consistency suite (issue 14), in the spirit of Kopia's
//! robustness engine: a seeded sequence of backups, prunes, restores and
//! verifies, each interrupted at a random moment — SIGKILL or SIGTERM, to
//! the process alone (`kill`, the OOM killer) or to its whole process group
//! (as systemd stops a unit), or the S3 network cut or stalled through the
//! fault proxy — and after every interruption the invariants:
//!
//! 1. `check --read-data` passes on every repository the operation writes
//!    (readers take no lock and write nothing; every repository is checked
//!    again at the end): every visible snapshot reads back whole.
//! 2. Every snapshot visible before the operation is still visible (and so,
//!    by 1, good), unless the operation was a prune whose `--dry-run`, taken
//!    just before, said it would remove it; snapshots appear only from a
//!    backup, and only in the repositories it writes.
//! 3. Production is in its before or its after state, never in between: a
//!    database restored with `--replace` holds either its rows from before
//!    or the snapshot's, exists under its name and accepts connections; the
//!    file holds either its old or the snapshot's bytes, with its mode;
//!    everything else is as it was (Redis' `auto-aof-rewrite-percentage`
//!    included, which a backup pauses).
//! 4. The same operation run again, uninterrupted, succeeds (a restore then
//!    leaves exactly the snapshot's data, a prune removes exactly what its
//!    dry run said); after it no process started in the workspace still
//!    runs, no scratch database (`kdr_restore_*`) is left, the local
//!    repository's lock is free and no S3 lease is left; after a prune
//!    (`--grace 0s`) no unreferenced data and no open multipart upload
//!    remains.
//!
//! What a kill legitimately leaves until later is handled as an operator
//! would and counted ("by design" in the summary): the S3 lease of a
//! writer killed with SIGKILL (or cut off from the store) stays until it
//! expires, 5 minutes after its last renewal, so the suite ages it by hand
//! instead of waiting; a `kdr_replaced_*` database, kept when a restore was
//! killed between its swap and dropping the old copy, is dropped by hand.
//!
//! Anything that breaks an invariant fails the test: the suite tolerates no
//! known bug. Each bug it found has a deterministic test below that keeps
//! it fixed; a new one gets one too, failing until it is fixed.
//!
//! Each interruption comes at a random moment within the operation's
//! typical duration, learnt from its uninterrupted runs (one of each kind
//! first, then every rerun), so no moment is measured up front.
//!
//! Replay: the seed and every iteration's plan are printed, and each
//! iteration's draws come from the seed and its number alone, so
//! `KDR_CRASH_SEED=S KDR_CRASH_ITERATIONS=N cargo test --test it
//! crash_consistency -- --nocapture` replays the same sequence of
//! operations and interruptions (the moments land on a different machine
//! state, so a timing-dependent failure may take a few runs).
//! `scripts/crash-suite N` runs the long version on the release binary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sha2::Digest;

use crate::support::s3::{FaultProxy, Garage};
use crate::support::stray::{Stray, kill_strays, strays, strays_after};
use crate::support::{Pg, Ran, Redis, Workspace, wait_child, wait_until};

/// Iterations of the short version (`cargo test`), unless
/// `KDR_CRASH_ITERATIONS` says otherwise.
const DEFAULT_ITERATIONS: u64 = 10;
/// The S3 bucket and prefix of the `offsite` repository.
const BUCKET: &str = "kdr-crash";
const PREFIX: &str = "crash";
/// The production databases (each one table `t`).
const DBS: [&str; 2] = ["app1", "app2"];
/// Rows in each database to begin with.
const ROWS: u32 = 10_000;
/// Bytes of the production file.
const FILE_BYTES: usize = 512 << 10;
/// The retention of both policies: a prune has something to remove as
/// soon as a policy has three snapshots.
const KEEP_LAST: usize = 2;
/// More snapshots than this in the local repository after an iteration,
/// and an uninterrupted prune follows.
const HOUSEKEEPING: usize = 5;
/// After this many violations the suite stops: the state is suspect.
const MAX_VIOLATIONS: usize = 5;

#[test]
fn crash_consistency_short() {
    let iterations = env_u64("KDR_CRASH_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let seed = env_u64("KDR_CRASH_SEED").unwrap_or_else(fresh_seed);
    run_crash_suite(iterations, seed);
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
    )
}

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Small enough to type back in.
    (t ^ (u64::from(std::process::id()) << 20)) % 1_000_000_000
}

/// Runs `iterations` interrupted operations chosen from `seed` against a
/// fresh set of servers, checking the invariants after each (see the module
/// documentation); prints a summary and fails on any violation.
pub fn run_crash_suite(iterations: u64, seed: u64) {
    println!(
        "crash suite: seed {seed}, {iterations} iteration(s); replay with \
         KDR_CRASH_SEED={seed} KDR_CRASH_ITERATIONS={iterations}"
    );
    let started = Instant::now();
    let mut rig = Rig::start(seed);
    rig.calibrate();
    for i in 1..=iterations {
        let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let op = rig.plan_op(&mut rng);
        let blow = plan_blow(&mut rng, &op, rig.typical(op.kind));
        rig.iteration = i;
        println!("[{i}/{iterations}] {op}: {blow}");
        rig.interrupt_and_check(&op, &blow);
        if rig.tally.violations.len() >= MAX_VIOLATIONS {
            println!("stopping after {MAX_VIOLATIONS} violations");
            break;
        }
    }
    rig.iteration = 0;
    rig.context = "final check".into();
    rig.check_repositories();
    let report = rig
        .tally
        .report(seed, iterations, started.elapsed(), &rig.typical);
    println!("{report}");
    assert!(
        rig.tally.violations.is_empty(),
        "the crash suite found {} violation(s) (seed {seed}):\n{}",
        rig.tally.violations.len(),
        rig.tally.violations.join("\n")
    );
}

/// SplitMix64: small, seeded, and the same on every platform and crate
/// version, so that a seed replays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// A moment in [0, `max`].
    fn up_to(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis() as u64 + 1))
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// What an iteration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    BackupLocal,
    BackupBoth,
    Prune,
    RestoreDb,
    RestoreFile,
    Verify,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::BackupLocal,
        Kind::BackupBoth,
        Kind::Prune,
        Kind::RestoreDb,
        Kind::RestoreFile,
        Kind::Verify,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::BackupLocal => "backup-local",
            Kind::BackupBoth => "backup-both",
            Kind::Prune => "prune",
            Kind::RestoreDb => "restore-db",
            Kind::RestoreFile => "restore-file",
            Kind::Verify => "verify",
        }
    }

    /// How often it is chosen, out of 100.
    fn weight(self) -> u64 {
        match self {
            Kind::BackupLocal => 15,
            Kind::BackupBoth => 25,
            Kind::Prune => 15,
            Kind::RestoreDb => 20,
            Kind::RestoreFile => 10,
            Kind::Verify => 15,
        }
    }

    fn is_backup(self) -> bool {
        matches!(self, Kind::BackupLocal | Kind::BackupBoth)
    }

    /// Whether it takes a repository's writer lock.
    fn writes(self) -> bool {
        self.is_backup() || self == Kind::Prune
    }
}

/// An operation: its kind, and for restores and verifies the repository,
/// snapshot and database.
#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    repo: &'static str,
    db: &'static str,
    snapshot: Option<String>,
}

impl Op {
    fn new(kind: Kind) -> Op {
        Op {
            kind,
            repo: "local",
            db: DBS[0],
            snapshot: None,
        }
    }

    fn touches_s3(&self) -> bool {
        match self.kind {
            Kind::BackupBoth | Kind::Prune => true,
            Kind::BackupLocal => false,
            _ => self.repo == "offsite",
        }
    }

    fn snapshot(&self) -> &str {
        self.snapshot
            .as_deref()
            .expect("a restore or verify names its snapshot")
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--json".into()];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        match self.kind {
            Kind::BackupLocal => a.extend(s(&["backup", "--policy", "local"])),
            Kind::BackupBoth => a.extend(s(&["backup", "--policy", "both"])),
            Kind::Prune => a.extend(s(&["prune", "--grace", "0s"])),
            Kind::RestoreDb | Kind::RestoreFile => {
                let source = if self.kind == Kind::RestoreDb {
                    format!("postgres/{}", self.db)
                } else {
                    "files/data".to_owned()
                };
                a.extend(s(&["restore", "--repository", self.repo, "--snapshot"]));
                a.push(self.snapshot().to_owned());
                a.extend(s(&["--source", &source, "--replace", "--yes"]));
            }
            Kind::Verify => {
                a.extend(s(&["verify", "--repository", self.repo, "--snapshot"]));
                a.push(self.snapshot().to_owned());
            }
        }
        a
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::RestoreDb => write!(
                f,
                "restore --replace of {} from {} {}",
                self.db,
                self.repo,
                self.snapshot()
            ),
            Kind::RestoreFile => write!(
                f,
                "restore --replace of the file from {} {}",
                self.repo,
                self.snapshot()
            ),
            Kind::Verify => write!(f, "verify of {} {}", self.repo, self.snapshot()),
            k => f.write_str(k.name()),
        }
    }
}

/// A signal and whom it goes to.
#[derive(Clone, Copy, Debug)]
struct Sig {
    signal: Signal,
    /// The whole process group (kompose-dr and its children), as systemd
    /// stops a unit; otherwise the kompose-dr process alone.
    group: bool,
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.signal.as_str(),
            if self.group { " to the group" } else { "" }
        )
    }
}

/// How an operation is interrupted.
#[derive(Clone, Copy, Debug)]
enum How {
    Signal(Sig),
    /// Every S3 connection cut and new ones refused until the run ends.
    Cut,
    /// Every open S3 connection hangs; `Sig` follows after the extra delay.
    StallThen(Sig, Duration),
}

/// An interruption and its moment (after the start).
#[derive(Clone, Copy, Debug)]
struct Blow {
    how: How,
    after: Duration,
}

impl Blow {
    /// The label it is counted under.
    fn label(&self) -> String {
        match self.how {
            How::Signal(s) => s.to_string(),
            How::Cut => "S3 cut".into(),
            How::StallThen(s, _) => format!("S3 stall, then {s}"),
        }
    }

    /// The signal sent, if any.
    fn signal(&self) -> Option<Sig> {
        match self.how {
            How::Signal(s) | How::StallThen(s, _) => Some(s),
            How::Cut => None,
        }
    }

    /// Whether the process may have died without running its cleanup
    /// (SIGKILL), or its cleanup may have been unable to reach the store.
    fn may_strand_a_lease(&self) -> bool {
        !matches!(self.how, How::Signal(s) if s.signal == Signal::SIGTERM)
    }
}

impl fmt::Display for Blow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.how {
            How::StallThen(s, extra) => write!(
                f,
                "S3 stall after {} ms, then {s} {} ms later",
                self.after.as_millis(),
                extra.as_millis()
            ),
            _ => write!(f, "{} after {} ms", self.label(), self.after.as_millis()),
        }
    }
}

/// The interruption of `op`: a moment in [0, 1.1 × its typical duration];
/// SIGKILL or SIGTERM, to the process or its group; for an operation that
/// talks to S3, sometimes the network instead.
fn plan_blow(rng: &mut Rng, op: &Op, typical: Duration) -> Blow {
    let after = rng.up_to(typical.mul_f64(1.1));
    let sig = Sig {
        signal: if rng.percent(50) {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        },
        group: rng.percent(30),
    };
    let network = rng.below(100);
    let extra = rng.up_to(Duration::from_secs(2));
    let how = match network {
        0..15 if op.touches_s3() => How::Cut,
        15..30 if op.touches_s3() => How::StallThen(sig, extra),
        _ => How::Signal(sig),
    };
    Blow { how, after }
}

/// A snapshot as `snapshots --json` lists it.
#[derive(Clone, Debug)]
struct Snap {
    id: String,
    /// Whether every artifact is good.
    whole: bool,
    /// The sources with a good artifact.
    good: BTreeSet<String>,
}

/// What production holds: each database's row count and checksum, and the
/// file's sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Prod {
    dbs: BTreeMap<String, String>,
    file: String,
}

/// How a run ended.
struct Ended {
    pid: i32,
    /// It exited before the interruption was delivered.
    finished_first: bool,
}

/// What the suite counted.
#[derive(Default)]
struct Tally {
    runs: BTreeMap<String, usize>,
    by_kind: BTreeMap<&'static str, usize>,
    by_blow: BTreeMap<String, usize>,
    finished_first: usize,
    normal_runs: usize,
    by_design: BTreeMap<&'static str, usize>,
    violations: Vec<String>,
}

impl Tally {
    fn report(
        &self,
        seed: u64,
        iterations: u64,
        took: Duration,
        typical: &BTreeMap<Kind, Vec<Duration>>,
    ) -> String {
        let mut s = format!(
            "crash summary: seed {seed}, {} of {iterations} iteration(s) run in {:.0} s, {} uninterrupted run(s) besides\n",
            self.by_kind.values().sum::<usize>(),
            took.as_secs_f64(),
            self.normal_runs
        );
        s.push_str(&format!("  by operation: {}\n", line(&self.by_kind)));
        s.push_str(&format!("  by interruption: {}\n", line(&self.by_blow)));
        s.push_str(&format!(
            "  by operation and interruption: {}\n",
            line(&self.runs)
        ));
        s.push_str(&format!(
            "  finished before the interruption: {}\n",
            self.finished_first
        ));
        let durations: Vec<String> = typical
            .iter()
            .map(|(k, d)| format!("{} {:.1} s", k.name(), mean(d).as_secs_f64()))
            .collect();
        s.push_str(&format!(
            "  typical uninterrupted durations: {}\n",
            durations.join(", ")
        ));
        for (what, n) in &self.by_design {
            s.push_str(&format!("  handled by hand {n} time(s): {what}\n"));
        }
        s.push_str(&format!("  violations: {}", self.violations.len()));
        for v in &self.violations {
            s.push_str(&format!("\n    {v}"));
        }
        s
    }
}

/// `key n, key n, …`.
fn line<K: fmt::Display>(m: &BTreeMap<K, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mean(d: &[Duration]) -> Duration {
    if d.is_empty() {
        return Duration::from_secs(2);
    }
    d.iter().sum::<Duration>() / d.len() as u32
}

/// The servers, the workspace and what the suite knows.
struct Rig {
    pg: Pg,
    redis: Redis,
    garage: Garage,
    proxy: FaultProxy,
    ws: Workspace,
    /// The production file, alone in its directory.
    file: PathBuf,
    /// A configuration whose `offsite` goes to Garage directly, for the
    /// checks: they judge the repositories, not the network.
    direct: PathBuf,
    /// Every uninterrupted run's duration, per kind.
    typical: BTreeMap<Kind, Vec<Duration>>,
    /// What production held when each snapshot was taken.
    states: BTreeMap<String, Prod>,
    /// The snapshots each repository showed last.
    visible: BTreeMap<&'static str, Vec<Snap>>,
    tally: Tally,
    rng: Rng,
    /// The iteration running (0: calibration or the final check).
    iteration: u64,
    /// What is running, for violation messages.
    context: String,
    /// Runs so far, to name their logs.
    runs: usize,
}

impl Rig {
    fn start(seed: u64) -> Rig {
        let pg = Pg::start();
        for db in DBS {
            pg.psql("postgres", &format!("CREATE DATABASE {db}"));
            pg.psql(
                db,
                &format!(
                    "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); \
                     INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g"
                ),
            );
        }
        // Redis with AOF: a backup pauses its automatic rewrites and runs
        // one; a per-key delay stretches that rewrite to ~0.3 s so that
        // interruptions land in it.
        let redis = Redis::start(true, None);
        redis.fill(3000);
        redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "100"]);
        let garage = Garage::start();
        garage.bucket(BUCKET);
        let proxy = FaultProxy::start(garage.port);
        let ws = Workspace::new();
        let prod_dir = ws.dir.path().join("prod");
        std::fs::create_dir(&prod_dir).unwrap();
        let file = prod_dir.join("data.bin");
        let mut rng = Rng::new(seed);
        write_file(&file, &rng.bytes(FILE_BYTES));

        let policies = ws.dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        for (name, repos) in [("both", "\"local\", \"offsite\""), ("local", "\"local\"")] {
            std::fs::write(
                policies.join(format!("{name}.toml")),
                format!(
                    "name = \"{name}\"\nschedule = \"0 0 3 * * *\"\nrepositories = [{repos}]\n\n\
                     [retention]\nkeep_last = {KEEP_LAST}\n"
                ),
            )
            .unwrap();
        }
        // Short timeouts and few retries so that a cut network fails a run
        // in seconds; long enough for a loaded machine's honest requests.
        let s3 = "part_size = \"5MiB\"\ntimeout = \"10s\"\nretries = 3\n";
        let local = format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n",
            ws.repo.display()
        );
        let url = format!("s3://{BUCKET}/{PREFIX}");
        let sources = format!(
            "{}{}[[files]]\nname = \"data\"\npath = \"{}\"\n",
            Workspace::pg_section(&pg, &DBS),
            Workspace::redis_section(&redis),
            file.display()
        );
        let top = format!("policies_dir = \"{}\"", policies.display());
        let direct = ws.dir.path().join("direct.toml");
        ws.configure_repositories(
            &format!(
                "{local}{}",
                garage.repository(ws.dir.path(), "offsite", &url, &garage.endpoint(), s3)
            ),
            &sources,
        );
        ws.prepend_top_level(&top);
        std::fs::rename(&ws.config, &direct).unwrap();
        ws.configure_repositories(
            &format!(
                "{local}{}",
                garage.repository(ws.dir.path(), "offsite", &url, &proxy.endpoint(), s3)
            ),
            &sources,
        );
        ws.prepend_top_level(&top);
        ws.init();
        std::fs::create_dir(ws.dir.path().join("logs")).unwrap();
        let mut rig = Rig {
            pg,
            redis,
            garage,
            proxy,
            ws,
            file,
            direct,
            typical: BTreeMap::new(),
            states: BTreeMap::new(),
            visible: BTreeMap::new(),
            tally: Tally::default(),
            rng,
            iteration: 0,
            context: "setup".into(),
            runs: 0,
        };
        for repo in ["local", "offsite"] {
            let listed = rig.list(repo);
            rig.visible.insert(repo, listed);
        }
        rig
    }

    /// One uninterrupted run of every kind, which also learns how long each
    /// takes: three backups to both repositories and one to the local one
    /// (so a prune has something to remove), a restore of each kind, a
    /// verify, a prune.
    fn calibrate(&mut self) {
        self.context = "calibration".into();
        for _ in 0..3 {
            self.normal(&Op::new(Kind::BackupBoth), None);
        }
        self.normal(&Op::new(Kind::BackupLocal), None);
        for kind in [Kind::RestoreDb, Kind::RestoreFile, Kind::Verify] {
            let mut op = Op::new(kind);
            op.snapshot = self.newest_whole("local");
            self.prepare(&op);
            self.normal(&op, None);
        }
        self.normal(&Op::new(Kind::Prune), None);
        self.check_repositories();
        assert!(
            self.tally.violations.is_empty(),
            "the uninterrupted runs already fail:\n{}",
            self.tally.violations.join("\n")
        );
    }

    fn typical(&self, kind: Kind) -> Duration {
        mean(self.typical.get(&kind).map_or(&[][..], |v| v))
    }

    fn violate(&mut self, msg: impl Into<String>) {
        let msg = format!(
            "iteration {} ({}): {}",
            self.iteration,
            self.context,
            msg.into()
        );
        println!("  VIOLATION {msg}");
        self.tally.violations.push(msg);
    }

    fn by_design(&mut self, what: &'static str, detail: &str) {
        println!("  handled by hand: {detail}");
        *self.tally.by_design.entry(what).or_default() += 1;
    }

    /// The binary with the direct configuration (for checks), like
    /// [`Workspace::kdr`] otherwise.
    fn direct(&self, args: &[&str]) -> Ran {
        Ran::of(
            Command::new(env!("CARGO_BIN_EXE_kompose-dr"))
                .arg("--config")
                .arg(&self.direct)
                .args(args)
                .stdin(Stdio::null())
                .env("TMPDIR", self.ws.tmp()),
        )
    }

    /// The snapshots of `repo`, newest first (`snapshots` must succeed).
    fn list(&mut self, repo: &'static str) -> Vec<Snap> {
        let out = self.direct(&["--json", "snapshots", "--repository", repo]);
        if out.code() != Some(0) {
            self.violate(format!(
                "`snapshots --repository {repo}` exits {:?}: {}",
                out.code(),
                tail(&out.stderr(), 10)
            ));
            return self.visible.get(repo).cloned().unwrap_or_default();
        }
        out.json()["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Snap {
                id: m["id"].as_str().unwrap().to_owned(),
                whole: m["status"] == "ok",
                good: m["artifacts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["status"] == "ok")
                    .map(|a| a["source"].as_str().unwrap().to_owned())
                    .collect(),
            })
            .collect()
    }

    fn newest_whole(&self, repo: &str) -> Option<String> {
        self.visible[repo]
            .iter()
            .find(|s| s.whole)
            .map(|s| s.id.clone())
    }

    /// Chooses the next operation; every random draw is made whatever the
    /// state, so that the seed alone decides the sequence.
    fn plan_op(&mut self, rng: &mut Rng) -> Op {
        let mut roll = rng.below(100);
        let kind = *Kind::ALL
            .iter()
            .find(|k| {
                if roll < k.weight() {
                    true
                } else {
                    roll -= k.weight();
                    false
                }
            })
            .unwrap_or(&Kind::BackupBoth);
        let offsite = rng.percent(40);
        let db = DBS[rng.below(DBS.len() as u64) as usize];
        let pick = rng.below(1 << 32);
        let mut op = Op::new(kind);
        op.db = db;
        if matches!(kind, Kind::RestoreDb | Kind::RestoreFile | Kind::Verify) {
            let source = match kind {
                Kind::RestoreDb => format!("postgres/{db}"),
                Kind::RestoreFile => "files/data".into(),
                _ => String::new(),
            };
            let usable = |rig: &Rig, repo: &str| -> Vec<String> {
                rig.visible[repo]
                    .iter()
                    .filter(|s| {
                        if kind == Kind::Verify {
                            s.whole
                        } else {
                            s.good.contains(&source)
                        }
                    })
                    .map(|s| s.id.clone())
                    .collect()
            };
            let mut repo = if offsite { "offsite" } else { "local" };
            let mut ids = usable(self, repo);
            if ids.is_empty() {
                repo = "local";
                ids = usable(self, repo);
            }
            if ids.is_empty() {
                // Prunes keep the newest good artifact of every source,
                // so only a history of failures gets here: back up first.
                self.normal(&Op::new(Kind::BackupLocal), None);
                ids = usable(self, repo);
            }
            op.repo = repo;
            op.snapshot = Some(ids[(pick % ids.len() as u64) as usize].clone());
        }
        op
    }

    /// Makes the operation's effect observable: before a restore,
    /// production changes, so that its before and after states differ.
    fn prepare(&mut self, op: &Op) {
        match op.kind {
            Kind::RestoreDb => {
                self.pg.psql(
                    op.db,
                    "INSERT INTO t SELECT m + g, md5(random()::text) FROM (SELECT max(id) AS m FROM t) s, \
                     generate_series(1, 100) g",
                );
            }
            Kind::RestoreFile => {
                let bytes = self.rng.bytes(FILE_BYTES);
                write_file(&self.file, &bytes);
            }
            _ => {}
        }
    }

    /// What production holds; `None` for a database that is missing or
    /// closed to connections (a violation, reported here).
    fn prod(&mut self) -> Prod {
        let mut dbs = BTreeMap::new();
        for db in DBS {
            let allow = self.pg.try_psql(
                "postgres",
                &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'"),
            );
            match allow.as_deref() {
                Ok("t") => {}
                Ok("f") => self.violate(format!("database {db} does not allow connections")),
                Ok(_) => self.violate(format!("database {db} does not exist")),
                Err(e) => self.violate(format!("cannot look at database {db}: {e}")),
            }
            let digest = self
                .pg
                .try_psql(
                    db,
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || '=' || v, ',' ORDER BY id)), '-') FROM t",
                )
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            dbs.insert(db.to_owned(), digest);
        }
        let file = match std::fs::read(&self.file) {
            Ok(b) => hex::encode(sha2::Sha256::digest(&b)),
            Err(e) => format!("unreadable: {e}"),
        };
        Prod { dbs, file }
    }

    /// Waits until no session but ours is on the production server: a
    /// killed run's server session finishes the statement it was running
    /// before it notices, and the checks must see where that leaves things.
    fn quiesce_pg(&mut self) {
        let start = Instant::now();
        loop {
            let n = self.pg.try_psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            );
            if n.as_deref() == Ok("0") {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let who = self.pg.try_psql(
                    "postgres",
                    "SELECT string_agg(datname || ': ' || left(query, 60), '; ') FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                );
                self.violate(format!(
                    "sessions still on the production server a minute after the run ended: {who:?}"
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `op` and interrupts it as `blow` says, then checks invariants 1
    /// to 3, runs it again uninterrupted and checks invariant 4.
    fn interrupt_and_check(&mut self, op: &Op, blow: &Blow) {
        self.context = format!("{op}: {blow}");
        let t0 = Instant::now();
        self.prepare(op);
        let removable = if op.kind == Kind::Prune {
            self.ensure_prunable()
        } else {
            BTreeMap::new()
        };
        let before = self.prod();
        let visible_before = self.visible.clone();
        let unfinished_before = if op.kind.is_backup() {
            self.unfinished_writes()
        } else {
            BTreeSet::new()
        };
        let t1 = Instant::now();
        let ended = self.interrupted(op, blow);
        let t2 = Instant::now();
        *self.tally.by_kind.entry(op.kind.name()).or_default() += 1;
        *self.tally.by_blow.entry(blow.label()).or_default() += 1;
        *self
            .tally
            .runs
            .entry(format!("{} / {}", op.kind.name(), blow.label()))
            .or_default() += 1;
        if ended.finished_first {
            self.tally.finished_first += 1;
        }
        self.proxy.clear();
        self.quiesce_pg();
        self.leases_after(op, blow, ended.pid, ended.finished_first);
        self.sigterm_cleaned_up(op, blow, &ended, &unfinished_before);
        // 1 and 2.
        self.check_written_by(op);
        self.check_visible(op, &visible_before, &removable, &before, false);
        // 3.
        let sigkilled =
            !ended.finished_first && blow.signal().is_some_and(|s| s.signal == Signal::SIGKILL);
        self.check_prod(op, &before, sigkilled);
        let t3 = Instant::now();
        // 4.
        self.normal(op, Some((blow, ended.pid)));
        // Housekeeping: reading every archive back is most of what an
        // iteration costs, so the snapshots are kept few.
        if self.visible["local"].len() > HOUSEKEEPING {
            self.context = format!("{op}: housekeeping prune");
            self.normal(&Op::new(Kind::Prune), None);
        }
        println!(
            "  took: prepare {:.1} s, run {:.1} s, checks {:.1} s, again and leftovers {:.1} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            t3.elapsed().as_secs_f64()
        );
    }

    /// The snapshots a prune would remove now, per repository (its dry
    /// run); backs up first until there is something to remove.
    fn ensure_prunable(&mut self) -> BTreeMap<&'static str, BTreeSet<String>> {
        for _ in 0..4 {
            let removable = self.dry_run();
            if removable.values().any(|r| !r.is_empty()) {
                return removable;
            }
            self.normal(&Op::new(Kind::BackupBoth), None);
        }
        self.dry_run()
    }

    fn dry_run(&mut self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let out = self.direct(&["--json", "prune", "--dry-run", "--grace", "0s"]);
        let mut removable = BTreeMap::new();
        if out.code() != Some(0) {
            self.violate(format!(
                "`prune --dry-run` exits {:?}: {}",
                out.code(),
                tail(&out.stderr(), 10)
            ));
            return removable;
        }
        for r in out.json().as_array().unwrap() {
            let repo = if r["repository"] == "local" {
                "local"
            } else {
                "offsite"
            };
            let gone: BTreeSet<String> = r["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["keep"] == false)
                .map(|d| d["snapshot"].as_str().unwrap().to_owned())
                .collect();
            removable.insert(repo, gone);
        }
        removable
    }

    fn log_paths(&mut self, op: &Op) -> (PathBuf, PathBuf) {
        self.runs += 1;
        let base = self.ws.dir.path().join("logs").join(format!(
            "{:04}-i{}-{}",
            self.runs,
            self.iteration,
            op.kind.name()
        ));
        (base.with_extension("out"), base.with_extension("err"))
    }

    fn spawn(&mut self, op: &Op) -> (Child, PathBuf) {
        let (out, err) = self.log_paths(op);
        let child = self
            .ws
            .kdr()
            .args(op.args())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            // Its own group, so that a signal can go to it and its children.
            .process_group(0)
            .spawn()
            .unwrap();
        (child, err)
    }

    /// Runs `op` and delivers `blow` unless it finished first; waits for it
    /// to end and judges how it ended.
    fn interrupted(&mut self, op: &Op, blow: &Blow) -> Ended {
        let (mut child, err) = self.spawn(op);
        let pid = child.id() as i32;
        let mut finished_first = wait_child(&mut child, blow.after).is_some();
        let mut limit = Duration::from_secs(30);
        if !finished_first {
            match blow.how {
                How::Signal(s) => {
                    send(pid, s);
                    if s.signal == Signal::SIGTERM {
                        limit = Duration::from_secs(120);
                    }
                }
                How::Cut => {
                    self.proxy.cut_all();
                    self.proxy.set_down(true);
                    // Retries with timeouts and backoff, then the failure.
                    limit = Duration::from_secs(300);
                }
                How::StallThen(s, extra) => {
                    self.proxy.stall_now(Duration::from_secs(60));
                    if wait_child(&mut child, extra).is_some() {
                        finished_first = true;
                    } else {
                        send(pid, s);
                        if s.signal == Signal::SIGTERM {
                            limit = Duration::from_secs(120);
                        }
                    }
                }
            }
        }
        let status = wait_child(&mut child, limit);
        if status.is_none() {
            self.violate(format!(
                "kompose-dr (pid {pid}) did not end within {limit:?} of the interruption; killed. stderr: {}",
                tail(&read(&err), 10)
            ));
            send(
                pid,
                Sig {
                    signal: Signal::SIGKILL,
                    group: true,
                },
            );
            let _ = wait_child(&mut child, Duration::from_secs(30));
        }
        if let Some(st) = status {
            let fine = match (st.code(), st.signal()) {
                (Some(0 | 1 | 3), _) => true,
                (None, Some(s)) => {
                    blow.signal().is_some_and(|b| b.signal as i32 == s) && !finished_first
                }
                _ => false,
            };
            if !fine {
                self.violate(format!(
                    "kompose-dr ended with {st} (a panic, a usage error or an unexpected signal): {}",
                    tail(&read(&err), 15)
                ));
            }
            println!(
                "  ended: {st}{}",
                if finished_first {
                    " (before the interruption)"
                } else {
                    ""
                }
            );
        }
        Ended {
            pid,
            finished_first,
        }
    }

    /// The unfinished writes in the repositories: `.tmp` files in the
    /// local one, open multipart uploads in the S3 one.
    fn unfinished_writes(&self) -> BTreeSet<String> {
        files_under(&self.ws.repo)
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|p| p.ends_with(".tmp"))
            .chain(self.garage.open_uploads(BUCKET))
            .collect()
    }

    /// A backup stopped with SIGTERM discards what it was writing: no new
    /// `.tmp` file in the local repository, no new open multipart upload
    /// (what the README promises; after a SIGKILL, prune removes them).
    fn sigterm_cleaned_up(
        &mut self,
        op: &Op,
        blow: &Blow,
        ended: &Ended,
        before: &BTreeSet<String>,
    ) {
        let sigterm = matches!(blow.how, How::Signal(s) if s.signal == Signal::SIGTERM);
        if !(sigterm && op.kind.is_backup() && !ended.finished_first) {
            return;
        }
        let new: Vec<String> = self
            .unfinished_writes()
            .difference(before)
            .cloned()
            .collect();
        if !new.is_empty() {
            self.violate(format!("unfinished writes left after SIGTERM: {new:?}"));
        }
    }

    /// Every lease in the S3 repository: its key and body.
    fn leases(&self) -> Vec<(String, serde_json::Value)> {
        self.garage
            .keys(BUCKET)
            .into_iter()
            .filter(|k| k.starts_with(&format!("{PREFIX}/locks/")))
            .map(|k| {
                let body = serde_json::from_slice(&self.garage.get(BUCKET, &k))
                    .unwrap_or(serde_json::Value::Null);
                (k, body)
            })
            .collect()
    }

    /// The leases an interrupted run left: only its own, and only when it
    /// could not remove it (SIGKILL, or the store out of reach); those are
    /// aged by hand, as if their 5 minutes had passed.
    fn leases_after(&mut self, op: &Op, blow: &Blow, pid: i32, finished_first: bool) {
        for (key, body) in self.leases() {
            let own = body["pid"] == pid && body["host"] == hostname();
            let stranded = own && op.kind.writes() && !finished_first;
            if stranded && blow.may_strand_a_lease() {
                self.age_lease(&key, &body);
                self.by_design(
                    "the S3 lease of a writer killed with SIGKILL or cut off from the store, aged by hand (it expires 5 min after its last renewal)",
                    &format!("lease {key} of pid {pid}"),
                );
            } else {
                self.violate(format!(
                    "lease {key} left after the run (pid {pid}, {}): {body}",
                    if own {
                        "its own, though it could remove it"
                    } else {
                        "not the interrupted run's"
                    }
                ));
                self.age_lease(&key, &body);
            }
        }
    }

    fn age_lease(&self, key: &str, body: &serde_json::Value) {
        let mut aged = body.clone();
        aged["expires_at"] = "2000-01-01T00:00:00Z".into();
        self.garage
            .put(BUCKET, key, &serde_json::to_vec(&aged).unwrap());
    }

    /// Invariant 1: `check --read-data` passes on every repository.
    fn check_repositories(&mut self) {
        self.check_written(&["local", "offsite"]);
    }

    /// Invariant 1 for the repositories `op` writes: the others cannot have
    /// changed (readers take no lock and write nothing), and reading every
    /// archive back is most of what an iteration costs.
    fn check_written_by(&mut self, op: &Op) {
        match op.kind {
            Kind::BackupLocal => self.check_written(&["local"]),
            Kind::BackupBoth | Kind::Prune => self.check_written(&["local", "offsite"]),
            _ => {}
        }
    }

    fn check_written(&mut self, repos: &[&str]) {
        for &repo in repos {
            let out = self.direct(&["--json", "check", "--read-data", "--repository", repo]);
            let ok = out.code() == Some(0)
                && serde_json::from_str::<serde_json::Value>(&out.stdout())
                    .is_ok_and(|v| v["ok"] == true);
            if !ok {
                self.violate(format!(
                    "`check --read-data --repository {repo}` fails (exit {:?}): {}{}",
                    out.code(),
                    out.stdout(),
                    tail(&out.stderr(), 10)
                ));
            }
        }
    }

    /// Invariant 2, and the record of what each new snapshot holds.
    /// `uninterrupted`: a prune must then have removed exactly `removable`.
    fn check_visible(
        &mut self,
        op: &Op,
        before: &BTreeMap<&'static str, Vec<Snap>>,
        removable: &BTreeMap<&'static str, BTreeSet<String>>,
        prod: &Prod,
        uninterrupted: bool,
    ) {
        for repo in ["local", "offsite"] {
            let after = self.list(repo);
            let was: BTreeSet<&str> = before[repo].iter().map(|s| s.id.as_str()).collect();
            let is: BTreeSet<&str> = after.iter().map(|s| s.id.as_str()).collect();
            let none = BTreeSet::new();
            let may_go = removable.get(repo).unwrap_or(&none);
            for gone in was.difference(&is) {
                if !may_go.contains(*gone) {
                    self.violate(format!(
                        "snapshot {gone} of {repo} is gone after {} (the dry run would remove {may_go:?})",
                        op.kind.name()
                    ));
                }
            }
            if uninterrupted && op.kind == Kind::Prune {
                for stays in may_go.iter().filter(|id| is.contains(id.as_str())) {
                    self.violate(format!(
                        "snapshot {stays} of {repo} is still there after an uninterrupted prune whose dry run would remove it"
                    ));
                }
            }
            let writes_here = match op.kind {
                Kind::BackupBoth => true,
                Kind::BackupLocal => repo == "local",
                _ => false,
            };
            for new in is.difference(&was) {
                if writes_here {
                    self.states
                        .entry((*new).to_owned())
                        .or_insert_with(|| prod.clone());
                } else {
                    self.violate(format!(
                        "snapshot {new} appeared in {repo} after {}",
                        op.kind.name()
                    ));
                }
            }
            self.visible.insert(repo, after);
        }
    }

    /// Invariant 3: production holds its before or its after state.
    fn check_prod(&mut self, op: &Op, before: &Prod, sigkilled: bool) {
        let now = self.prod();
        let snap = op
            .snapshot
            .as_ref()
            .and_then(|s| self.states.get(s))
            .cloned();
        for db in DBS {
            let mut allowed = vec![&before.dbs[db]];
            if op.kind == Kind::RestoreDb && op.db == db {
                allowed.extend(snap.as_ref().map(|s| &s.dbs[db]));
            }
            if !allowed.contains(&&now.dbs[db]) {
                self.violate(format!(
                    "database {db} holds {}, neither before ({}) nor the snapshot's ({:?})",
                    now.dbs[db],
                    before.dbs[db],
                    snap.as_ref().map(|s| &s.dbs[db])
                ));
            }
        }
        let mut allowed = vec![&before.file];
        if op.kind == Kind::RestoreFile {
            allowed.extend(snap.as_ref().map(|s| &s.file));
        }
        if !allowed.contains(&&now.file) {
            self.violate(format!(
                "the file holds sha256 {}, neither the old nor the snapshot's content",
                now.file
            ));
        }
        let mode = std::fs::metadata(&self.file).map(|m| m.permissions().mode() & 0o7777);
        if !matches!(mode, Ok(0o600)) {
            let mode = mode.map(|m| format!("{m:o}"));
            self.violate(format!("the file's mode is {mode:?}, not 600"));
        }
        self.check_redis(op, sigkilled);
    }

    /// The production Redis: reachable, its keys all there, and automatic
    /// AOF rewrites on (a backup pauses them while it runs its own).
    /// `sigkilled`: `op` was killed with SIGKILL before it finished.
    fn check_redis(&mut self, op: &Op, sigkilled: bool) {
        let pct = self
            .redis
            .cli(&["CONFIG", "GET", "auto-aof-rewrite-percentage"]);
        if !pct.contains("100") {
            let what = format!(
                "Redis' auto-aof-rewrite-percentage is not 100 after {}: {}",
                op.kind.name(),
                pct.replace('\n', " ")
            );
            // SIGTERM, a stall and a cut put it back (the guard in
            // sources/redis.rs); a process killed with SIGKILL runs no code.
            if op.kind.is_backup() && sigkilled {
                self.by_design(
                    "a backup killed with SIGKILL during the AOF rewrite leaves auto-aof-rewrite-percentage 0 \
                     (no code runs after SIGKILL: set it back by hand)",
                    &what,
                );
            } else {
                self.violate(what);
            }
            self.redis
                .cli(&["CONFIG", "SET", "auto-aof-rewrite-percentage", "100"]);
        }
        let keys = self.redis.dbsize();
        if keys != 3000 {
            self.violate(format!("Redis holds {keys} keys, not 3000"));
        }
    }

    /// Runs `op` uninterrupted (after the interruption `prior`, if any) and
    /// checks invariant 4.
    fn normal(&mut self, op: &Op, prior: Option<(&Blow, i32)>) {
        let before = self.prod();
        let visible_before = self.visible.clone();
        let removable = if op.kind == Kind::Prune {
            self.dry_run()
        } else {
            BTreeMap::new()
        };
        let mut attempt = 0;
        let (code, err, took) = loop {
            attempt += 1;
            let start = Instant::now();
            let (mut child, err) = self.spawn(op);
            let status = wait_child(&mut child, Duration::from_secs(600));
            let code = status.and_then(|s| s.code());
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let stderr = read(&err);
            if code != Some(0) && attempt == 1 {
                // A lease the interrupted writer's last request put just as
                // it died can land after the look for leases: aged like the
                // others.
                if let Some((blow, pid)) = prior
                    && stderr.contains("is locked by")
                    && stderr.contains(&format!("pid {pid} "))
                {
                    self.leases_after(op, blow, pid, false);
                    continue;
                }
            }
            break (code, err, start.elapsed());
        };
        self.tally.normal_runs += 1;
        if code != Some(0) {
            self.violate(format!(
                "the uninterrupted {op} exits {code:?}: {}",
                tail(&read(&err), 15)
            ));
        } else {
            self.typical.entry(op.kind).or_default().push(took);
        }
        println!(
            "  uninterrupted {}: exit {code:?} in {:.1} s",
            op.kind.name(),
            took.as_secs_f64()
        );
        self.quiesce_pg();
        self.check_visible(op, &visible_before, &removable, &before, true);
        // The run's own effect on production.
        let now = self.prod();
        let mut expected = before.clone();
        if code == Some(0)
            && let Some(snap) = op.snapshot.as_ref().and_then(|s| self.states.get(s))
        {
            match op.kind {
                Kind::RestoreDb => {
                    expected
                        .dbs
                        .insert(op.db.to_owned(), snap.dbs[op.db].clone());
                }
                Kind::RestoreFile => expected.file = snap.file.clone(),
                _ => {}
            }
        }
        if now != expected {
            self.violate(format!(
                "after the uninterrupted {op}, production is {now:?}, expected {expected:?}"
            ));
        }
        self.check_redis(op, false);
        self.leftovers(op);
    }

    /// The rest of invariant 4, after an uninterrupted run: nothing left
    /// running, no scratch database, no lock, no lease; after a prune,
    /// nothing unreferenced and no open upload.
    fn leftovers(&mut self, op: &Op) {
        let tmp = self.ws.tmp();
        let left: Vec<Stray> = strays_after(&tmp, Duration::from_secs(10));
        if !left.is_empty() {
            let list = left
                .iter()
                .map(Stray::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            self.violate(format!("processes left running: {list}"));
            kill_strays(&tmp);
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if !entries.is_empty() {
            self.violate(format!("left in TMPDIR: {entries:?}"));
            for p in entries {
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        // Scratch databases of restores, and databases a --replace kept aside.
        let rows = self
            .pg
            .try_psql(
                "postgres",
                "SELECT datname || '|' || coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname LIKE 'kdr\\_%'",
            )
            .unwrap_or_default();
        for row in rows.lines().filter(|l| !l.is_empty()) {
            let (db, comment) = row.split_once('|').unwrap_or((row, ""));
            if db.starts_with("kdr_replaced_") && op.kind == Kind::RestoreDb {
                self.by_design(
                    "a kdr_replaced_* database (what a database held before a --replace: kept until the operator drops it)",
                    db,
                );
            } else {
                self.violate(format!(
                    "database {db} left on the production server (comment: {comment:?})"
                ));
            }
            self.pg
                .psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
        }
        if !local_lock_free(&self.ws.repo) {
            self.violate("the local repository's lock is held");
        }
        let leases = self.leases();
        if !leases.is_empty() {
            self.violate(format!("leases left in the S3 repository: {leases:?}"));
            for (k, b) in leases {
                self.age_lease(&k, &b);
            }
        }
        let dir = self.file.parent().unwrap().to_owned();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "data.bin" || name.starts_with("data.bin.kompose-dr-") {
                continue;
            }
            self.violate(format!("left beside the production file: {name}"));
            let _ = std::fs::remove_file(e.path());
        }
        if op.kind == Kind::Prune {
            // What the stores hold beside the visible snapshots.
            let visible = |rig: &Rig, repo: &str| -> BTreeSet<String> {
                rig.visible[repo].iter().map(|s| s.id.clone()).collect()
            };
            let local: BTreeSet<String> = std::fs::read_dir(self.ws.repo.join("data"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let data = format!("{PREFIX}/data/");
            let offsite: BTreeSet<String> = self
                .garage
                .keys(BUCKET)
                .iter()
                .filter_map(|k| k.strip_prefix(&data)?.split('/').next().map(str::to_owned))
                .collect();
            for (repo, held) in [("local", local), ("offsite", offsite)] {
                let named = visible(self, repo);
                let extra: Vec<&String> = held.difference(&named).collect();
                if !extra.is_empty() {
                    self.violate(format!(
                        "data no snapshot names in {repo} after an uninterrupted prune --grace 0s: {extra:?}"
                    ));
                }
            }
            let tmp = files_under(&self.ws.repo)
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(".tmp"))
                .collect::<Vec<_>>();
            if !tmp.is_empty() {
                self.violate(format!(
                    "unfinished writes in the local repository after an uninterrupted prune --grace 0s: {tmp:?}"
                ));
            }
            let open = self.garage.open_uploads(BUCKET);
            if !open.is_empty() {
                self.violate(format!(
                    "open multipart uploads after an uninterrupted prune --grace 0s: {open:?}"
                ));
            }
        }
    }
}

/// Sends `sig` to the process `pid`, or to its group.
fn send(pid: i32, sig: Sig) {
    let target = nix::unistd::Pid::from_raw(if sig.group { -pid } else { pid });
    let _ = nix::sys::signal::kill(target, sig.signal);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Whether the local repository's writer lock (a `flock` on `<repo>/lock`)
/// can be taken now.
fn local_lock_free(repo: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .open(repo.join("lock"))
    else {
        return true;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

/// Writes the production file as an application would, mode 0600.
fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// Deterministic reproductions of what the suite found: each keeps its bug
// fixed.

/// Kills what a test's runs left running when the test ends, pass or fail.
struct KillStrays(PathBuf);

impl Drop for KillStrays {
    fn drop(&mut self) {
        kill_strays(&self.0);
    }
}

/// A workspace backing up database `app` (a table of 20 000 rows) of `pg`.
fn backed_up_database(pg: &Pg) -> Workspace {
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    let ws = Workspace::new();
    ws.configure(&Workspace::pg_section(pg, &["app"]));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    ws
}

/// Spawns the binary with `args`, its output discarded, in a process group
/// of its own.
fn spawn_quiet(ws: &Workspace, args: &[&str]) -> Child {
    ws.kdr()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill_now(child: &mut Child, signal: Signal) {
    send(
        child.id() as i32,
        Sig {
            signal,
            group: false,
        },
    );
    assert!(
        wait_child(child, Duration::from_secs(120)).is_some(),
        "kompose-dr did not end after {signal}"
    );
}

#[test]
fn a_verify_killed_with_sigkill_leaves_no_scratch_server() {
    let pg = Pg::start();
    let ws = backed_up_database(&pg);
    let tmp = ws.tmp();
    let _cleanup = KillStrays(tmp.clone());
    let mut verify = spawn_quiet(&ws, &["verify"]);
    wait_until("the scratch postgres to start", 120, || {
        strays(&tmp)
            .iter()
            .any(|s| s.cmdline.contains("listen_addresses="))
    });
    kill_now(&mut verify, Signal::SIGKILL);
    // The next verify succeeds, and afterwards nothing of either is left.
    ws.run(&["verify"]).assert_exit(0);
    let left = strays_after(&tmp, Duration::from_secs(10));
    assert!(left.is_empty(), "left running: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "left in TMPDIR: {dirs:?}");
}

#[test]
fn a_restore_killed_during_create_database_leaves_no_scratch_database() {
    use std::io::Write;
    let pg = Pg::start();
    let ws = backed_up_database(&pg);
    // A transaction holding a lock on template0 makes CREATE DATABASE
    // wait: a slow server, made deterministic.
    let mut blocker = pg
        .client("psql")
        .args(["-X", "-q", "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut hold = blocker.stdin.take().unwrap();
    hold.write_all(b"BEGIN;\nCOMMENT ON DATABASE template0 IS 'held';\n")
        .unwrap();
    hold.flush().unwrap();
    wait_until("the lock on template0", 30, || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
        ) == "1"
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE DATABASE%'";
    let mut restore = spawn_quiet(
        &ws,
        &["restore", "--source", "postgres/app", "--replace", "--yes"],
    );
    wait_until("CREATE DATABASE to wait for the lock", 120, || {
        pg.psql("postgres", waiting) == "1"
    });
    kill_now(&mut restore, Signal::SIGKILL);
    hold.write_all(b"ROLLBACK;\n").unwrap();
    drop(hold);
    blocker.wait().unwrap();
    wait_until("the orphaned CREATE DATABASE to finish", 60, || {
        pg.psql("postgres", waiting) == "0"
    });

    // The next restore succeeds and leaves no scratch database (what `app`
    // held is kept as kdr_replaced_*, by design).
    ws.run(&["restore", "--source", "postgres/app", "--replace", "--yes"])
        .assert_exit(0);
    let left = pg.psql(
        "postgres",
        "SELECT string_agg(datname, ', ') FROM pg_database WHERE datname LIKE 'kdr\\_restore\\_%'",
    );
    assert!(left.is_empty(), "left on the server: {left}");
}

/// A workspace backing up one file of `bytes` random bytes, `data.bin`
/// alone in directory `prod/`; returns the workspace and the file.
fn backed_up_file(bytes: usize) -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    let dir = ws.dir.path().join("prod");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("data.bin");
    let mut rng = Rng::new(7);
    write_file(&file, &rng.bytes(bytes));
    ws.configure(&format!(
        "[[files]]\nname = \"data\"\npath = \"{}\"\n",
        file.display()
    ));
    ws.init();
    ws.run(&["backup"]).assert_exit(0);
    write_file(&file, &rng.bytes(bytes));
    (ws, file)
}

/// The names in `dir` other than `keep`.
fn others_in(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

#[test]
fn a_file_restore_killed_midway_leaves_no_temporary_file() {
    let (ws, file) = backed_up_file(48 << 20);
    let dir = file.parent().unwrap().to_owned();
    let mut restore = spawn_quiet(
        &ws,
        &["restore", "--source", "files/data", "--replace", "--yes"],
    );
    wait_until("the temporary file", 120, || {
        others_in(&dir, "data.bin")
            .iter()
            .any(|n| n.ends_with(".tmp"))
    });
    kill_now(&mut restore, Signal::SIGKILL);
    ws.run(&["restore", "--source", "files/data", "--replace", "--yes"])
        .assert_exit(0);
    let tmp: Vec<String> = others_in(&dir, "data.bin")
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "left beside the file: {tmp:?}");
}

#[test]
fn a_file_restored_twice_within_a_second_is_replaced_both_times() {
    let (ws, file) = backed_up_file(4096);
    for n in 0..3 {
        std::fs::write(&file, format!("changed {n}")).unwrap();
        ws.run(&["restore", "--source", "files/data", "--replace", "--yes"])
            .assert_exit(0);
    }
}

#[test]
fn a_backup_interrupted_during_the_aof_rewrite_turns_automatic_rewrites_back_on() {
    let redis = Redis::start(true, None);
    redis.fill(2000);
    // 2 ms per key: a rewrite of ~4 s to interrupt.
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "2000"]);
    let ws = Workspace::new();
    ws.configure(&Workspace::redis_section(&redis));
    ws.init();
    let mut backup = spawn_quiet(&ws, &["backup"]);
    wait_until("the AOF rewrite", 120, || {
        redis
            .cli(&["INFO", "persistence"])
            .contains("aof_rewrite_in_progress:1")
    });
    kill_now(&mut backup, Signal::SIGTERM);
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "0"]);
    let pct = redis.cli(&["CONFIG", "GET", "auto-aof-rewrite-percentage"]);
    assert!(pct.contains("100"), "after SIGTERM: {pct}");
}

#[test]
fn a_prune_stopped_with_sigterm_releases_its_s3_lease() {
    let garage = Garage::start();
    garage.bucket("kdr-prune-term");
    let proxy = FaultProxy::start(garage.port);
    let ws = Workspace::new();
    let file = ws.dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let repo = garage.repository(
        ws.dir.path(),
        "offsite",
        "s3://kdr-prune-term/p",
        &proxy.endpoint(),
        "retries = 8\n",
    );
    ws.configure_repositories(
        &repo,
        &format!(
            "[retention]\nkeep_last = 1\n\n[[files]]\nname = \"f\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    ws.init();
    for _ in 0..2 {
        ws.run(&["backup"]).assert_exit(0);
    }
    // Removing the older snapshot's manifest keeps failing: prune retries,
    // holding its lease, until it is stopped.
    proxy.respond_matching("DELETE /kdr-prune-term/p/snapshots/", 503);
    let mut prune = spawn_quiet(&ws, &["prune"]);
    wait_until("prune to retry a removal", 120, || proxy.injected() > 0);
    kill_now(&mut prune, Signal::SIGTERM);
    let leases: Vec<String> = garage
        .keys("kdr-prune-term")
        .into_iter()
        .filter(|k| k.starts_with("p/locks/"))
        .collect();
    assert!(leases.is_empty(), "SIGTERM left the lease: {leases:?}");
}
