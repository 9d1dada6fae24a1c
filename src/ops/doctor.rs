//! `doctor`: prove the configuration works before the night it is needed,
//! by walking the whole path every configured job takes, as the user that
//! runs it (docs/DESIGN.md §12).
//!
//! It checks who it runs as (and the units' `User=`), every repository
//! (reach and credentials, initialised, a probe written, read back and
//! deleted), each source as the backup would use it (PostgreSQL login,
//! databases, pg_dump's version chosen by the source's own logic, the
//! right to dump globals; Redis AUTH and PING and its data directory;
//! every `[[files]]` path), the MQTT broker (a CONNACK with the configured
//! credentials), the metrics textfile's directory (a probe file), the
//! container engine and every container named, the scratch runtime's
//! binaries and user, signing, the policy and drill files, the reports
//! directory, the identity and signing key files (readable by their owner
//! only) and an S3 repository's lock leases. Each network check is bounded by
//! `[timeouts] connect`; every failure names what to fix (the key, the
//! file, the command). Messages are scrubbed of every configured secret.

use bytes::Bytes;
use serde::Serialize;

use crate::model::config::Config;
use crate::repository::{Repository, RepositoryError};
use crate::storage::PutMode;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`repository offsite: write`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details, or what to fix.
    pub message: String,
}

pub mod coverage;
mod leases;
mod paths;
mod sources;
mod unit;

pub use paths::UNIT_USER;
pub use unit::{AsUserError, as_user_command};

/// Runs every check; `only` limits them to one repository. `as_user` is
/// the user `--as-user` switched to, for the `user` check's message.
pub async fn run(config: &Config, only: Option<&str>, as_user: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    if only.is_none() {
        paths::user(as_user, &mut checks);
    }
    for rc in config
        .repositories
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
    {
        if let Some(c) = lost(rc) {
            checks.push(c);
            continue;
        }
        let repo = Repository::open(rc);
        let limit = config.timeouts.connect;
        let before = checks.len();
        let all = async {
            repository(&repo, &mut checks).await;
            // Reached: its leases too.
            if checks.get(before).is_some_and(|c| c.ok) {
                leases::leases(rc, &repo, &mut checks).await;
            }
        };
        if tokio::time::timeout(limit * 4, all).await.is_err() {
            checks.truncate(before);
            checks.push(check(
                format!("repository {}: reach", repo.name()),
                Err(format!(
                    "{} did not answer within {}s: is the store up and reachable? fix its url/endpoint in {}",
                    repo.location(),
                    (limit * 4).as_secs(),
                    config.path.display()
                )),
            ));
        }
    }
    if only.is_none() {
        let server_major = sources::postgres(config, &mut checks).await;
        sources::redis(config, &mut checks).await;
        sources::files(config, &mut checks);
        broker(config, &mut checks).await;
        notify_targets(config, &mut checks).await;
        paths::textfile(config, &mut checks);
        containers(config, &mut checks).await;
        directories(config, &mut checks).await;
        scratch_runtime(config, server_major, &mut checks);
        signing(config, &mut checks);
        paths::policies_and_drills(config, &mut checks);
        paths::identity(config, &mut checks);
        paths::signing_key_file(config, &mut checks);
        unit::sandbox(config, &mut checks);
    }
    // Servers' and tools' messages are quoted: none may carry a secret.
    let scrub = config.redactor();
    for c in &mut checks {
        c.message = scrub.scrub(&c.message);
    }
    checks
}

/// `repository NAME: reach` for a local repository whose directory is
/// gone (the host's disk was lost or replaced): `init` re-creates it.
fn lost(rc: &crate::model::config::RepositoryConfig) -> Option<Check> {
    use crate::model::config::Location;
    let Location::Local(path) = &rc.location else {
        return None;
    };
    match path.try_exists() {
        Ok(false) => Some(check(
            format!("repository {}: reach", rc.name),
            Err(format!(
                "repository {}: {} does not exist: run `kompose-dr init` (it re-creates it; \
                 the repositories that exist are left as they are)",
                rc.name,
                path.display()
            )),
        )),
        _ => None,
    }
}

/// `notify <kind> <host>` and `healthchecks <host>`: each receiver takes a
/// TCP connection. Nothing is sent: a test message would page someone, and
/// a ping would tell healthchecks a job ran. The healthchecks URL is never
/// printed (its uuid is the secret), only its host.
async fn notify_targets(config: &Config, checks: &mut Vec<Check>) {
    let limit = config.timeouts.connect;
    let file = config.path.display();
    let mut targets: Vec<(String, url::Url, String)> = config
        .notify
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let kind = crate::events::notify::kind_name(n.kind);
            (
                format!("notify {kind}"),
                n.url.clone(),
                format!("notify[{i}].url"),
            )
        })
        .collect();
    if let Some(hc) = &config.healthchecks {
        for (key, url) in [
            ("healthchecks.url", Some(&hc.url)),
            ("healthchecks.drill_url", hc.drill_url.as_ref()),
            ("healthchecks.prune_url", hc.prune_url.as_ref()),
        ] {
            if let Some(u) = url.and_then(|u| url::Url::parse(u.expose()).ok()) {
                targets.push(("healthchecks".into(), u, key.into()));
            }
        }
    }
    for (what, url, key) in targets {
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let name = format!("{what} {host}");
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        let result = match tokio::time::timeout(limit, connect).await {
            Ok(Ok(_)) => Ok(format!(
                "{host}:{port} takes connections (nothing was sent)"
            )),
            Ok(Err(e)) => Err(format!(
                "cannot connect to {host}:{port}: {e}; is it up and reachable from this host? fix {key} in {file}"
            )),
            Err(_) => Err(format!(
                "{host}:{port} did not answer within {}s: a firewall? fix {key} in {file}",
                limit.as_secs()
            )),
        };
        checks.push(check(name, result));
    }
}

/// `mqtt`: the broker answers a connection with the configured credentials.
async fn broker(config: &Config, checks: &mut Vec<Check>) {
    let Some(m) = &config.mqtt else { return };
    let limit = config
        .timeouts
        .connect
        .min(m.timeout.max(std::time::Duration::from_secs(1)));
    let result = crate::events::mqtt::probe(m, limit).await.map_err(|e| {
        let scrub = config.redactor();
        format!(
            "{} (in {})",
            scrub.scrub(&e.to_string()),
            config.path.display()
        )
    });
    checks.push(check("mqtt", result));
}

async fn repository(repo: &Repository, checks: &mut Vec<Check>) {
    let name = |what: &str| format!("repository {}: {what}", repo.name());
    let backend = repo.backend();
    // Reachable, credentials accepted (a list needs both).
    if let Err(e) = backend.list("snapshots/").await {
        checks.push(Check {
            name: name("reach"),
            ok: false,
            message: e.to_string(),
        });
        return;
    }
    checks.push(Check {
        name: name("reach"),
        ok: true,
        message: format!("{} answers; the credentials are accepted", repo.location()),
    });
    checks.push(match repo.marker().await {
        Ok(m) => Check {
            name: name("initialised"),
            ok: true,
            message: format!("format version {}, created {}", m.version, m.created_at),
        },
        Err(e @ RepositoryError::NotInitialised { .. }) => Check {
            name: name("initialised"),
            ok: false,
            message: e.to_string(),
        },
        Err(e) => Check {
            name: name("initialised"),
            ok: false,
            message: e.to_string(),
        },
    });
    let key = format!("doctor/probe-{:08x}", rand::random::<u32>());
    let body = Bytes::from_static(b"kompose-dr doctor probe\n");
    let result = async {
        backend.put(&key, body.clone(), PutMode::Overwrite).await?;
        let back = backend.get(&key).await?;
        if back != body {
            return Err(crate::storage::StorageError::Remote {
                op: "read back",
                location: key.clone(),
                message: "the probe came back different".into(),
            });
        }
        backend.delete(&key).await
    }
    .await;
    checks.push(match result {
        Ok(()) => Check {
            name: name("write"),
            ok: true,
            message: "a probe object was written, read back and deleted".into(),
        },
        Err(e) => Check {
            name: name("write"),
            ok: false,
            message: e.to_string(),
        },
    });
}

/// A failed check's message: what is wrong and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Finding(String);

impl From<String> for Finding {
    fn from(message: String) -> Self {
        Finding(message)
    }
}

impl From<&str> for Finding {
    fn from(message: &str) -> Self {
        Finding(message.to_owned())
    }
}

/// A check's outcome: what was found, or the [`Finding`] to fix.
pub(crate) type Verdict<T = String> = Result<T, Finding>;

fn check<E: Into<Finding>>(name: impl Into<String>, result: Result<String, E>) -> Check {
    match result {
        Ok(message) => Check {
            name: name.into(),
            ok: true,
            message,
        },
        Err(e) => Check {
            name: name.into(),
            ok: false,
            message: e.into().0,
        },
    }
}

/// Every `[[directories]]` entry: the directory is readable and holds its
/// SQLite databases, or the volume has a container using it (its image
/// makes the helper); every `stop` container exists.
async fn directories(config: &Config, checks: &mut Vec<Check>) {
    use crate::engine::Engine;
    use crate::model::config::DirectoryLocation;
    for d in &config.directories {
        let name = format!("directories/{}", d.name);
        let engine = || Engine::connect(d.engine()).map_err(|e| e.to_string());
        let found: Verdict = async {
            let mut what = match &d.location {
                DirectoryLocation::Path(p) => {
                    std::fs::read_dir(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                    for db in &d.sqlite {
                        let f = p.join(db);
                        if !f.is_file() {
                            return Err(format!(
                                "SQLite database {} is not there (sqlite = [\"{}\"])",
                                f.display(),
                                db.display()
                            )
                            .into());
                        }
                    }
                    format!("{} is readable", p.display())
                }
                DirectoryLocation::Volume { name: v, .. } => {
                    let users = engine()?.using_volume(v).await.map_err(|e| e.to_string())?;
                    if users.is_empty() {
                        return Err(format!(
                            "no container uses volume {v}: kompose-dr reads it through a helper made from the image of one that does"
                        )
                        .into());
                    }
                    format!(
                        "volume {v}, used by {}",
                        users
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            };
            if !d.stop.is_empty() {
                let engine = engine()?;
                for c in &d.stop {
                    let info = engine.inspect(&c.name).await.map_err(|e| e.to_string())?;
                    what.push_str(&format!("; stop {} ({})", c.name, info.state));
                }
            }
            Ok(what)
        }
        .await;
        checks.push(check(name, found));
    }
}

/// The engine, and every container the configuration names.
async fn containers(config: &Config, checks: &mut Vec<Check>) {
    use crate::engine::Engine;
    let named: Vec<(&str, &crate::model::config::ContainerRef)> = [
        (
            "postgres",
            config.postgres.as_ref().and_then(|p| p.container.as_ref()),
        ),
        (
            "redis",
            config.redis.as_ref().and_then(|r| r.container.as_ref()),
        ),
        (
            "mqtt",
            config.mqtt.as_ref().and_then(|m| m.container.as_ref()),
        ),
    ]
    .into_iter()
    .filter_map(|(s, c)| Some((s, c?)))
    .collect();
    let docker_scratch = config.scratch.runtime == crate::model::config::ScratchRuntimeKind::Docker;
    if named.is_empty() && !docker_scratch {
        return;
    }
    let engine = match Engine::connect(config.docker.host.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            checks.push(check("container engine", Err(e.to_string())));
            return;
        }
    };
    match engine.version().await {
        Ok(v) => checks.push(check(
            "container engine",
            Verdict::Ok(format!(
                "{} answers (engine {v}); access to it is root-equivalent",
                engine.endpoint()
            )),
        )),
        Err(e) => {
            checks.push(check("container engine", Err(e.to_string())));
            return;
        }
    }
    for (section, c) in named {
        let name = format!("{section}: container {}", c.name);
        let info = match engine.inspect(&c.name).await {
            Ok(i) => i,
            Err(e) => {
                checks.push(check(name, Err(e.to_string())));
                continue;
            }
        };
        let described = format!("image {}, {}", info.image, info.state);
        if !info.running {
            checks.push(check(
                name,
                Err(format!("{described}: start it (docker start {})", c.name)),
            ));
            continue;
        }
        let server = match section {
            "postgres" => postgres_version(config).await,
            "redis" => redis_version(config).await,
            _ => match crate::events::mqtt::container_address(c).await {
                Ok(addr) => Ok(format!("reached at its address {addr}")),
                Err(e) => Err(e.to_string().into()),
            },
        };
        checks.push(check(
            name,
            server
                .map(|v| format!("{described}, {v}"))
                .map_err(|e| format!("{described}: {e}")),
        ));
    }
}

async fn postgres_version(config: &Config) -> Verdict {
    let pg = config.postgres.as_ref().expect("a postgres container");
    let pg = crate::clients::postgres::resolve(pg)
        .await
        .map_err(|e| e.to_string())?;
    let client = crate::clients::postgres::connect(&pg, &pg.endpoint.maintenance_db)
        .await
        .map_err(|e| e.to_string())?;
    let v = crate::clients::postgres::server_version(&client)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "PostgreSQL {} answers as `{}`",
        v.text, pg.endpoint.user
    ))
}

async fn redis_version(config: &Config) -> Verdict {
    let r = config.redis.as_ref().expect("a redis container");
    let mut con = crate::clients::redis::connect(r)
        .await
        .map_err(|e| e.to_string())?;
    let info = crate::clients::redis::info(&mut con, "server")
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "Redis {} answers",
        info.get("redis_version").map(String::as_str).unwrap_or("?")
    ))
}

/// Which scratch runtime verify and drills use, and why; for the process
/// runtime, that its server binaries (of the server's major version, when
/// known) are installed and the `[scratch] user` exists.
fn scratch_runtime(config: &Config, server_major: Option<u32>, checks: &mut Vec<Check>) {
    if config.scratch.runtime == crate::model::config::ScratchRuntimeKind::Process {
        process_runtime(config, server_major, checks);
    }
    use crate::model::config::ScratchRuntimeKind;
    let message = match config.scratch.runtime {
        ScratchRuntimeKind::Docker => {
            let image = |configured: &Option<String>,
                         c: Option<&crate::model::config::ContainerRef>| {
                match (configured, c) {
                    (Some(i), _) => format!("image {i} ([scratch])"),
                    (None, Some(c)) => format!("the image of container {}", c.name),
                    (None, None) => "no image: set [scratch] image".into(),
                }
            };
            format!(
                "docker ([scratch] runtime = \"docker\"): throw-away containers with no network; PostgreSQL from {}, Redis from {}",
                image(
                    &config.scratch.image,
                    config.postgres.as_ref().and_then(|p| p.container.as_ref())
                ),
                image(
                    &config.scratch.redis_image,
                    config.redis.as_ref().and_then(|r| r.container.as_ref())
                ),
            )
        }
        ScratchRuntimeKind::Process => format!(
            "process ([scratch] runtime is \"process\" or unset): local server binaries from {} run as `{}`",
            config.scratch.postgres_bin, config.scratch.user
        ),
    };
    checks.push(check("scratch runtime", Verdict::Ok(message)));
}

/// `scratch: …`: the local binaries and the user the process runtime needs.
fn process_runtime(config: &Config, server_major: Option<u32>, checks: &mut Vec<Check>) {
    let file = config.path.display();
    // Without the server's version (postgres: connect failed) there is
    // nothing to check the binaries against: that failure says enough.
    if let (Some(_), Some(major)) = (&config.postgres, server_major) {
        let dir = config
            .scratch
            .postgres_bin
            .replace("{major}", &major.to_string());
        let missing: Vec<&str> = ["initdb", "pg_ctl", "pg_restore", "psql"]
            .into_iter()
            .filter(|p| !std::path::Path::new(&dir).join(p).is_file())
            .collect();
        let result = if missing.is_empty() {
            Ok(format!("initdb, pg_ctl, pg_restore and psql in {dir}"))
        } else {
            Err(format!(
                "{} missing in {dir}: verify and drills start a PostgreSQL {major} there; install postgresql-{major} \
                 (apt-get install postgresql-{major}), set [scratch] postgres_bin, or set [scratch] runtime = \"docker\" in {file}",
                missing.join(", ")
            ))
        };
        checks.push(check("scratch: postgres binaries", result));
    }
    if config.redis.is_some() {
        let found = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .find(|c| c.is_file())
        });
        checks.push(check(
            "scratch: redis-server",
            match found {
                Some(p) => Ok(format!("{}", p.display())),
                None => Err(format!(
                    "no redis-server on PATH: verify and drills load the Redis archive into one; \
                     install redis-server (apt-get install redis-server) or set [scratch] runtime = \"docker\" in {file}"
                )),
            },
        ));
    }
    if nix::unistd::geteuid().is_root() {
        let user = &config.scratch.user;
        checks.push(check(
            "scratch: user",
            match nix::unistd::User::from_name(user) {
                Ok(Some(u)) => Ok(format!("`{user}` (uid {}) runs the scratch servers", u.uid)),
                _ => Err(format!(
                    "no user `{user}` on this host: PostgreSQL refuses to run as root, so scratch servers run as [scratch] user; \
                     create it (useradd --system {user}) or set [scratch] user in {file}"
                )),
            },
        ));
    }
}

/// Whether snapshots get signed here and can be checked.
fn signing(config: &Config, checks: &mut Vec<Check>) {
    let Some(trust) = config.repositories.first().map(|r| &r.trust) else {
        return;
    };
    let result = match (&trust.signing_key, &trust.public_key) {
        (Some(_), Some(_)) => Ok("snapshots are signed with [signing] key and checked against public_key".to_owned()),
        (None, Some(_)) => Ok(
            "public_key set: snapshots are checked (no signing key: this host cannot back up, which is right for a restore-only host)"
                .to_owned(),
        ),
        (_, None) => Err(
            "no [signing] public_key: every reader refuses snapshots it cannot check; paste the public_key line `kompose-dr init --generate-key` printed"
                .to_owned(),
        ),
    };
    checks.push(check("signing", result));
}
