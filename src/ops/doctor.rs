//! `doctor`: prove the configuration works before the night it is needed.
//!
//! For every repository it checks, in order, that the store answers and
//! the credentials are accepted, that the repository is initialised, and
//! that a write, a read-back and a delete of a probe object succeed. It
//! also checks that the identity file (needed only to restore) is readable
//! when one is configured. Every failure carries the storage layer's
//! message, which says what to fix (unknown key, wrong secret, missing
//! bucket, DNS, TLS, clock skew, permissions).
//!
//! Where sources or the broker are named by container, it asks the engine
//! for each one — its image, state and server version, or the close
//! matches of a name it does not know — and says which scratch runtime
//! verify and drills will use, and why.

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

/// Runs every check; `only` limits them to one repository.
pub async fn run(config: &Config, only: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    for rc in config
        .repositories
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
    {
        let repo = Repository::open(rc);
        repository(&repo, &mut checks).await;
    }
    if only.is_none() {
        containers(config, &mut checks).await;
        directories(config, &mut checks).await;
        scratch_runtime(config, &mut checks);
        signing(config, &mut checks);
        match config
            .encryption
            .as_ref()
            .and_then(|e| e.identity_file.as_ref())
        {
            Some(p) => checks.push(match crate::pipeline::load_identities(config) {
                Ok(_) => Check {
                    name: "identity".into(),
                    ok: true,
                    message: format!(
                        "{} is readable (restore, verify and drills can decrypt)",
                        p.display()
                    ),
                },
                Err(e) => Check {
                    name: "identity".into(),
                    ok: false,
                    message: e.to_string(),
                },
            }),
            None => checks.push(Check {
                name: "identity".into(),
                ok: true,
                message:
                    "no identity_file configured: backups work; restore, verify and drills need one"
                        .into(),
            }),
        }
    }
    checks
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

fn check(name: impl Into<String>, result: Result<String, String>) -> Check {
    match result {
        Ok(message) => Check {
            name: name.into(),
            ok: true,
            message,
        },
        Err(message) => Check {
            name: name.into(),
            ok: false,
            message,
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
        let found: Result<String, String> = async {
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
                            ));
                        }
                    }
                    format!("{} is readable", p.display())
                }
                DirectoryLocation::Volume { name: v, .. } => {
                    let users = engine()?.using_volume(v).await.map_err(|e| e.to_string())?;
                    if users.is_empty() {
                        return Err(format!(
                            "no container uses volume {v}: kompose-dr reads it through a helper made from the image of one that does"
                        ));
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
            Ok(format!(
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
                Err(e) => Err(e.to_string()),
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

async fn postgres_version(config: &Config) -> Result<String, String> {
    let pg = config.postgres.as_ref().expect("a postgres container");
    let pg = crate::sources::postgres::resolve(pg)
        .await
        .map_err(|e| e.to_string())?;
    let client = crate::sources::postgres::connect(&pg, &pg.endpoint.maintenance_db)
        .await
        .map_err(|e| e.to_string())?;
    let v = crate::sources::postgres::server_version(&client)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "PostgreSQL {} answers as `{}`",
        v.text, pg.endpoint.user
    ))
}

async fn redis_version(config: &Config) -> Result<String, String> {
    let r = config.redis.as_ref().expect("a redis container");
    let mut con = crate::sources::redis::connect(r)
        .await
        .map_err(|e| e.to_string())?;
    let info = crate::sources::redis::info(&mut con, "server").await?;
    Ok(format!(
        "Redis {} answers",
        info.get("redis_version").map(String::as_str).unwrap_or("?")
    ))
}

/// Which scratch runtime verify and drills use, and why.
fn scratch_runtime(config: &Config, checks: &mut Vec<Check>) {
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
    checks.push(check("scratch runtime", Ok(message)));
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
