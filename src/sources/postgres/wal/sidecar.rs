//! pg_receivewal in a sidecar container, for a server that runs in a
//! container (`postgres.container`) with no published port and a host
//! with no PostgreSQL programs.
//!
//! The sidecar is made from the server container's own image (so the
//! versions match; `[scratch] image` overrides), joins the server's
//! network namespace (`container:<id>`: the server is on its loopback),
//! has the host's spool bind-mounted at the same path and runs as this
//! process's uid:gid, so the files pg_receivewal writes are ours. It only
//! keeps alive; pg_receivewal is exec'd in it through
//! [`Launch::Container`], which gives the same [`crate::process::Running`]
//! as a local child.
//!
//! The password never appears in the container's configuration (what
//! `docker inspect` shows): it goes into a 0600 pgpass file in a private
//! directory beside the spool, mounted read-only, named by `PGPASSFILE`
//! in the exec's environment only.
//!
//! The sidecar carries [`LABEL`] = the spool's path and the owner label;
//! it is removed when its guard drops, and one left by a killed archiver
//! is removed by the next, once it holds the spool's lock.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clients::launch::Launch;
use crate::clients::postgres::parse_tool_major;
use crate::engine::scratch::{ScratchContainer, ScratchSpec};
use crate::engine::{Engine, ExecSpec};
use crate::model::config::{ContainerRef, PostgresConfig};
use crate::model::secret::Secret;
use crate::sources::SourceError;

/// The label of a WAL sidecar; its value is the spool's path.
pub const LABEL: &str = "io.kompose-dr.wal-sidecar";

/// The sidecar's main process: it only keeps the container alive.
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// A running sidecar; removed (and its pgpass file with it) when dropped.
pub struct Sidecar {
    /// Where pg_receivewal is exec'd.
    target: ContainerRef,
    /// The pgpass file, if a password is configured.
    pgpass: Option<PathBuf>,
    /// `pg_receivewal --version` in it.
    pub version: String,
    /// The image it was made from.
    pub image: String,
    /// The container; its guard removes it.
    _container: ScratchContainer,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(p) = &self.pgpass {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The spool's path as the engine takes it in a bind (`SRC:DST`): UTF-8,
/// without `:` or `,`.
fn bind_path(path: &Path) -> Result<&str, SourceError> {
    path.to_str()
        .filter(|s| !s.contains([':', ',']))
        .ok_or_else(|| {
            SourceError::Data(format!(
                "the WAL spool {} cannot be mounted into the sidecar container: set [postgres.wal] spool_dir \
                 to a UTF-8 path without `:` or `,`",
                path.display()
            ))
        })
}

/// The private directory beside the spool holding the pgpass file.
pub fn auth_dir(spool: &Path) -> PathBuf {
    let mut s = spool.as_os_str().to_owned();
    s.push(".auth");
    PathBuf::from(s)
}

/// One pgpass field: `\` and `:` escaped.
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// Writes `dir/pgpass` (dir 0700, file 0600) for `user` with `password`.
fn write_pgpass(dir: &Path, user: &str, password: &Secret) -> Result<PathBuf, SourceError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    super::make_private_dirs(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(SourceError::io(format!("cannot create {}", dir.display())))?;
    let path = dir.join("pgpass");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(
            f,
            "*:*:*:{}:{}",
            pgpass_field(user),
            pgpass_field(password.expose())
        )?;
        f.sync_all()
    };
    write().map_err(SourceError::io(format!("cannot write {}", path.display())))?;
    Ok(path)
}

/// Removes the sidecars a killed archiver of `spool` left behind. Only
/// call it while holding the spool's lock.
pub async fn sweep(container: &ContainerRef, spool: &Path) -> Result<usize, SourceError> {
    let engine = Engine::connect(container.engine.as_deref())?;
    Ok(engine.remove_labelled(LABEL, bind_path(spool)?).await?)
}

/// What a sidecar is made for.
pub struct Want<'a> {
    /// The server's configuration (its container, user, password).
    pub cfg: &'a PostgresConfig,
    /// The image, if not the server container's (`[scratch] image`).
    pub image: Option<&'a str>,
    /// The spool, bind-mounted at the same path.
    pub spool: &'a Path,
    /// The server's major version: pg_receivewal must be as new.
    pub server_major: u32,
}

/// Starts a sidecar for the server of `want.cfg` and checks that it has a
/// pg_receivewal as new as the server.
pub async fn start(want: Want<'_>) -> Result<Sidecar, SourceError> {
    let cfg = want.cfg;
    let Some(server) = &cfg.container else {
        return Err(SourceError::Tool(
            "a WAL sidecar needs postgres.container".into(),
        ));
    };
    let engine = Engine::connect(server.engine.as_deref())?;
    let info = engine.running(&server.name).await?;
    let image = want
        .image
        .map_or_else(|| info.image_id.clone(), str::to_owned);
    let spool = bind_path(want.spool)?;
    let pgpass = match &cfg.password {
        Some(pw) => Some(write_pgpass(&auth_dir(want.spool), &cfg.endpoint.user, pw)?),
        None => None,
    };
    let mut binds = vec![format!("{spool}:{spool}")];
    if pgpass.is_some() {
        let dir = auth_dir(want.spool);
        let dir = bind_path(&dir)?;
        binds.push(format!("{dir}:{dir}:ro"));
    }
    let uid = nix::unistd::Uid::effective();
    let gid = nix::unistd::Gid::effective();
    let spec = ScratchSpec {
        image: image.clone(),
        name: "kompose-dr-wal".into(),
        entrypoint: Some(vec!["sh".into(), "-c".into(), KEEP_ALIVE.into()]),
        cmd: Some(Vec::new()),
        user: Some(format!("{uid}:{gid}")),
        binds,
        network_mode: Some(format!("container:{}", info.id)),
        label: Some((LABEL.to_owned(), spool.to_owned())),
        ..ScratchSpec::default()
    };
    let container = engine.run_scratch(spec).await.map_err(|e| {
        if let Some(p) = &pgpass {
            let _ = std::fs::remove_file(p);
        }
        SourceError::Tool(format!(
            "cannot start the WAL sidecar from image `{image}` beside container `{}`: {e}",
            server.name
        ))
    })?;
    // Made before the check, so that a failed check removes the container
    // and the pgpass file alike.
    let mut sidecar = Sidecar {
        target: ContainerRef {
            name: container.id.clone(),
            engine: server.engine.clone(),
        },
        pgpass,
        version: String::new(),
        image,
        _container: container,
    };
    let version = engine
        .output(
            &sidecar.target.name,
            ExecSpec::new(["pg_receivewal", "--version"]),
        )
        .await
        .map_err(|e| no_tool(&sidecar.image, want.server_major, &e.to_string()))?;
    let version = version.lines().next().unwrap_or_default().trim().to_owned();
    if parse_tool_major(&version).is_some_and(|m| m < want.server_major) {
        return Err(no_tool(&sidecar.image, want.server_major, &version));
    }
    tracing::info!(container = %sidecar.target.name, image = %sidecar.image, version = %version, "WAL sidecar started");
    sidecar.version = version;
    Ok(sidecar)
}

/// The image has no usable pg_receivewal.
fn no_tool(image: &str, major: u32, what: &str) -> SourceError {
    SourceError::Tool(format!(
        "image `{image}` has no pg_receivewal of PostgreSQL {major} or newer ({}): the WAL sidecar runs the \
         server container's image; set [scratch] image to an image with PostgreSQL {major}'s client programs",
        what.trim()
    ))
}

impl Sidecar {
    /// `program` (pg_receivewal) in the sidecar, connecting to the server
    /// on the shared loopback as the configured user, to `database`.
    pub fn launch(&self, cfg: &PostgresConfig, program: &str, database: &str) -> Launch {
        let password = self
            .pgpass
            .as_ref()
            .map(|p| ("PGPASSFILE", p.to_string_lossy().into_owned()));
        crate::clients::postgres::beside::on_loopback(
            &self.target,
            cfg,
            program,
            database,
            password,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_fields_are_escaped() {
        assert_eq!(pgpass_field(r"a:b\c"), r"a\:b\\c");
    }

    #[test]
    fn the_pgpass_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = auth_dir(&d.path().join("123"));
        let p = write_pgpass(&dir, "kompose", &Secret::new("p:w")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&p), 0o600);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "*:*:*:kompose:p\\:w\n"
        );
    }

    #[test]
    fn a_spool_path_the_engine_cannot_bind_is_refused() {
        assert!(bind_path(Path::new("/var/lib/kompose-dr/wal/1")).is_ok());
        assert!(bind_path(Path::new("/var/lib/a:b/1")).is_err());
    }
}
