//! A repository in a local directory.
//!
//! Objects are files under the root. New files are written as
//! `<name>.<random>.tmp` (mode 0600), fsynced, renamed into place, and the
//! directory is fsynced, so a crash leaves either the old state or the new
//! one, plus at most a `.tmp` leftover that no manifest names. Directories
//! are created 0700.
//!
//! The repository is untrusted: nothing below the root is opened by a path
//! string. Each operation opens the root (the operator's path) once and
//! goes on through [`beneath`]: every open is `openat2` beneath the root
//! with no symlink at any level, and every create, rename and removal is an
//! `*at` call on one name in a directory opened that way. A symlink, FIFO,
//! socket or device planted in the repository is refused (or, in a listing,
//! skipped), never followed, and no check is separate from its open.

pub mod beneath;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{FileType, Mode, OFlags};
use tokio::io::AsyncWriteExt;

use super::{Backend, ObjectMeta, ObjectReader, ObjectWriter, PutMode, StorageError};

/// Suffix of files being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// A local directory backend.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

fn io<'a>(
    op: &'static str,
    location: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        location: location.display().to_string(),
        source,
    }
}

/// Like [`io`], but a symlink met on the way (`ELOOP`) is refused as one.
fn refuse<'a>(
    op: &'static str,
    location: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| {
        if beneath::is_symlink_error(&source) {
            symlink_refused(location)
        } else {
            io(op, location)(source)
        }
    }
}

/// Creates a directory and its parents with mode 0700.
pub fn create_dir_private(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// fsyncs a directory so that a rename in it is durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Writes `body` as the file `name` (mode 0600) in the existing directory
/// `dir`, which is the operator's path (a symlink on the way to it is
/// followed), durably and without writing through anything planted there:
/// a new temp file is created through the directory's descriptor, fsynced,
/// and renamed over `name`, so a symlink or FIFO at `name` is replaced,
/// never followed or truncated. For files kompose-dr writes beside a
/// repository (drill reports).
pub fn replace_file_in(dir: &Path, name: &OsStr, body: &[u8]) -> std::io::Result<()> {
    let dir = beneath::open_root(dir)?;
    let tmp = tmp_name(name);
    let written = (|| {
        let mut f = beneath::create_new(dir.as_fd(), &tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        beneath::rename(dir.as_fd(), &tmp, name)?;
        beneath::sync(dir.as_fd())
    })();
    if written.is_err() {
        let _ = beneath::remove_file(dir.as_fd(), &tmp);
    }
    written
}

/// The name a new file `name` is written under before it is renamed.
fn tmp_name(name: &OsStr) -> OsString {
    let mut tmp = name.to_os_string();
    tmp.push(format!(".{:08x}{TMP_SUFFIX}", rand::random::<u32>()));
    tmp
}

/// The directory part of a key (`""` for a key at the root) and its last
/// part.
fn split_key(key: &str) -> (&str, &OsStr) {
    match key.rsplit_once('/') {
        Some((dir, name)) => (dir, OsStr::new(name)),
        None => ("", OsStr::new(key)),
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking task does not panic")
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refuses a key kompose-dr never builds: one with an empty part, `.`
    /// or `..` (in release builds too), so no key read from a repository
    /// can name anything outside it.
    fn check(key: &str) -> Result<(), StorageError> {
        if super::is_valid_key(key) {
            Ok(())
        } else {
            Err(StorageError::BadKey(key.escape_debug().to_string()))
        }
    }

    /// Where `key` is, for messages only: nothing is opened by this path.
    fn at(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Opens the root directory; `None` if it does not exist (yet).
    fn open_root(&self) -> Result<Option<OwnedFd>, StorageError> {
        match beneath::open_root(&self.root) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("open", &self.root)(e)),
        }
    }

    /// The directory that holds `key`, opened beneath the root for a
    /// removal at `location`: `None` if it (or the root) does not exist.
    fn existing_parent(&self, key: &str, location: &Path) -> Result<Option<OwnedFd>, StorageError> {
        let Some(root) = self.open_root()? else {
            return Ok(None);
        };
        let (dir, _) = split_key(key);
        match beneath::open_dir(root.as_fd(), Path::new(dir)) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(refuse("remove", location)(e)),
        }
    }

    /// The directory that holds `key`, created (0700) if missing: the root
    /// by its path, everything below it through the root's descriptor.
    fn create_parent(&self, key: &str) -> Result<OwnedFd, StorageError> {
        create_dir_private(&self.root).map_err(io("create directory", &self.root))?;
        let root = beneath::open_root(&self.root).map_err(io("open", &self.root))?;
        let (dir, _) = split_key(key);
        beneath::create_dirs(root.as_fd(), Path::new(dir))
            .map_err(refuse("create directory", &self.at(dir)))
    }

    /// Opens `key` for reading if it is a regular file (`O_NONBLOCK`: a
    /// FIFO planted in the repository must not hang the reader, nor the
    /// lock it holds), judged by `fstat` on the opened file. Returns the
    /// file and its length.
    fn open_regular(&self, key: &str) -> Result<(std::fs::File, u64), StorageError> {
        Self::check(key)?;
        let location = self.at(key);
        let not_found = || StorageError::NotFound(location.display().to_string());
        let root = self.open_root()?.ok_or_else(not_found)?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match beneath::open(root.as_fd(), Path::new(key), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            // A socket cannot be opened at all.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                return Err(not_regular(&location, "a socket"));
            }
            Err(e) => return Err(refuse("open", &location)(e)),
        };
        let meta = beneath::describe(fd.as_fd()).map_err(io("stat", &location))?;
        if meta.kind != FileType::RegularFile {
            return Err(not_regular(&location, kind_name(meta.kind)));
        }
        Ok((std::fs::File::from(fd), meta.size))
    }

    /// Calls `f` with every regular file below the directory `start` (a
    /// missing `start` has none), walking by descriptors: each directory is
    /// opened beneath the root with no symlink on the way; symlinks, FIFOs
    /// and devices inside are nothing kompose-dr wrote and are skipped.
    fn walk_files(
        &self,
        root: BorrowedFd<'_>,
        start: &str,
        mut f: impl FnMut(BorrowedFd<'_>, &OsStr, String, &beneath::Entry) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut stack = vec![PathBuf::from(start)];
        while let Some(rel) = stack.pop() {
            let location = self.root.join(&rel);
            let dir = match beneath::open_dir(root, &rel) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(refuse("list", &location)(e)),
            };
            for name in beneath::names(dir.as_fd()).map_err(io("list", &location))? {
                let entry = beneath::entry(dir.as_fd(), &name);
                let Some(entry) = entry.map_err(io("stat", &location.join(&name)))? else {
                    continue;
                };
                let path = rel.join(&name);
                match entry.kind {
                    FileType::Directory => stack.push(path),
                    FileType::RegularFile => {
                        f(
                            dir.as_fd(),
                            &name,
                            path.to_string_lossy().into_owned(),
                            &entry,
                        )?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The error for a symlink found in the repository: kompose-dr never
/// writes one, and following it could reach anywhere.
fn symlink_refused(path: &Path) -> StorageError {
    StorageError::NotAnObject {
        location: path.display().to_string(),
        message: "it (or a directory above it) is a symbolic link, which kompose-dr never \
                  writes: refusing to follow it; remove it"
            .into(),
    }
}

/// The error for something other than a regular file where an object
/// should be.
fn not_regular(path: &Path, what: &str) -> StorageError {
    StorageError::NotAnObject {
        location: path.display().to_string(),
        message: format!("it is {what}, not a regular file: kompose-dr never writes one"),
    }
}

/// A file type, for messages.
pub fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// Writes `data` as `name` in `dir` durably: temp file, fsync, rename (or
/// link, for create-new), fsync the directory. `location` is for messages.
fn write_atomic(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    location: &Path,
    data: &[u8],
    mode: PutMode,
) -> Result<(), StorageError> {
    let tmp = tmp_name(name);
    let tmp_location = location.with_file_name(&tmp);
    let result = (|| {
        let mut f = beneath::create_new(dir, &tmp).map_err(refuse("create", &tmp_location))?;
        f.write_all(data).map_err(io("write", &tmp_location))?;
        f.sync_all().map_err(io("fsync", &tmp_location))?;
        drop(f);
        match mode {
            // renameat replaces whatever is at `name`, a symlink included,
            // and never follows it.
            PutMode::Overwrite => {
                beneath::rename(dir, &tmp, name).map_err(io("rename", location))?;
            }
            PutMode::CreateNew => match beneath::link(dir, &tmp, name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::AlreadyExists(location.display().to_string()));
                }
                Err(e) => return Err(io("link", location)(e)),
            },
        }
        let parent = location.parent().unwrap_or(location);
        beneath::sync(dir).map_err(io("fsync", parent))
    })();
    let _ = beneath::remove_file(dir, &tmp);
    result
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Self::check(key)?;
        let (this, key) = (self.clone(), key.to_owned());
        let (dir, file, tmp, location) = blocking(move || {
            let dir = this.create_parent(&key)?;
            let location = this.at(&key);
            let tmp = tmp_name(split_key(&key).1);
            let file = beneath::create_new(dir.as_fd(), &tmp)
                .map_err(refuse("create", &location.with_file_name(&tmp)))?;
            Ok::<_, StorageError>((dir, file, tmp, location))
        })
        .await?;
        Ok(Box::new(LocalWriter {
            file: Some(tokio::fs::File::from_std(file)),
            dir: Arc::new(dir),
            tmp: Some(tmp),
            location,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        Self::check(key)?;
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let dir = this.create_parent(&key)?;
            write_atomic(dir.as_fd(), split_key(&key).1, &this.at(&key), &data, mode)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        use tokio::io::AsyncReadExt;
        let (this, owned) = (self.clone(), key.to_owned());
        let (file, len) = blocking(move || this.open_regular(&owned)).await?;
        let location = self.at(key);
        if len > super::MAX_SMALL_OBJECT {
            return Err(StorageError::NotAnObject {
                location: location.display().to_string(),
                message: format!(
                    "{len} bytes is more than a manifest, marker or facts file can be"
                ),
            });
        }
        let mut body = Vec::with_capacity(len as usize);
        // Read at most the limit, whatever the file grows to meanwhile.
        tokio::fs::File::from_std(file)
            .take(super::MAX_SMALL_OBJECT + 1)
            .read_to_end(&mut body)
            .await
            .map_err(io("read", &location))?;
        if body.len() as u64 > super::MAX_SMALL_OBJECT {
            return Err(StorageError::NotAnObject {
                location: location.display().to_string(),
                message: "it grew past the size of any small object while being read".into(),
            });
        }
        Ok(Bytes::from(body))
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let (this, key) = (self.clone(), key.to_owned());
        let (file, _) = blocking(move || this.open_regular(&key)).await?;
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Start from the deepest directory the prefix names, checked like
        // any key (no `..`, no empty part).
        let start = match prefix.rfind('/') {
            Some(i) => {
                Self::check(&prefix[..i])?;
                prefix[..i].to_owned()
            }
            None => String::new(),
        };
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || {
            let mut out = Vec::new();
            let Some(root) = this.open_root()? else {
                return Ok(out);
            };
            this.walk_files(root.as_fd(), &start, |_, _, key, entry| {
                if key.starts_with(&prefix) && !key.ends_with(TMP_SUFFIX) {
                    out.push(ObjectMeta {
                        key,
                        size: entry.size,
                        modified: entry.modified,
                    });
                }
                Ok(())
            })?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    /// Removes the file `key`. A symlink there is removed itself (its
    /// target is never touched); a symlink above it is refused.
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        Self::check(key)?;
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let location = this.at(&key);
            let Some(dir) = this.existing_parent(&key, &location)? else {
                return Ok(());
            };
            let (_, name) = split_key(&key);
            beneath::remove_file(dir.as_fd(), name).map_err(io("remove", &location))
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let key = prefix.trim_end_matches('/');
        Self::check(key)?;
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let location = this.at(&key);
            let Some(parent) = this.existing_parent(&key, &location)? else {
                return Ok(());
            };
            let (dir, name) = split_key(&key);
            beneath::remove_tree(parent.as_fd(), Path::new(name))
                .map_err(refuse("remove", &location))?;
            beneath::sync(parent.as_fd()).map_err(io("fsync", &this.at(dir)))
        })
        .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let key = prefix.trim_end_matches('/');
        Self::check(key)?;
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || {
            let location = this.at(&key);
            let mut out = Vec::new();
            let Some(root) = this.open_root()? else {
                return Ok(out);
            };
            let dir = match beneath::open_dir(root.as_fd(), Path::new(&key)) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(refuse("list", &location)(e)),
            };
            for name in beneath::names(dir.as_fd()).map_err(io("list", &location))? {
                let entry = beneath::entry(dir.as_fd(), &name);
                let entry = entry.map_err(io("stat", &location.join(&name)))?;
                if entry.is_some_and(|e| e.kind == FileType::Directory) {
                    out.push(name.to_string_lossy().into_owned());
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn abandoned_writes(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        remove: bool,
    ) -> Result<Vec<String>, StorageError> {
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            let Some(root) = this.open_root()? else {
                return Ok(out);
            };
            this.walk_files(root.as_fd(), "", |dir, name, key, entry| {
                let old = entry.modified.is_some_and(|m| m < before);
                if !(key.ends_with(TMP_SUFFIX) && old) {
                    return Ok(());
                }
                if remove {
                    beneath::remove_file(dir, name).map_err(io("remove", &this.at(&key)))?;
                }
                out.push(key);
                Ok(())
            })?;
            out.sort();
            Ok(out)
        })
        .await
    }
}

/// A new object being written: a temp file in its directory, held by
/// descriptor, renamed into place by `finish`.
struct LocalWriter {
    file: Option<tokio::fs::File>,
    /// The directory the object goes in, opened beneath the root once.
    dir: Arc<OwnedFd>,
    /// The temp file's name in `dir`, until it is renamed or removed.
    tmp: Option<OsString>,
    /// Where the object goes, for messages and its name.
    location: PathBuf,
}

impl LocalWriter {
    fn tmp_location(&self) -> PathBuf {
        match &self.tmp {
            Some(tmp) => self.location.with_file_name(tmp),
            None => self.location.clone(),
        }
    }

    /// Removes the temp file, if it is still there.
    fn remove_tmp(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = beneath::remove_file(self.dir.as_fd(), &tmp);
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let location = self.tmp_location();
        let f = self.file.as_mut().expect("writer used after finish");
        f.write_all(&chunk).await.map_err(io("write", &location))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let tmp_location = self.tmp_location();
        let mut f = self.file.take().expect("finish called once");
        f.flush().await.map_err(io("write", &tmp_location))?;
        f.sync_all().await.map_err(io("fsync", &tmp_location))?;
        drop(f);
        let tmp = self.tmp.clone().expect("finish called once");
        let (dir, location) = (self.dir.clone(), self.location.clone());
        let res = blocking(move || {
            let name = location.file_name().expect("a key has a last part");
            beneath::rename(dir.as_fd(), &tmp, name).map_err(io("rename", &location))?;
            let parent = location.parent().unwrap_or(&location);
            beneath::sync(dir.as_fd()).map_err(io("fsync", parent))
        })
        .await;
        if res.is_ok() {
            // Renamed: nothing left to clean up on drop.
            self.tmp = None;
        }
        res
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        self.remove_tmp();
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        self.remove_tmp();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn keys_that_leave_the_repository_are_refused_in_every_build() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("canary"), "alive").unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        for key in [
            "../victim/",
            "data/../../victim/",
            "/etc/passwd",
            "data//x",
            "./x",
        ] {
            assert!(
                matches!(b.delete_prefix(key).await, Err(StorageError::BadKey(_))),
                "{key}"
            );
            assert!(
                matches!(b.get(key).await, Err(StorageError::BadKey(_))),
                "{key}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(victim.join("canary")).unwrap(),
            "alive"
        );
    }

    #[tokio::test]
    async fn a_planted_symlinked_directory_is_not_followed_and_a_fifo_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("20200101T000000Z-aaaaaa")).unwrap();
        std::fs::write(other.join("20200101T000000Z-aaaaaa/canary"), "alive").unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        std::os::unix::fs::symlink(&other, root.join("data")).unwrap();
        let b = LocalBackend::new(&root);
        assert!(b.list_dirs("data/").await.is_err());
        assert!(
            b.delete_prefix("data/20200101T000000Z-aaaaaa/")
                .await
                .is_err()
        );
        assert!(b.list("data/").await.is_err());
        assert!(other.join("20200101T000000Z-aaaaaa/canary").exists());
        nix::unistd::mkfifo(
            &root.join("snapshots/20200101T000000Z-aaaaaa.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            b.get("snapshots/20200101T000000Z-aaaaaa.json"),
        )
        .await
        .expect("a FIFO must not block the reader");
        assert!(got.unwrap_err().to_string().contains("not a regular file"));
    }

    #[tokio::test]
    async fn symlinks_and_devices_are_not_objects() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("snapshots/zero.json")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("kompose-dr.json")).unwrap();
        let b = LocalBackend::new(&root);
        for key in ["snapshots/zero.json", "kompose-dr.json"] {
            let e = b.get(key).await.unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(b.open(key).await.is_err());
        }
    }

    #[tokio::test]
    async fn writer_is_invisible_until_finished_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        let mut w = b.create("data/x/a.bin").await.unwrap();
        w.write(Bytes::from_static(b"hello")).await.unwrap();
        assert!(b.list("data/").await.unwrap().is_empty());
        w.finish().await.unwrap();
        let l = b.list("data/").await.unwrap();
        assert_eq!(
            l.iter()
                .map(|o| (o.key.as_str(), o.size))
                .collect::<Vec<_>>(),
            vec![("data/x/a.bin", 5)]
        );
        assert!(l[0].modified.is_some(), "the listing carries the mtime");
        let mode = std::fs::metadata(dir.path().join("repo/data/x/a.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.path().join("repo/data/x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn aborted_and_dropped_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let mut w = b.create("d/a").await.unwrap();
        w.write(Bytes::from_static(b"x")).await.unwrap();
        w.abort().await;
        let w = b.create("d/b").await.unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path().join("d")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn abandoned_tmp_files_are_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let w = b.create("data/x/a.bin").await.unwrap();
        std::mem::forget(w); // as a kill -9 would leave it
        b.put(
            "data/x/done.bin",
            Bytes::from_static(b"1"),
            PutMode::CreateNew,
        )
        .await
        .unwrap();
        let past = chrono::Utc::now() - chrono::Duration::hours(1);
        assert!(b.abandoned_writes(past, true).await.unwrap().is_empty());
        let later = chrono::Utc::now() + chrono::Duration::seconds(5);
        let found = b.abandoned_writes(later, false).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("data/x/a.bin.") && found[0].ends_with(TMP_SUFFIX));
        b.abandoned_writes(later, true).await.unwrap();
        assert!(b.abandoned_writes(later, false).await.unwrap().is_empty());
        assert_eq!(b.list("data/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn put_create_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("m.json", Bytes::from_static(b"1"), PutMode::CreateNew)
            .await
            .unwrap();
        let e = b
            .put("m.json", Bytes::from_static(b"2"), PutMode::CreateNew)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::AlreadyExists(_)));
        b.put("m.json", Bytes::from_static(b"3"), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(&b.get("m.json").await.unwrap()[..], b"3");
        assert!(matches!(
            b.get("nope").await,
            Err(StorageError::NotFound(_))
        ));
    }

    /// A directory outside the repository with a canary, a file a key
    /// would name, and an old temp file; and what it holds, to compare.
    fn outside(dir: &Path) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
        let out = dir.join("outside");
        std::fs::create_dir_all(out.join("s/sub")).unwrap();
        std::fs::write(out.join("canary"), "alive").unwrap();
        std::fs::write(out.join("s/f"), "secret").unwrap();
        std::fs::write(out.join("s/sub/y"), "y").unwrap();
        std::fs::write(out.join("s/old.1.tmp"), "t").unwrap();
        let before = contents(&out);
        (out, before)
    }

    /// Every file below `dir` with its bytes (symlinks as their target).
    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = p.symlink_metadata().unwrap();
                if m.is_dir() {
                    stack.push(p.clone());
                    out.push((p, Vec::new()));
                } else if m.is_symlink() {
                    out.push((
                        p.clone(),
                        std::fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ));
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// Bounds one operation: nothing planted may make it hang.
    async fn soon<T>(op: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(5), op)
            .await
            .expect("an operation on a hostile repository hung")
    }

    fn is_symlink_refusal(e: &StorageError) -> bool {
        matches!(e, StorageError::NotAnObject { message, .. } if message.contains("symbolic link"))
    }

    async fn write_through(b: &LocalBackend, key: &str) -> Result<(), StorageError> {
        let mut w = b.create(key).await?;
        w.write(Bytes::from_static(b"new")).await?;
        w.finish().await
    }

    #[tokio::test]
    async fn a_symlinked_directory_above_a_key_is_refused_by_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let (out, before) = outside(dir.path());
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&out, root.join("data")).unwrap();
        let b = LocalBackend::new(&root);
        let put = |mode| b.put("data/s/f", Bytes::from_static(b"new"), mode);
        let errors = [
            soon(write_through(&b, "data/s/x.bin")).await.unwrap_err(),
            soon(put(PutMode::Overwrite)).await.unwrap_err(),
            soon(put(PutMode::CreateNew)).await.unwrap_err(),
            soon(b.get("data/s/f")).await.unwrap_err(),
            soon(b.open("data/s/f")).await.err().unwrap(),
            soon(b.list("data/")).await.unwrap_err(),
            soon(b.list("data/s/f")).await.unwrap_err(),
            soon(b.delete("data/s/f")).await.unwrap_err(),
            soon(b.delete_prefix("data/s/")).await.unwrap_err(),
            soon(b.list_dirs("data/")).await.unwrap_err(),
            soon(b.list_dirs("data/s/")).await.unwrap_err(),
        ];
        for (i, e) in errors.iter().enumerate() {
            assert!(is_symlink_refusal(e), "operation {i}: {e}");
        }
        // The walk of the whole repository does not go through it.
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        assert!(
            soon(b.abandoned_writes(later, true))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(soon(b.list("")).await.unwrap().is_empty());
        assert_eq!(contents(&out), before);
    }

    #[tokio::test]
    async fn a_symlink_as_the_last_part_of_a_key_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (out, before) = outside(dir.path());
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("data/s")).unwrap();
        let link = |name: &str, to: &Path| std::os::unix::fs::symlink(to, root.join(name)).unwrap();
        for name in ["data/s/f", "data/s/g", "data/s/h", "data/s/i"] {
            link(name, &out.join("s/f"));
        }
        link("data/s/d", &out.join("s"));
        let b = LocalBackend::new(&root);
        for e in [
            soon(b.get("data/s/f")).await.unwrap_err(),
            soon(b.open("data/s/f")).await.err().unwrap(),
            soon(b.delete_prefix("data/s/d/")).await.unwrap_err(),
            soon(b.list_dirs("data/s/d/")).await.unwrap_err(),
            soon(b.list("data/s/d/")).await.unwrap_err(),
        ] {
            assert!(is_symlink_refusal(&e), "{e}");
        }
        // Listings skip links; they are not objects nor directories.
        assert!(soon(b.list("data/")).await.unwrap().is_empty());
        assert!(soon(b.list_dirs("data/s/")).await.unwrap().is_empty());
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        assert!(
            soon(b.abandoned_writes(later, true))
                .await
                .unwrap()
                .is_empty()
        );
        // A new object replaces the link itself; create-new finds it taken.
        let new = Bytes::from_static(b"new");
        soon(b.put("data/s/f", new.clone(), PutMode::Overwrite))
            .await
            .unwrap();
        let e = soon(b.put("data/s/g", new, PutMode::CreateNew))
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::AlreadyExists(_)), "{e}");
        soon(write_through(&b, "data/s/h")).await.unwrap();
        assert_eq!(&soon(b.get("data/s/h")).await.unwrap()[..], b"new");
        // Removing a link removes the link, never its target.
        soon(b.delete("data/s/i")).await.unwrap();
        assert!(root.join("data/s").join("i").symlink_metadata().is_err());
        soon(b.delete_prefix("data/s/")).await.unwrap();
        assert!(!root.join("data/s").exists());
        assert_eq!(contents(&out), before);
    }

    #[tokio::test]
    async fn fifos_sockets_devices_and_directories_are_not_objects_and_hang_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("data/s/dir")).unwrap();
        let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::unistd::mkfifo(&root.join("data/s/fifo"), fifo).unwrap();
        // A FIFO where a directory is expected.
        nix::unistd::mkfifo(&root.join("data/t"), fifo).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("data/s/sock")).unwrap();
        let mut odd = vec![
            ("fifo", "a FIFO"),
            ("sock", "a socket"),
            ("dir", "a directory"),
        ];
        // A device node needs root (CAP_MKNOD); without it that case is skipped.
        let null = rustix::fs::makedev(1, 3);
        let device = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("data/s/null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            null,
        );
        if device.is_ok() {
            odd.push(("null", "a character device"));
        }
        let b = LocalBackend::new(&root);
        for (name, what) in odd {
            let key = format!("data/s/{name}");
            for e in [
                soon(b.get(&key)).await.unwrap_err(),
                soon(b.open(&key)).await.err().unwrap(),
            ] {
                assert!(matches!(e, StorageError::NotAnObject { .. }), "{key}: {e}");
                assert!(e.to_string().contains(what), "{key}: {e}");
            }
        }
        // A directory is neither replaced nor removed as a file.
        let new = Bytes::from_static(b"new");
        assert!(
            soon(b.put("data/s/dir", new.clone(), PutMode::Overwrite))
                .await
                .is_err()
        );
        assert!(soon(b.delete("data/s/dir")).await.is_err());
        // A FIFO where a directory should be: refused at once.
        assert!(
            soon(b.put("data/t/x", new, PutMode::Overwrite))
                .await
                .is_err()
        );
        assert!(soon(write_through(&b, "data/t/x")).await.is_err());
        assert!(soon(b.list("data/t/")).await.is_err());
        assert!(soon(b.list_dirs("data/t/")).await.is_err());
        assert!(soon(b.delete_prefix("data/t/")).await.is_err());
        assert!(soon(b.delete("data/t/x")).await.is_err());
        // Listings skip them.
        assert!(soon(b.list("data/")).await.unwrap().is_empty());
        assert_eq!(soon(b.list_dirs("data/s/")).await.unwrap(), vec!["dir"]);
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        assert!(
            soon(b.abandoned_writes(later, true))
                .await
                .unwrap()
                .is_empty()
        );
        // Nothing was left behind by the refused writes.
        let mut left: Vec<_> = std::fs::read_dir(root.join("data/s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert!(left.iter().all(|n| !n.ends_with(TMP_SUFFIX)), "{left:?}");
    }

    /// The race the old check-then-open lost: `data` flips between the
    /// repository's directory and a symlink to outside (an atomic
    /// exchange, so it always exists) while every operation runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_symlink_swapped_in_for_a_directory_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (out, before) = outside(dir.path());
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("data/s/sub")).unwrap();
        std::os::unix::fs::symlink(&out, root.join("swap")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                let fd = beneath::open_root(&root).unwrap();
                let exchange = rustix::fs::RenameFlags::EXCHANGE;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rustix::fs::renameat_with(&fd, "data", &fd, "swap", exchange).unwrap();
                }
            })
        };
        let b = LocalBackend::new(&root);
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            let new = Bytes::from_static(b"new");
            let _ = soon(b.put("data/s/f", new.clone(), PutMode::Overwrite)).await;
            let _ = soon(b.put("data/s/sub/y", new, PutMode::Overwrite)).await;
            let _ = soon(write_through(&b, "data/s/w.bin")).await;
            let _ = soon(b.get("data/s/f")).await;
            let _ = soon(b.list("data/")).await;
            let _ = soon(b.list_dirs("data/s/")).await;
            let _ = soon(b.delete("data/s/f")).await;
            let _ = soon(b.delete_prefix("data/s/sub/")).await;
            let _ = soon(b.abandoned_writes(later, true)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert_eq!(contents(&out), before);
    }

    #[test]
    fn a_file_replaced_beside_a_repository_never_writes_through_what_is_planted() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "secret").unwrap();
        let reports = dir.path().join("reports");
        std::fs::create_dir(&reports).unwrap();
        std::os::unix::fs::symlink(&victim, reports.join("a.json")).unwrap();
        let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::unistd::mkfifo(&reports.join("b.json"), fifo).unwrap();
        for name in ["a.json", "b.json"] {
            replace_file_in(&reports, OsStr::new(name), b"report").unwrap();
            let path = reports.join(name);
            assert_eq!(std::fs::read(&path).unwrap(), b"report");
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::symlink_metadata(&path).unwrap().permissions(),
            );
            assert_eq!(mode & 0o7777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        assert_eq!(std::fs::read_dir(&reports).unwrap().count(), 2);
    }
}
