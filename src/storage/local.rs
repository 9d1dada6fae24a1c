//! A repository in a local directory.
//!
//! Objects are files under the root. New files are written as
//! `<name>.<random>.tmp` (mode 0600), fsynced, renamed into place, and the
//! directory is fsynced, so a crash leaves either the old state or the new
//! one, plus at most a `.tmp` leftover that no manifest names. Directories
//! are created 0700.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{Backend, ObjectMeta, ObjectReader, ObjectWriter, PutMode, StorageError};

/// Suffix of files being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// A local directory backend.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        location: path.display().to_string(),
        source,
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

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{:08x}{TMP_SUFFIX}", rand::random::<u32>()));
    path.with_file_name(name)
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

    /// The file of `key`, for keys kompose-dr builds only: a key with an
    /// empty part, `.` or `..` is refused (in release builds too), so no key
    /// read from a repository can reach outside it.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if !super::is_valid_key(key) {
            return Err(StorageError::BadKey(key.escape_debug().to_string()));
        }
        // No part below the root may be a symlink: one planted in the
        // repository (`data -> /other/repo/data`) would make listings and
        // removals reach outside it. The root itself is the operator's.
        let mut path = self.root.clone();
        for part in key.split('/') {
            path.push(part);
            match path.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(&path)),
                _ => {}
            }
        }
        Ok(path)
    }
}

/// The error for a symlink found in the repository: kompose-dr never
/// writes one, and following it could reach anywhere.
fn symlink_refused(path: &Path) -> StorageError {
    StorageError::NotAnObject {
        location: path.display().to_string(),
        message: "it is a symbolic link, which kompose-dr never writes: refusing to follow it"
            .into(),
    }
}

/// Opens `path` for reading if it is a regular file, never following a
/// symlink in its last component (a repository holds no symlinks: one
/// planted there could point at `/dev/zero` or a secret). Returns the file
/// and its length.
async fn open_regular(path: &Path) -> Result<(tokio::fs::File, u64), StorageError> {
    let mut options = tokio::fs::OpenOptions::new();
    // O_NONBLOCK: a FIFO planted in the repository must not hang the
    // reader (and the lock it holds); regular files ignore the flag.
    options
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits());
    let file = match options.open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound(path.display().to_string()));
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(StorageError::NotAnObject {
                location: path.display().to_string(),
                message:
                    "it is a symbolic link, which kompose-dr never writes: refusing to follow it"
                        .into(),
            });
        }
        Err(e) => return Err(io("open", path)(e)),
    };
    let meta = file.metadata().await.map_err(io("stat", path))?;
    if !meta.is_file() {
        return Err(StorageError::NotAnObject {
            location: path.display().to_string(),
            message: "it is not a regular file".into(),
        });
    }
    Ok((file, meta.len()))
}

/// Calls `f` for every file below `start` (a missing `start` has none).
fn walk_files(
    start: &Path,
    mut f: impl FnMut(&Path, &std::fs::Metadata) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut stack = vec![start.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io("stat", &path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // Symlinks, FIFOs and devices are nothing kompose-dr wrote.
                f(&path, &meta)?;
            }
        }
    }
    Ok(())
}

/// Writes `data` to `path` durably: temp file, fsync, rename (or link for
/// create-new), fsync the directory.
fn write_atomic(path: &Path, data: &[u8], mode: PutMode) -> Result<(), StorageError> {
    let dir = path.parent().expect("keys have a parent");
    create_dir_private(dir).map_err(io("create directory", dir))?;
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        match mode {
            PutMode::Overwrite => std::fs::rename(&tmp, path).map_err(io("rename", path))?,
            PutMode::CreateNew => match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::AlreadyExists(path.display().to_string()));
                }
                Err(e) => return Err(io("link", path)(e)),
            },
        }
        sync_dir(dir).map_err(io("fsync", dir))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys have a parent").to_owned();
        let tmp = tmp_path(&path);
        let (file, tmp) = tokio::task::spawn_blocking(move || {
            create_dir_private(&dir).map_err(io("create directory", &dir))?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            Ok::<_, StorageError>((f, tmp))
        })
        .await
        .expect("blocking task does not panic")?;
        Ok(Box::new(LocalWriter {
            file: Some(tokio::fs::File::from_std(file)),
            tmp,
            path,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &data, mode))
            .await
            .expect("blocking task does not panic")
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        use tokio::io::AsyncReadExt;
        let path = self.path(key)?;
        let (file, len) = open_regular(&path).await?;
        if len > super::MAX_SMALL_OBJECT {
            return Err(StorageError::NotAnObject {
                location: path.display().to_string(),
                message: format!(
                    "{len} bytes is more than a manifest, marker or facts file can be"
                ),
            });
        }
        let mut body = Vec::with_capacity(len as usize);
        // Read at most the limit, whatever the file grows to meanwhile.
        file.take(super::MAX_SMALL_OBJECT + 1)
            .read_to_end(&mut body)
            .await
            .map_err(io("read", &path))?;
        if body.len() as u64 > super::MAX_SMALL_OBJECT {
            return Err(StorageError::NotAnObject {
                location: path.display().to_string(),
                message: "it grew past the size of any small object while being read".into(),
            });
        }
        Ok(Bytes::from(body))
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let path = self.path(key)?;
        let (file, _) = open_regular(&path).await?;
        Ok(Box::pin(file))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        // Start from the deepest directory the prefix names, checked like
        // any key (no `..`, no symlinked part).
        let start = match prefix.rfind('/') {
            Some(i) => self.path(&prefix[..i])?,
            None => root.clone(),
        };
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_files(&start, |path, meta| {
                let Ok(rel) = path.strip_prefix(&root) else {
                    return Ok(());
                };
                let key = rel.to_string_lossy().into_owned();
                if key.starts_with(&prefix) && !key.ends_with(TMP_SUFFIX) {
                    out.push(ObjectMeta {
                        key,
                        size: meta.len(),
                        modified: meta
                            .modified()
                            .ok()
                            .map(chrono::DateTime::<chrono::Utc>::from),
                    });
                }
                Ok(())
            })?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("blocking task does not panic")
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("remove", &path)(e)),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(io("fsync", dir))?;
        }
        Ok(())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(&path).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("list", &path)(e)),
        };
        while let Some(e) = rd.next_entry().await.map_err(io("list", &path))? {
            if e.file_type().await.map_err(io("stat", &path))?.is_dir() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn abandoned_writes(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        remove: bool,
    ) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_files(&root, |path, meta| {
                let old = meta
                    .modified()
                    .map(|m| chrono::DateTime::<chrono::Utc>::from(m) < before)
                    .unwrap_or(false);
                if !(path.to_string_lossy().ends_with(TMP_SUFFIX) && old) {
                    return Ok(());
                }
                if remove {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("remove", path)(e)),
                    }
                }
                let rel = path.strip_prefix(&root).unwrap_or(path);
                out.push(rel.to_string_lossy().into_owned());
                Ok(())
            })?;
            out.sort();
            Ok(out)
        })
        .await
        .expect("blocking task does not panic")
    }
}

struct LocalWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let f = self.file.as_mut().expect("writer used after finish");
        f.write_all(&chunk).await.map_err(io("write", &self.tmp))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let mut f = self.file.take().expect("finish called once");
        f.flush().await.map_err(io("write", &self.tmp))?;
        f.sync_all().await.map_err(io("fsync", &self.tmp))?;
        drop(f);
        let (tmp, path) = (self.tmp.clone(), self.path.clone());
        let res = tokio::task::spawn_blocking(move || {
            std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
            let dir = path.parent().expect("has parent");
            sync_dir(dir).map_err(io("fsync", dir))
        })
        .await
        .expect("blocking task does not panic");
        if res.is_ok() {
            // Renamed: nothing left to clean up on drop.
            self.tmp = PathBuf::new();
        }
        res
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
        self.tmp = PathBuf::new();
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
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
}
