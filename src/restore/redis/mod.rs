//! Restoring Redis: the archived `appendonlydir/` or `dump.rdb` into the
//! configured `data_dir` (or `--to DIR`).
//!
//! Redis rewrites its files when it shuts down, so a restore into the data
//! directory of a Redis that is running would be undone by it. The guard
//! fails closed: Redis counts as stopped only when every address of its
//! configured host definitely refuses the connection (nothing listens
//! there); an answer of any kind means it runs, and a host name that does
//! not resolve, a timeout or any other error means the state cannot be
//! told — each refuses the restore with the steps to take. The guard runs
//! before the plan is shown and again right before the files are moved
//! into place, so a Redis started in between (during the question, or
//! while the archive was unpacked) is caught too.
//!
//! The tar is unpacked into a staging directory inside the target (same
//! file system), keeping the archived names, modes and owners; only when
//! the archive checked out are the files moved into place. With
//! `--replace`, what was there is kept in `.kompose-dr-replaced-<time>/`.

pub mod container;
pub mod fresh;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::stream::copy_archive;
use super::{ReadyItem, RestoreContext, RestoreError, Target, open_stored, progress_bar};
use crate::model::manifest::ArtifactKind;
use crate::pipeline::tar::{EntryPolicy, Owners, unpack_checked};
use crate::restore::plan::Choice;

fn target_dir(ctx: &RestoreContext<'_>) -> Result<PathBuf, RestoreError> {
    if let Some(to) = &ctx.options.to {
        return Ok(to.clone());
    }
    ctx.targets
        .redis
        .as_ref()
        .and_then(|r| r.data_dir.clone())
        .ok_or_else(|| RestoreError::NoRedisDir {
            config: ctx.targets.config_path.clone(),
        })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".kompose-dr-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Redis whose data directory `dir` is, when the restore writes into
/// it (no `--to`, or `--to` naming the configured data directory): the one
/// that must not be running.
fn guarded<'a>(
    ctx: &'a RestoreContext<'_>,
    dir: &Path,
) -> Option<&'a crate::model::config::RedisConfig> {
    let redis = ctx.targets.redis.as_ref()?;
    let is_configured_dir = redis.data_dir.as_deref() == Some(dir);
    (ctx.options.to.is_none() || is_configured_dir).then_some(redis)
}

/// How long the guard waits for a host name to resolve, and for each
/// address to accept or refuse a connection.
const GUARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Refuses unless Redis is definitely stopped: every address `host:port`
/// resolves to refuses a TCP connection (or, with `[redis] container`, the
/// engine says the container is not running). Anything else — an answer, a
/// name that does not resolve, a timeout, another error — refuses, saying
/// what to do about `dir`.
pub async fn ensure_stopped(
    redis: &crate::model::config::RedisConfig,
    dir: &Path,
) -> Result<(), RestoreError> {
    let target = match &redis.container {
        Some(c) => format!("in container {}", c.name),
        None => format!("at {}:{}", redis.host, redis.port),
    };
    let undecided = |why: String| {
        RestoreError::Refused(format!(
            "cannot tell whether Redis {target} is stopped ({why}): nothing was changed. \
             Redis rewrites its files when it shuts down, so a restore into {} needs it stopped. \
             Make [redis] url name the Redis that uses this directory and make sure it is stopped \
             (docker stop core-redis), then run this restore again; or restore with --to ANOTHER_DIR \
             and move the files into place yourself while Redis is stopped",
            dir.display()
        ))
    };
    if let Some(c) = &redis.container {
        // Redis runs in its container: the engine says whether it runs.
        let engine = crate::engine::Engine::connect(c.engine.as_deref())
            .map_err(|e| undecided(e.to_string()))?;
        return match engine.inspect(&c.name).await {
            Ok(info) if !info.running => Ok(()),
            Ok(_) => Err(RestoreError::Refused(format!(
                "container {} is running Redis: it would overwrite the restored files in {} when it shuts down; \
                 nothing was changed. Stop it (docker stop {}), or restore without --to: kompose-dr then stops and starts it itself",
                c.name,
                dir.display(),
                c.name
            ))),
            Err(e) => Err(undecided(e.to_string())),
        };
    }
    let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
        GUARD_TIMEOUT,
        tokio::net::lookup_host((redis.host.as_str(), redis.port)),
    )
    .await
    {
        Err(_) => {
            return Err(undecided(format!(
                "resolving {} took longer than {}s",
                redis.host,
                GUARD_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(undecided(format!("{} does not resolve: {e}", redis.host))),
        Ok(Ok(a)) => a.collect(),
    };
    if addrs.is_empty() {
        return Err(undecided(format!("{} resolves to no address", redis.host)));
    }
    for addr in addrs {
        match tokio::time::timeout(GUARD_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Ok(_)) => {
                return Err(RestoreError::Refused(format!(
                    "Redis is running at {addr}: it would overwrite the restored files when it shuts down; nothing was changed. \
                     Stop it (docker stop core-redis), run this restore again, then start it (docker start core-redis); \
                     or set [redis] container = \"core-redis\" and kompose-dr stops and starts it itself"
                )));
            }
            Ok(Err(e)) => return Err(undecided(format!("connecting to {addr}: {e}"))),
            Err(_) => {
                return Err(undecided(format!(
                    "{addr} neither answered nor refused within {}s",
                    GUARD_TIMEOUT.as_secs()
                )));
            }
        }
    }
    Ok(())
}

/// Checks the target: Redis must be stopped (see [`ensure_stopped`]), and
/// a non-empty directory needs `--replace`.
pub async fn preflight(
    ctx: &RestoreContext<'_>,
    _c: &Choice,
) -> Result<(Target, bool), RestoreError> {
    if let Some(redis) = &ctx.targets.redis
        && let Some(c) = &redis.container
        && ctx.options.to.is_none()
    {
        return container::preflight(ctx, redis, c).await;
    }
    let dir = target_dir(ctx)?;
    if let Some(redis) = guarded(ctx, &dir) {
        ensure_stopped(redis, &dir).await?;
    }
    if dir.exists() && !dir.is_dir() {
        return Err(RestoreError::Refused(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    // What a fresh Redis writes (an empty appendonlydir/, an empty
    // dump.rdb) is no data: a fresh stack restores without --replace.
    let listed = fresh::local_entries(&dir)
        .map_err(RestoreError::io(format!("cannot read {}", dir.display())))?;
    let occupied = !fresh::is_fresh(&listed);
    if occupied && !ctx.options.replace {
        return Err(RestoreError::Refused(format!(
            "{} is not empty (it holds more than the empty files a fresh Redis writes): nothing was changed. Restore elsewhere with --to DIR, or replace its contents with --replace \
             (they are kept in {}/.kompose-dr-replaced-<time>/)",
            dir.display(),
            dir.display()
        )));
    }
    Ok((Target::RedisDir { path: dir }, occupied))
}

/// Restores the Redis files into `dir`: unpacked into a staging directory,
/// checked, then moved into place.
pub async fn restore(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    dir: &Path,
) -> Result<(u64, String), RestoreError> {
    if !dir.exists() {
        crate::storage::local::create_dir_private(dir)
            .map_err(RestoreError::io(format!("cannot create {}", dir.display())))?;
    }
    let staging = dir.join(format!(".kompose-dr-restore-{:08x}", rand::random::<u32>()));
    std::fs::create_dir(&staging).map_err(RestoreError::io(format!(
        "cannot create {}",
        staging.display()
    )))?;
    let expected = match item.choice.artifact.kind {
        ArtifactKind::RedisAof => "appendonlydir",
        _ => "dump.rdb",
    };
    let unpacked = match unpack(ctx, item, &staging).await {
        Ok(bytes) => check_staged(&staging, expected).map(|restored| (bytes, restored)),
        Err(e) => Err(e),
    };
    // Again right before the move: a Redis started since the plan was
    // checked (during the question, or the unpacking) would undo it.
    let unpacked = match (unpacked, guarded(ctx, dir)) {
        (Ok(u), Some(redis)) => ensure_stopped(redis, dir).await.map(|()| u),
        (u, _) => u,
    };
    let (bytes, restored) = match unpacked {
        Ok(u) => u,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.unchanged(dir.display()));
        }
    };
    let kept = move_into_place(dir, &staging, restored)?;
    let mode = if item.choice.artifact.kind == ArtifactKind::RedisAof {
        "start Redis with appendonly yes"
    } else {
        "start Redis with appendonly no"
    };
    Ok((
        bytes,
        match kept {
            Some(k) => format!(
                "restored {expected} into {}; the previous files are in {}; {mode}",
                dir.display(),
                k.display()
            ),
            None => format!("restored {expected} into {}; {mode}", dir.display()),
        },
    ))
}

/// Unpacks a Redis tar into `staging`, trusting nothing in it
/// ([`unpack_checked`]): only regular files and directories with
/// plain relative names (no `..`, no absolute path, not just `.`; no
/// symlink, hard link or device), permission bits without
/// setuid/setgid/sticky or group/other write, mtimes kept, and the owner of
/// `staging`'s parent (the Redis data directory) rather than the archive's.
pub fn unpack_entries(reader: &mut dyn std::io::Read, staging: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = staging
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.uid(), m.gid()));
    let owners = match owner {
        Some((uid, gid)) if nix::unistd::geteuid().is_root() => Owners::Given(uid, gid),
        _ => Owners::Ours,
    };
    let policy = EntryPolicy {
        symlinks: false,
        skip_root: false,
        unique: false,
        mask: 0o022,
        owners,
        defer_dirs: false,
        place: "the staging directory",
        outside_suffix: "",
    };
    unpack_checked(reader, staging, &policy).map(drop)
}

/// Streams the archive through tar into `staging` ([`unpack_entries`]);
/// returns plaintext bytes.
async fn unpack(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
    staging: &Path,
) -> Result<u64, RestoreError> {
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let st = staging.to_owned();
    let unpacked = tokio::task::spawn_blocking(move || -> Result<u64, RestoreError> {
        let (reader, mut writer) = std::io::pipe().map_err(RestoreError::io("pipe"))?;
        let unpacker = std::thread::spawn(move || -> std::io::Result<()> {
            let mut reader = reader;
            let r = unpack_entries(&mut reader, &st);
            // Read to the end so the writer never sees a broken pipe.
            std::io::copy(&mut reader, &mut std::io::sink())?;
            r
        });
        let copied = copy_archive(stored, &ids, &mut writer);
        drop(writer);
        let unpack = unpacker
            .join()
            .map_err(|_| RestoreError::Failed("tar unpacker panicked".to_owned()))?;
        let bytes = copied?;
        unpack.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            RestoreError::Failed(format!("cannot unpack the Redis archive: {e}{cause}"))
        })?;
        Ok(bytes)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    pb.finish_and_clear();
    unpacked
}

/// What was unpacked into `staging`, which must hold `expected`.
fn check_staged(staging: &Path, expected: &str) -> Result<Vec<PathBuf>, RestoreError> {
    let restored = entries(staging);
    if !restored
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == expected))
    {
        return Err(RestoreError::Failed(format!(
            "the archive holds no {expected}"
        )));
    }
    Ok(restored)
}

/// Moves what `dir` holds aside (returning where to) and the `restored`
/// entries of `staging` into it.
fn move_into_place(
    dir: &Path,
    staging: &Path,
    restored: Vec<PathBuf>,
) -> Result<Option<PathBuf>, RestoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let existing = entries(dir);
    let mut kept = None;
    if !existing.is_empty() {
        let aside = dir.join(format!(".kompose-dr-replaced-{stamp}"));
        std::fs::create_dir(&aside).map_err(RestoreError::io(format!(
            "cannot create {}",
            aside.display()
        )))?;
        for p in existing {
            let to = aside.join(p.file_name().expect("entries have names"));
            std::fs::rename(&p, &to).map_err(|e| {
                RestoreError::Failed(format!(
                    "cannot move {} aside: {e}; the restored files are in {}, the rest of {} is as it was",
                    p.display(),
                    staging.display(),
                    dir.display()
                ))
            })?;
        }
        kept = Some(aside);
    }
    for p in restored {
        let to = dir.join(p.file_name().expect("entries have names"));
        std::fs::rename(&p, &to).map_err(RestoreError::io(format!(
            "cannot move {} into place",
            p.display()
        )))?;
    }
    let _ = std::fs::remove_dir(staging);
    let _ = crate::storage::local::sync_dir(dir);
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b);
        b.into_inner().unwrap()
    }

    fn file_header(len: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h
    }

    fn unpack(archive: &[u8]) -> (tempfile::TempDir, std::io::Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let r = unpack_entries(&mut &archive[..], &staging);
        (dir, r)
    }

    #[test]
    fn a_redis_archive_of_files_unpacks_without_special_bits() {
        let archive = tar_of(|b| {
            let mut h = file_header(3, 0o4777);
            b.append_data(&mut h, "appendonlydir/a.aof", &b"abc"[..])
                .unwrap();
        });
        let (dir, r) = unpack(&archive);
        r.unwrap();
        let meta = std::fs::metadata(dir.path().join("staging/appendonlydir/a.aof")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn links_escapes_and_devices_are_refused() {
        let symlink = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "dump.rdb", "/etc/shadow").unwrap();
        });
        let hardlink = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "dump.rdb", "/etc/shadow").unwrap();
        });
        let dotdot = {
            // tar::Builder refuses `..` itself: write the name into the header.
            let mut h = file_header(1, 0o644);
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            v.extend_from_slice(&[b'x'; 512]);
            v.extend_from_slice(&[0; 1024]);
            v
        };
        let absolute = {
            let mut h = file_header(1, 0o644);
            h.as_old_mut().name[..8].copy_from_slice(b"/tmp/abs");
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            v.extend_from_slice(&[b'x'; 512]);
            v.extend_from_slice(&[0; 1024]);
            v
        };
        let dot = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_data(&mut h, "./", &[][..]).unwrap();
        });
        for (what, archive) in [
            ("not a plain relative name", dot),
            ("Symlink", symlink),
            ("Link", hardlink),
            ("not a plain relative name", dotdot),
            ("not a plain relative name", absolute),
        ] {
            let (dir, r) = unpack(&archive);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
            assert!(!dir.path().join("escape").exists());
        }
        assert!(!std::path::Path::new("/tmp/abs").exists());
    }
}
