//! The `docker` scratch runtime: throw-away containers made from the
//! production containers' own images (`[scratch] image` and `redis_image`
//! override), with no network, data on tmpfs, a kompose-dr label, removed
//! when their guard drops and swept at the next start if a kill -9 came
//! first ([`crate::engine::scratch`]).
//!
//! Scratch servers are reached like production containers: client
//! connections over a byte bridge exec'd inside them, pg_restore and psql
//! exec'd inside them — so the tools always match the server.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ScratchError, ScratchPostgres, ScratchRedis, ScratchRuntime};
use crate::engine::scratch::{ScratchContainer, ScratchSpec};
use crate::engine::{Engine, EngineError};
use crate::model::config::{
    Config, ContainerRef, DatabaseSelection, PgEndpoint, PostgresConfig, RedisConfig,
};
use crate::model::secret::Secret;

/// The tmpfs every scratch container keeps its data in: a path no image
/// has, so the engine does not copy an image directory's owner and mode
/// onto it and `mode=1777` holds for whatever uid the server runs as.
const SCRATCH_DATA: &str = "/kompose-dr-scratch";

/// The scratch Redis' configuration file, in [`SCRATCH_DATA`].
const CONF: &str = ".kdr-redis.conf";

pub mod recovery;

/// Scratch servers in containers.
pub struct DockerRuntime {
    engine_host: Option<String>,
    postgres_image: Option<String>,
    redis_image: Option<String>,
    postgres_container: Option<ContainerRef>,
    redis_container: Option<ContainerRef>,
    swept: tokio::sync::OnceCell<()>,
}

impl DockerRuntime {
    /// The runtime `config` describes.
    pub fn new(config: &Config) -> DockerRuntime {
        DockerRuntime {
            engine_host: config.scratch.engine.clone(),
            postgres_image: config.scratch.image.clone(),
            redis_image: config.scratch.redis_image.clone(),
            postgres_container: config.postgres.as_ref().and_then(|p| p.container.clone()),
            redis_container: config.redis.as_ref().and_then(|r| r.container.clone()),
            swept: tokio::sync::OnceCell::new(),
        }
    }

    /// The runtime a point-in-time recovery uses: `[scratch]`, and the
    /// production PostgreSQL container for its image.
    pub fn for_recovery(
        scratch: &crate::model::config::ScratchConfig,
        postgres_container: Option<&ContainerRef>,
    ) -> DockerRuntime {
        DockerRuntime {
            engine_host: scratch.engine.clone(),
            postgres_image: scratch.image.clone(),
            redis_image: scratch.redis_image.clone(),
            postgres_container: postgres_container.cloned(),
            redis_container: None,
            swept: tokio::sync::OnceCell::new(),
        }
    }

    /// The engine, after removing what killed runs left behind.
    async fn engine(&self) -> Result<Engine, ScratchError> {
        let engine = Engine::connect(self.engine_host.as_deref())?;
        self.swept
            .get_or_try_init(|| async {
                let n = engine.sweep().await?;
                if n > 0 {
                    tracing::info!(
                        removed = n,
                        "removed scratch containers left by an earlier run"
                    );
                }
                Ok::<_, EngineError>(())
            })
            .await?;
        Ok(engine)
    }

    /// The image to use: configured, else the production container's own.
    async fn image(
        &self,
        engine: &Engine,
        configured: &Option<String>,
        production: &Option<ContainerRef>,
        what: &str,
        key: &str,
    ) -> Result<String, ScratchError> {
        if let Some(image) = configured {
            return Ok(image.clone());
        }
        let Some(c) = production else {
            return Err(ScratchError::User(format!(
                "the docker scratch runtime needs an image for {what}: set [scratch] {key}, \
                 or name the production container ([{what}] container) to use its image"
            )));
        };
        Ok(engine.inspect(&c.name).await?.image_id)
    }
}

/// A scratch PostgreSQL container.
pub struct DockerPostgres {
    container: ScratchContainer,
    password: Secret,
    major: u32,
}

impl ScratchPostgres for DockerPostgres {
    fn endpoint(&self) -> PgEndpoint {
        PgEndpoint {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            maintenance_db: "postgres".into(),
        }
    }

    fn major(&self) -> u32 {
        self.major
    }

    fn connection(&self) -> PostgresConfig {
        container_connection(
            &self.container,
            self.endpoint(),
            Some(self.password.clone()),
        )
    }
}

/// How a scratch PostgreSQL container is reached: through the engine, its
/// client tools exec'd inside it, as `endpoint` on its own loopback.
fn container_connection(
    container: &ScratchContainer,
    endpoint: PgEndpoint,
    password: Option<Secret>,
) -> PostgresConfig {
    PostgresConfig {
        endpoint,
        password,
        databases: DatabaseSelection::All,
        globals: true,
        container: Some(ContainerRef {
            name: container.name.clone(),
            engine: Some(container.engine().endpoint().to_owned()),
        }),
        credentials_from_container: false,
        user_configured: true,
        bin_dir: None,
        jobs: std::num::NonZeroUsize::MIN,
        wal: None,
        lock_wait: Duration::from_secs(300),
    }
}

/// A scratch Redis container, with a password.
pub struct DockerRedis {
    container: ScratchContainer,
    password: Secret,
}

impl ScratchRedis for DockerRedis {
    fn connection(&self) -> RedisConfig {
        RedisConfig {
            host: "127.0.0.1".into(),
            port: 6379,
            username: None,
            password: Some(self.password.clone()),
            data_dir: None,
            container: Some(ContainerRef {
                name: self.container.name.clone(),
                engine: Some(self.container.engine().endpoint().to_owned()),
            }),
        }
    }
}

#[async_trait]
impl ScratchRuntime for DockerRuntime {
    async fn postgres(&self, major: u32) -> Result<Box<dyn ScratchPostgres>, ScratchError> {
        let engine = self.engine().await?;
        let image = self
            .image(
                &engine,
                &self.postgres_image,
                &self.postgres_container,
                "postgres",
                "image",
            )
            .await?;
        let password = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let container = engine
            .run_scratch(ScratchSpec {
                image,
                name: "kompose-dr-scratch-postgres".into(),
                env: vec![
                    ("POSTGRES_PASSWORD".into(), password.expose().to_owned()),
                    ("POSTGRES_USER".into(), "postgres".into()),
                    // A directory the server creates inside the tmpfs, so
                    // that it owns it whatever its uid.
                    ("PGDATA".into(), format!("{SCRATCH_DATA}/pgdata")),
                ],
                tmpfs: vec![(SCRATCH_DATA.into(), "rw,nosuid,nodev,mode=1777".into())],
                cmd: Some(
                    ["postgres", "-c", "fsync=off", "-c", "full_page_writes=off"]
                        .map(String::from)
                        .to_vec(),
                ),
                ..ScratchSpec::default()
            })
            .await?;
        let scratch = DockerPostgres {
            container,
            password,
            major,
        };
        let cfg = scratch.connection();
        let start = Instant::now();
        let mut last;
        loop {
            match crate::clients::postgres::connect(&cfg, "postgres").await {
                Ok(_) => break,
                Err(e) => last = e.to_string(),
            }
            let running = engine
                .inspect(&scratch.container.id)
                .await
                .is_ok_and(|c| c.running);
            if !running || start.elapsed() > Duration::from_secs(120) {
                return Err(ScratchError::DidNotStart(format!(
                    "the scratch PostgreSQL container {} did not start{}: {last}; its log: {}",
                    scratch.container.name,
                    if running { "" } else { " (it exited)" },
                    engine.log_tail(&scratch.container.id, 5).await
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Box::new(scratch))
    }

    async fn redis(
        &self,
        data_dir: &Path,
        aof: bool,
    ) -> Result<Box<dyn ScratchRedis>, ScratchError> {
        let engine = self.engine().await?;
        let image = self
            .image(
                &engine,
                &self.redis_image,
                &self.redis_container,
                "redis",
                "redis_image",
            )
            .await?;
        // The server waits for its files: they are copied into the tmpfs
        // once it is mounted, with its configuration (which alone holds the
        // password: not the command line, not the environment), then a
        // marker lets it start.
        let script = format!(
            "while [ ! -e {SCRATCH_DATA}/.kdr-go ]; do sleep 0.1; done; rm -f {SCRATCH_DATA}/.kdr-go; \
             exec redis-server {SCRATCH_DATA}/{CONF}"
        );
        let password = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let conf = format!(
            "dir {SCRATCH_DATA}\nappendonly {}\nsave \"\"\nbind 127.0.0.1\nport 6379\n\
             protected-mode yes\nrequirepass {}\n",
            if aof { "yes" } else { "no" },
            password.expose()
        );
        let container = engine
            .run_scratch(ScratchSpec {
                image,
                name: "kompose-dr-scratch-redis".into(),
                entrypoint: Some(vec!["sh".into(), "-c".into()]),
                cmd: Some(vec![script]),
                tmpfs: vec![(SCRATCH_DATA.into(), "rw,nosuid,nodev,mode=1777".into())],
                user: Some("redis".into()),
                ..ScratchSpec::default()
            })
            .await?;
        engine
            .untar(
                &container.id,
                SCRATCH_DATA,
                scratch_tar(data_dir.to_owned(), conf.into_bytes()),
            )
            .await?;
        let redis = DockerRedis {
            container,
            password,
        };
        let cfg = redis.connection();
        let start = Instant::now();
        while !super::process::loaded(&cfg).await {
            let running = engine
                .inspect(&redis.container.id)
                .await
                .is_ok_and(|c| c.running);
            if !running || start.elapsed() > Duration::from_secs(120) {
                return Err(ScratchError::DidNotStart(format!(
                    "the scratch Redis container {} did not load the restored files{}; its log: {}",
                    redis.container.name,
                    if running { "" } else { " (it exited)" },
                    engine.log_tail(&redis.container.id, 5).await
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Box::new(redis))
    }

    fn tempdir(&self) -> Result<tempfile::TempDir, ScratchError> {
        super::process::private_dir(None)
    }
}

/// The files of `dir`, readable and writable by any user (the scratch
/// server's uid is the image's), the server's configuration `conf` (0600:
/// the container's user unpacks it and owns it), and the marker that
/// starts the server, as a tar stream.
fn scratch_tar(
    dir: std::path::PathBuf,
    conf: Vec<u8>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    crate::engine::tar_stream(move |b| {
        for entry in walk(&dir)? {
            let rel = entry.strip_prefix(&dir).expect("under dir");
            let meta = std::fs::symlink_metadata(&entry)?;
            let mut h = tar::Header::new_gnu();
            if meta.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_data(&mut h, rel, std::io::empty())?;
            } else if meta.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o666);
                h.set_size(meta.len());
                b.append_data(&mut h, rel, std::fs::File::open(&entry)?)?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(conf.len() as u64);
        b.append_data(&mut h, CONF, &conf[..])?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o666);
        h.set_size(0);
        b.append_data(&mut h, ".kdr-go", std::io::empty())
    })
}

/// Every entry under `dir` (not following symlinks), parents first.
fn walk(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}
