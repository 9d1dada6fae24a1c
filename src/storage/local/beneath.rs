//! File-descriptor primitives that never leave a directory.
//!
//! A local repository is untrusted: anyone who can write to it can plant a
//! symlink (`lock -> /etc/shadow`, `data -> /`) or swap one in for a
//! directory between a check and an open. So nothing below a repository's
//! root is ever opened by a path string. The root is opened once per
//! operation ([`open_root`], the operator's path, symlinks allowed), and
//! every open below it goes through that descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`:
//! the kernel refuses a symlink at any level (`ELOOP`) and any escape,
//! atomically with the open. Creating, renaming and removing are done with
//! `mkdirat`/`renameat`/`linkat`/`unlinkat` on a single name relative to a
//! parent directory opened that way.
//!
//! On a kernel without `openat2` (before 5.6; `ENOSYS`), or under a seccomp
//! filter that refuses it (`EPERM`), the same open is done by a walk: one
//! `openat(O_NOFOLLOW)` per component, each relative to the descriptor of
//! the one before, refusing `.`, `..` and every symlink. Both report a
//! symlink as `ELOOP`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Set once `openat2` answered `ENOSYS`: the walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// What [`open`] asks of the kernel: stay beneath, never a symlink or a
/// `/proc` magic link.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Whether `e` says a symlink was met (and refused).
pub fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

/// Opens the repository's root directory. It is the operator's configured
/// path, so a symlink on the way to it is followed.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` beneath the directory `dir` with `flags` (and `mode`, for a
/// file it creates), refusing a symlink at any level with `ELOOP` and any
/// path that would leave `dir`. `O_CLOEXEC` is always added; `O_NOFOLLOW`
/// too, unless `O_DIRECTORY` is asked for (a symlink is refused either way).
pub fn open(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let mut flags = flags | OFlags::CLOEXEC;
    if !flags.contains(OFlags::DIRECTORY) {
        flags |= OFlags::NOFOLLOW;
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(dir, rel, flags, mode, RESOLVE) {
            Err(Errno::NOSYS) => {
                tracing::debug!("openat2 is not available (kernel before 5.6): opening by a walk");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            // A seccomp filter may answer EPERM for a syscall it does not
            // know; the walk then says what the real error is.
            Err(Errno::PERM) => {}
            other => return Ok(other?),
        }
    }
    walk_open(dir, rel, flags, mode)
}

/// Opens the directory `rel` beneath `dir`; an empty `rel` is `dir` itself
/// (opened again, so the caller owns a descriptor).
pub fn open_dir(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    if rel.as_os_str().is_empty() {
        return Ok(rustix::fs::openat(
            dir,
            ".",
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    open(dir, rel, flags, Mode::empty())
}

/// The fallback of [`open`]: one `openat(O_NOFOLLOW)` per component, each
/// relative to the one before.
fn walk_open(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let parts = rel
        .components()
        .map(|c| match c {
            Component::Normal(part) => Ok(part),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect::<io::Result<Vec<&OsStr>>>()?;
    let Some((last, parents)) = parts.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path"));
    };
    let mut held: Option<OwnedFd> = None;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for part in parents {
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(at, *part, dir_flags, Mode::empty())
            .map_err(|e| symlink_as_eloop(at, part, e))?;
        held = Some(next);
    }
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, mode)
        .map_err(|e| symlink_as_eloop(at, last, e))
}

/// `O_DIRECTORY | O_NOFOLLOW` on a symlink says `ENOTDIR`; [`open`] says
/// `ELOOP` for every symlink, so the walk does too.
fn symlink_as_eloop(at: BorrowedFd<'_>, name: &OsStr, e: Errno) -> io::Error {
    if e == Errno::NOTDIR {
        let stat = rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW);
        if stat.is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink) {
            return Errno::LOOP.into();
        }
    }
    e.into()
}

/// Creates the directories of `rel` beneath `dir` (mode 0700), one
/// component at a time through the descriptor of the one before, and
/// returns the last one opened. An existing component must be a directory,
/// never a symlink.
pub fn create_dirs(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut held = open_dir(dir, Path::new(""))?;
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        };
        match rustix::fs::mkdirat(&held, part, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        held = open_dir(held.as_fd(), Path::new(part))?;
    }
    Ok(held)
}

/// What one directory entry is, never following a symlink.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its type (a symlink is `Symlink`, not what it points at).
    pub kind: FileType,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
    /// How many names (hard links) it has.
    pub links: u64,
}

impl From<&rustix::fs::Stat> for Entry {
    fn from(s: &rustix::fs::Stat) -> Self {
        Entry {
            kind: FileType::from_raw_mode(s.st_mode),
            size: u64::try_from(s.st_size).unwrap_or(0),
            #[allow(clippy::unnecessary_cast)] // the field types differ by architecture
            modified: chrono::DateTime::from_timestamp(s.st_mtime as i64, s.st_mtime_nsec as u32),
            #[allow(clippy::unnecessary_cast)]
            links: s.st_nlink as u64,
        }
    }
}

/// Describes the entry `name` of `dir` without following it; `None` if it
/// is gone.
pub fn entry(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Entry>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(Entry::from(&s))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Describes the open file `fd`.
pub fn describe(fd: BorrowedFd<'_>) -> io::Result<Entry> {
    Ok(Entry::from(&rustix::fs::fstat(fd)?))
}

/// The names in the directory `dir` (without `.` and `..`), read through a
/// descriptor of its own.
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(&name).to_os_string());
        }
    }
    Ok(out)
}

/// Removes the entry `name` of `dir` that is not a directory (a symlink
/// itself, never what it points at); a missing one is not an error.
pub fn remove_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the directory `rel` beneath `dir` and everything in it, by
/// descriptors: each directory is opened beneath `dir` with no symlink on
/// the way, its entries are removed relative to it, and a symlink inside is
/// removed itself, never traversed. Iterative, holding one descriptor at a
/// time, so a deep or wide tree exhausts neither the stack nor the
/// descriptors. A missing `rel` is not an error.
pub fn remove_tree(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
    let mut stack = vec![(rel.to_path_buf(), false)];
    while let Some((path, emptied)) = stack.pop() {
        if emptied {
            let parent = open_dir(dir, path.parent().unwrap_or(Path::new("")))?;
            let name = path.file_name().expect("a path below the directory");
            match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let here = match open_dir(dir, &path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        stack.push((path.clone(), true));
        for name in names(here.as_fd())? {
            match entry(here.as_fd(), &name)? {
                Some(e) if e.kind == FileType::Directory => stack.push((path.join(&name), false)),
                Some(_) => remove_file(here.as_fd(), &name)?,
                None => {}
            }
        }
    }
    Ok(())
}

/// fsyncs the directory (or file) `fd`, making a rename in it durable.
pub fn sync(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fsync(fd)?)
}

/// Renames `from` to `to`, both names in the directory `dir`, replacing
/// `to`.
pub fn rename(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Links `from` as `to`, both names in the directory `dir`; `to` must not
/// exist (`AlreadyExists`).
pub fn link(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?)
}

/// Creates the new file `name` in `dir` (`O_EXCL`, mode 0600) for writing.
pub fn create_new(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<std::fs::File> {
    let fd = open(
        dir,
        Path::new(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path) -> OwnedFd {
        open_root(dir).unwrap()
    }

    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("a/b/s")).unwrap();
        let r = root(dir.path());
        let read = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        assert!(walk_open(r.as_fd(), Path::new("a/b/f"), read, Mode::empty()).is_ok());
        for rel in ["l/b/f", "a/b/s"] {
            let e = walk_open(r.as_fd(), Path::new(rel), read, Mode::empty()).unwrap_err();
            assert!(is_symlink_error(&e), "{rel}: {e}");
            let e = open(r.as_fd(), Path::new(rel), OFlags::RDONLY, Mode::empty()).unwrap_err();
            assert!(is_symlink_error(&e), "{rel}: {e}");
        }
        let e = walk_open(
            r.as_fd(),
            Path::new("l"),
            read | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        let e = open_dir(r.as_fd(), Path::new("l")).unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        for rel in ["../x", "/etc/passwd"] {
            assert!(walk_open(r.as_fd(), Path::new(rel), read, Mode::empty()).is_err());
            assert!(open(r.as_fd(), Path::new(rel), OFlags::RDONLY, Mode::empty()).is_err());
        }
        // The walk takes plain names only; openat2 allows a `..` that stays.
        assert!(walk_open(r.as_fd(), Path::new("a/../a/b/f"), read, Mode::empty()).is_err());
    }

    #[test]
    fn create_dirs_refuses_a_symlinked_component_and_remove_tree_never_follows_one() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("canary"), "alive").unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("t/u")).unwrap();
        std::os::unix::fs::symlink(&outside, repo.join("t/u/link")).unwrap();
        std::os::unix::fs::symlink(&outside, repo.join("x")).unwrap();
        let r = root(&repo);
        let e = create_dirs(r.as_fd(), Path::new("x/y")).unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        assert!(!outside.join("y").exists());
        create_dirs(r.as_fd(), Path::new("new/deeper")).unwrap();
        assert!(repo.join("new/deeper").is_dir());
        remove_tree(r.as_fd(), Path::new("t")).unwrap();
        assert!(!repo.join("t").exists());
        let e = remove_tree(r.as_fd(), Path::new("x")).unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        remove_tree(r.as_fd(), Path::new("gone")).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("canary")).unwrap(),
            "alive"
        );
    }
}
