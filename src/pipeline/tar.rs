//! Tar, the one place it is read and written: checked unpacking of an
//! untrusted archive with the entry policy of its kind ([`unpack_checked`],
//! [`EntryPolicy`]), the reader that holds a file to the length its header
//! promised ([`ExactLen`]), and header building ([`header`], [`Stamp`]).
//!
//! Sources write tars; restore reads them back. An archive comes from the
//! repository, which anyone who can write to the store can write: nothing
//! in it is trusted (docs/DESIGN.md §4).

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What a tar header records of an entry besides its kind and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

impl Stamp {
    /// The mode, owner and mtime of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            mtime: m.mtime().max(0) as u64,
        }
    }
}

/// A GNU tar header for an entry of `kind` and `size` bytes.
pub fn header(kind: ::tar::EntryType, size: u64, stamp: &Stamp) -> ::tar::Header {
    let mut h = ::tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(stamp.mode);
    h.set_uid(stamp.uid);
    h.set_gid(stamp.gid);
    h.set_mtime(stamp.mtime);
    h
}

/// A reader that fails (`UnexpectedEof`, with its message) if its input
/// ends before the length a tar header promised: a file that shrank while
/// it was copied would otherwise corrupt the archive.
pub struct ExactLen<R> {
    inner: R,
    want: u64,
    shrank: String,
}

impl<R: Read> ExactLen<R> {
    /// `inner`, which must yield `want` bytes; `shrank` is the error's
    /// message when it yields fewer (name the file and what to do).
    pub fn new(inner: R, want: u64, shrank: impl Into<String>) -> Self {
        ExactLen {
            inner,
            want,
            shrank: shrank.into(),
        }
    }
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.want > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                self.shrank.clone(),
            ));
        }
        self.want = self.want.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Who owns what is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// The unpacking process (the archive's owners are ignored).
    Ours,
    /// The archive's (only root can give files away).
    Archive,
    /// This user and group, set on each entry (`lchown`).
    Given(u32, u32),
}

/// What an archive of one kind may hold, and how it is laid down.
#[derive(Debug, Clone, Copy)]
pub struct EntryPolicy {
    /// Symlinks are entries like files (a directory tree), or refuse the
    /// archive (Redis' files).
    pub symlinks: bool,
    /// The root entry (`./`) is skipped, as the restore sets the root
    /// itself; otherwise a name without a component refuses the archive.
    pub skip_root: bool,
    /// A name that appears twice refuses the archive.
    pub unique: bool,
    /// Permission bits removed from every entry (setuid, setgid and
    /// sticky are never kept).
    pub mask: u32,
    /// Who owns the entries.
    pub owners: Owners,
    /// Directories stay 0700 while they fill, then get their own bits and
    /// mtime, deepest first (so an mtime is not changed by the content).
    pub defer_dirs: bool,
    /// How a message names the destination (`the target`).
    pub place: &'static str,
    /// What a refusal of a landing outside it adds (`: refusing the
    /// archive`, or nothing).
    pub outside_suffix: &'static str,
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// Unpacks the tar `reader` into `dst` under `policy`, trusting nothing in
/// it: every name plain and relative (no absolute path or `..`), only the
/// kinds the policy allows (hard links, devices and FIFOs always refuse
/// the archive), nothing written through a symlink (tar checks each parent
/// resolves inside `dst`), the policy's mask on permission bits, mtimes
/// kept, xattrs dropped. A refusal is `InvalidData` naming the entry.
pub fn unpack_checked(
    reader: &mut dyn Read,
    dst: &Path,
    policy: &EntryPolicy,
) -> io::Result<Unpacked> {
    let mut ar = ::tar::Archive::new(reader);
    // Permission bits from the archive without setuid/setgid/sticky (not
    // preserved) and masked, set by tar on the entry it just wrote.
    ar.set_preserve_permissions(false);
    ar.set_mask(policy.mask);
    ar.set_preserve_ownerships(policy.owners == Owners::Archive);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(false);
    ar.set_unpack_xattrs(false);
    let mut seen = HashSet::new();
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let mut out = Unpacked::default();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let Some(name) = checked_name(&entry.path()?, policy)? else {
            continue;
        };
        let kind = checked_kind(&entry, &name, policy)?;
        if policy.unique && !seen.insert(name.clone()) {
            return Err(bad(format!(
                "entry `{}` appears twice: refusing the archive",
                name.display()
            )));
        }
        if !entry.unpack_in(dst)? {
            return Err(bad(format!(
                "entry `{}` would land outside {}{}",
                name.display(),
                policy.place,
                policy.outside_suffix
            )));
        }
        let path = dst.join(&name);
        if let Owners::Given(uid, gid) = policy.owners {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        if kind.is_dir() && policy.defer_dirs {
            let h = entry.header();
            dirs.push((path.clone(), h.mode()?, h.mtime()?));
            // Writable by us while it fills; its own bits at the end.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        } else if kind.is_file() {
            out.files += 1;
            out.bytes += entry.header().size()?;
        }
    }
    // Deepest first: a directory's mtime after its content is written.
    for (path, mode, mtime) in dirs.into_iter().rev() {
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(mode & 0o777 & !policy.mask),
        )?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        std::fs::File::open(&path)?.set_modified(t)?;
    }
    Ok(out)
}

/// The entry's name with `./` components dropped (`./x`, from a tar made
/// by hand with `tar -C DIR .`, is `x`), or `None` for the root when the
/// policy skips it; refuses anything but a plain relative name.
fn checked_name(raw: &Path, policy: &EntryPolicy) -> io::Result<Option<PathBuf>> {
    let plain = raw
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    let name: PathBuf = raw
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if plain && name.as_os_str().is_empty() && policy.skip_root {
        return Ok(None);
    }
    if !plain || name.as_os_str().is_empty() {
        return Err(bad(format!(
            "entry `{}` is not a plain relative name: refusing the archive",
            raw.display()
        )));
    }
    Ok(Some(name))
}

/// The entry's kind, if the policy allows it.
fn checked_kind<R: Read>(
    entry: &::tar::Entry<'_, R>,
    name: &Path,
    policy: &EntryPolicy,
) -> io::Result<::tar::EntryType> {
    let kind = entry.header().entry_type();
    let allowed = kind.is_file() || kind.is_dir() || (policy.symlinks && kind.is_symlink());
    if !allowed {
        let kinds = if policy.symlinks {
            "a file, directory or symlink"
        } else {
            "a file or directory"
        };
        return Err(bad(format!(
            "entry `{}` is a {kind:?}, not {kinds}: refusing the archive",
            name.display()
        )));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        mode: 0o640,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };

    fn policy(symlinks: bool, skip_root: bool, unique: bool) -> EntryPolicy {
        EntryPolicy {
            symlinks,
            skip_root,
            unique,
            mask: 0o022,
            owners: Owners::Ours,
            defer_dirs: false,
            place: "the target",
            outside_suffix: ": refusing the archive",
        }
    }

    fn tar_of(entries: &[(&str, ::tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (name, kind, body) in entries {
            let mut h = header(*kind, body.len() as u64, &STAMP);
            if kind.is_symlink() {
                h.set_link_name("elsewhere").unwrap();
            }
            // `append_data` refuses `..` and absolute names: write them raw.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(archive: &[u8], p: &EntryPolicy) -> io::Result<Unpacked> {
        let dir = tempfile::tempdir().unwrap();
        unpack_checked(&mut &archive[..], dir.path(), p)
    }

    #[test]
    fn a_short_input_is_an_error_with_the_callers_message() {
        let mut r = ExactLen::new(&b"abc"[..], 5, "x shrank");
        let e = std::io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(e.to_string(), "x shrank");
        let mut r = ExactLen::new(&b"abc"[..], 3, "x shrank");
        assert_eq!(std::io::copy(&mut r, &mut io::sink()).unwrap(), 3);
    }

    #[test]
    fn the_header_carries_the_stamp() {
        let h = header(::tar::EntryType::Regular, 7, &STAMP);
        assert_eq!(h.size().unwrap(), 7);
        assert_eq!(h.mode().unwrap(), 0o640);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
    }

    #[test]
    fn the_policy_decides_symlinks_the_root_and_twice_named_entries() {
        use ::tar::EntryType::{Directory, Regular, Symlink};
        let link = tar_of(&[("l", Symlink, b"")]);
        assert!(unpack(&link, &policy(true, true, true)).is_ok());
        let e = unpack(&link, &policy(false, true, true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not a file or directory"), "{e}");
        let root = tar_of(&[("./", Directory, b""), ("./a", Regular, b"x")]);
        assert_eq!(unpack(&root, &policy(false, true, true)).unwrap().files, 1);
        let e = unpack(&root, &policy(false, false, true)).unwrap_err();
        assert!(e.to_string().contains("not a plain relative name"), "{e}");
        let twice = tar_of(&[("d/", Directory, b""), ("d/", Directory, b"")]);
        assert!(unpack(&twice, &policy(false, false, false)).is_ok());
        let e = unpack(&twice, &policy(false, false, true)).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let up = tar_of(&[("../a", Regular, b"x")]);
        let e = unpack(&up, &policy(true, true, true)).unwrap_err();
        assert!(e.to_string().contains("not a plain relative name"), "{e}");
    }
}
