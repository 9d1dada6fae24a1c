//! Whether a Redis data directory holds nothing but what a fresh server
//! writes, so that a restore into it needs no `--replace`.
//!
//! A fresh Redis with AOF writes `appendonlydir/` holding an empty base
//! (an RDB with no key, or an empty `.base.aof`), an empty `.incr.aof` and
//! the manifest; one that was shut down once writes an empty `dump.rdb`.
//! The directory counts as empty when it holds only such files: every RDB
//! (`*.rdb`, any `.base.rdb`) has no database section (its auxiliary
//! fields are followed by the end marker), every AOF file is empty, and
//! nothing else is there but manifests and kompose-dr's own
//! `.kompose-dr-*` entries. Anything else, or anything not understood,
//! holds data.

use std::path::Path;

/// Files larger than this are never a fresh server's (an empty RDB is
/// about 100 bytes).
pub const SMALL: u64 = 4096;

/// One entry of a Redis data directory, relative to it (`/`-separated,
/// at most two levels deep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A regular file, with its content when it is at most [`SMALL`] bytes.
    File(String, Option<Vec<u8>>),
    /// Anything else (a link, a device, a name not understood).
    Other(String),
}

/// Whether `entries` are only what a fresh Redis writes (see the module
/// documentation).
pub fn is_fresh(entries: &[Entry]) -> bool {
    entries.iter().all(|e| match e {
        Entry::Dir(p) => p.starts_with(".kompose-dr-") || !p.contains('/'),
        Entry::File(p, content) => {
            if p.starts_with(".kompose-dr-") {
                return true;
            }
            let depth = p.matches('/').count();
            let name = p.rsplit('/').next().unwrap_or(p);
            match content {
                _ if depth > 1 => false,
                Some(b) if name.ends_with(".rdb") => rdb_is_empty(b),
                Some(b) if name.ends_with(".aof") => b.is_empty(),
                Some(_) => depth == 1 && name.ends_with(".manifest"),
                None => false,
            }
        }
        Entry::Other(p) => p.starts_with(".kompose-dr-"),
    })
}

/// Whether an RDB file holds no key: the magic `REDIS` and version, then
/// only auxiliary fields (`0xFA` key value), then the end marker `0xFF`.
/// Anything else (a database selector, a function, a module's data, a
/// malformed file) counts as data.
pub fn rdb_is_empty(b: &[u8]) -> bool {
    if b.len() < 9 || &b[..5] != b"REDIS" {
        return false;
    }
    let mut at = 9;
    loop {
        match b.get(at) {
            Some(0xFF) => return true,
            Some(0xFA) => {
                at += 1;
                for _ in 0..2 {
                    match string_end(b, at) {
                        Some(end) => at = end,
                        None => return false,
                    }
                }
            }
            _ => return false,
        }
    }
}

/// Where the RDB string starting at `at` ends (its length encoding: 6, 14,
/// 32 or 64 bits; or an integer; or LZF-compressed).
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let first = *b.get(at)?;
    let (len, body) = match first >> 6 {
        0 => (usize::from(first & 0x3F), at + 1),
        1 => (
            (usize::from(first & 0x3F) << 8) | usize::from(*b.get(at + 1)?),
            at + 2,
        ),
        2 if first == 0x80 => (be(b.get(at + 1..at + 5)?)?, at + 5),
        2 if first == 0x81 => (be(b.get(at + 1..at + 9)?)?, at + 9),
        3 => match first & 0x3F {
            0 => (1, at + 1),
            1 => (2, at + 1),
            2 => (4, at + 1),
            3 => {
                // LZF: compressed length, then the uncompressed one.
                let clen_end = length_end(b, at + 1)?;
                let clen = length(b, at + 1)?;
                let body = length_end(b, clen_end)?;
                (clen, body)
            }
            _ => return None,
        },
        _ => return None,
    };
    let end = body.checked_add(len)?;
    (end <= b.len()).then_some(end)
}

/// A plain length at `at` (no special encoding).
fn length(b: &[u8], at: usize) -> Option<usize> {
    let first = *b.get(at)?;
    match first >> 6 {
        0 => Some(usize::from(first & 0x3F)),
        1 => Some((usize::from(first & 0x3F) << 8) | usize::from(*b.get(at + 1)?)),
        2 if first == 0x80 => be(b.get(at + 1..at + 5)?),
        2 if first == 0x81 => be(b.get(at + 1..at + 9)?),
        _ => None,
    }
}

/// Where the plain length at `at` ends.
fn length_end(b: &[u8], at: usize) -> Option<usize> {
    let first = *b.get(at)?;
    match first >> 6 {
        0 => Some(at + 1),
        1 => Some(at + 2),
        2 if first == 0x80 => Some(at + 5),
        2 if first == 0x81 => Some(at + 9),
        _ => None,
    }
}

/// A big-endian unsigned number.
fn be(bytes: &[u8]) -> Option<usize> {
    let mut n: u64 = 0;
    for &x in bytes {
        n = n.checked_mul(256)?.checked_add(u64::from(x))?;
    }
    usize::try_from(n).ok()
}

/// The entries of a data directory on this host, two levels deep.
pub fn local_entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(dir, "", 0, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.is_dir() {
            out.push(Entry::Dir(name.clone()));
            if depth == 0 && !name.starts_with(".kompose-dr-") {
                walk(&e.path(), &format!("{name}/"), depth + 1, out)?;
            }
        } else if meta.is_file() {
            let content = if meta.len() <= SMALL {
                Some(std::fs::read(e.path())?)
            } else {
                None
            };
            out.push(Entry::File(name, content));
        } else {
            out.push(Entry::Other(name));
        }
    }
    Ok(())
}

/// The shell script that lists a data directory inside a container (`$1`),
/// two levels deep: `D path`, `O path`, or `F size path` followed by a line
/// of the file's bytes in hex when it is small. POSIX sh, `wc`, `od`: what
/// every Redis image has.
pub const LIST_SCRIPT: &str = r#"cd "$1" || exit 1
for f in * .[!.]* ..?* */* */.[!.]* */..?*; do
  if [ -L "$f" ]; then echo "O $f"
  elif [ -d "$f" ]; then echo "D $f"
  elif [ -f "$f" ]; then n=$(wc -c < "$f"); n=$((n + 0)); echo "F $n $f"
    if [ "$n" -le 4096 ]; then od -An -v -tx1 "$f" | tr -d ' \n'; echo; fi
  elif [ -e "$f" ]; then echo "O $f"
  fi
done"#;

/// Reads [`LIST_SCRIPT`]'s output; `None` when it is not understood.
pub fn parse_listing(text: &str) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (tag, rest) = line.split_once(' ')?;
        match tag {
            "D" => out.push(Entry::Dir(rest.to_owned())),
            "O" => out.push(Entry::Other(rest.to_owned())),
            "F" => {
                let (size, path) = rest.split_once(' ')?;
                let size: u64 = size.parse().ok()?;
                let content = if size <= SMALL {
                    let hex = lines.next()?;
                    let bytes = hex::decode(hex.trim()).ok()?;
                    if bytes.len() as u64 != size {
                        return None;
                    }
                    Some(bytes)
                } else {
                    None
                };
                out.push(Entry::File(path.to_owned(), content));
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `redis-server` 7 writes for an empty dataset (aux fields, EOF,
    /// checksum).
    fn empty_rdb() -> Vec<u8> {
        let mut b = b"REDIS0011".to_vec();
        for (k, v) in [("redis-ver", "7.2.4"), ("redis-bits", "@")] {
            b.push(0xFA);
            b.push(k.len() as u8);
            b.extend_from_slice(k.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
        }
        // An integer-encoded value (ctime) and a 14-bit length.
        b.extend_from_slice(&[0xFA, 5]);
        b.extend_from_slice(b"ctime");
        b.extend_from_slice(&[0xC2, 1, 2, 3, 4]);
        b.push(0xFF);
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn an_empty_rdb_is_empty_and_one_with_a_key_is_not() {
        assert!(rdb_is_empty(&empty_rdb()));
        let mut with_db = empty_rdb();
        let eof = with_db.len() - 9;
        with_db.splice(eof..eof, [0xFE, 0x00, 0x00, 0x01, b'k', 0x01, b'v']);
        assert!(!rdb_is_empty(&with_db));
        assert!(!rdb_is_empty(b"REDIS0011"));
        assert!(!rdb_is_empty(b"garbage that is long"));
        // A truncated aux field.
        assert!(!rdb_is_empty(&empty_rdb()[..15]));
    }

    #[test]
    fn a_fresh_aof_directory_is_fresh_and_anything_more_is_not() {
        let fresh = vec![
            Entry::Dir("appendonlydir".into()),
            Entry::File(
                "appendonlydir/appendonly.aof.1.base.rdb".into(),
                Some(empty_rdb()),
            ),
            Entry::File(
                "appendonlydir/appendonly.aof.1.incr.aof".into(),
                Some(vec![]),
            ),
            Entry::File(
                "appendonlydir/appendonly.aof.manifest".into(),
                Some(b"file appendonly.aof.1.base.rdb seq 1 type b\n".to_vec()),
            ),
            Entry::File("dump.rdb".into(), Some(empty_rdb())),
            Entry::Dir(".kompose-dr-replaced-x".into()),
        ];
        assert!(is_fresh(&fresh));
        assert!(is_fresh(&[]));
        let mut written = fresh.clone();
        written[2] = Entry::File(
            "appendonlydir/appendonly.aof.1.incr.aof".into(),
            Some(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n".to_vec()),
        );
        assert!(!is_fresh(&written));
        let mut big = fresh.clone();
        big[4] = Entry::File("dump.rdb".into(), None);
        assert!(!is_fresh(&big));
        for other in [
            Entry::File("notes.txt".into(), Some(vec![])),
            Entry::Other("dump.rdb".into()),
            Entry::Dir("appendonlydir/deeper".into()),
            Entry::File("appendonly.manifest".into(), Some(vec![])),
        ] {
            let mut v = fresh.clone();
            v.push(other.clone());
            assert!(!is_fresh(&v), "{other:?}");
        }
    }

    #[test]
    fn the_container_listing_parses() {
        let text = "D appendonlydir\nF 0 appendonlydir/a.incr.aof\n\nF 3 appendonlydir/a.manifest\n616263\nF 9999 dump.rdb\nO link\n";
        let e = parse_listing(text).unwrap();
        assert_eq!(
            e,
            vec![
                Entry::Dir("appendonlydir".into()),
                Entry::File("appendonlydir/a.incr.aof".into(), Some(vec![])),
                Entry::File("appendonlydir/a.manifest".into(), Some(b"abc".to_vec())),
                Entry::File("dump.rdb".into(), None),
                Entry::Other("link".into()),
            ]
        );
        assert!(parse_listing("F 3 x\nzz\n").is_none());
        assert!(parse_listing("what\n").is_none());
    }
}
