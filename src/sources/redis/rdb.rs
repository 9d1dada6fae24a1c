//! Counting the keys an RDB file holds, per logical database, with the
//! expiry of every key that has a TTL — without loading it into a server.
//!
//! Key counts read from a live server (`INFO keyspace`) describe the server
//! at the moment they are read, not the file a backup saved: keys written
//! after the save, and keys whose TTL ran out before the server reclaimed
//! them, make the two differ. So the backup counts the saved bytes
//! themselves (as they stream into the archive), and verify counts the
//! restored file the same way before Redis loads it: both sides describe
//! the one file.
//!
//! The scan reads the file once, front to back, keeping nothing but the
//! counts and the expiry times: keys and values are skipped, compressed
//! strings are decompressed only as far as a container's header when an
//! empty container must be told apart (Redis drops empty keys when it
//! loads). Every Redis 7 type is understood (RDB versions up to 12: lists,
//! sets, sorted sets, hashes in every encoding, streams, module values with
//! their annotations, functions, hashes with field expiry); anything else
//! is an error that says where, never a guess. Nothing in the input can
//! make it panic or allocate more than a few hundred bytes at a time.

use std::collections::BTreeMap;
use std::io::Read;

/// The keys of one logical database, as a file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbKeys {
    /// Keys without a TTL.
    pub persistent: u64,
    /// The expiry (milliseconds since the epoch) of every key with a TTL.
    pub expiries: Vec<i64>,
    /// Hashes whose fields expire (Redis 7.4 field TTLs), counted above
    /// like any key: Redis drops such a hash when its last field expires,
    /// which the file does not say, so up to this many may be missing
    /// once loaded.
    pub may_vanish: u64,
}

impl DbKeys {
    /// Keys with a TTL whose expiry is not before `at_ms`.
    pub fn volatile_at(&self, at_ms: i64) -> u64 {
        self.expiries.iter().filter(|&&e| e >= at_ms).count() as u64
    }
}

/// The keys of every logical database a file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileKeys {
    /// Per database number.
    pub dbs: BTreeMap<u64, DbKeys>,
}

/// Key counts of one database at a moment: all keys, and those with a TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Keys that had no TTL, or whose expiry was not before the moment.
    pub keys: u64,
    /// Of those, the keys with a TTL.
    pub volatile: u64,
}

impl FileKeys {
    /// The counts per database (`db0` …) at `at_ms`: a key counts unless
    /// its expiry is before that moment (Redis' own rule: a key expires
    /// once the clock is past its expiry). Databases left empty are absent,
    /// as in `INFO keyspace`.
    pub fn counts_at(&self, at_ms: i64) -> BTreeMap<String, Counts> {
        self.dbs
            .iter()
            .map(|(db, k)| {
                let volatile = k.volatile_at(at_ms);
                (
                    format!("db{db}"),
                    Counts {
                        keys: k.persistent + volatile,
                        volatile,
                    },
                )
            })
            .filter(|(_, c)| c.keys > 0)
            .collect()
    }
}

/// Why a file could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    /// The bytes could not be read, or ended early.
    #[error("{}", if .0.kind() == std::io::ErrorKind::UnexpectedEof { "the file ends early".to_owned() } else { format!("cannot read it: {}", .0) })]
    Io(#[from] std::io::Error),
    /// The bytes are not an RDB file this scanner understands.
    #[error("at byte {offset}: {what}")]
    Format {
        /// Where in the file.
        offset: u64,
        /// What was found there.
        what: String,
    },
}

// Opcodes and value types, as Redis' rdb.h names them.
const OP_SLOT_INFO: u8 = 244;
const OP_FUNCTION2: u8 = 245;
const OP_FUNCTION_PRE_GA: u8 = 246;
const OP_MODULE_AUX: u8 = 247;
const OP_IDLE: u8 = 248;
const OP_FREQ: u8 = 249;
const OP_AUX: u8 = 250;
const OP_RESIZEDB: u8 = 251;
const OP_EXPIRETIME_MS: u8 = 252;
const OP_EXPIRETIME: u8 = 253;
const OP_SELECTDB: u8 = 254;
const OP_EOF: u8 = 255;

const T_STRING: u8 = 0;
const T_LIST: u8 = 1;
const T_SET: u8 = 2;
const T_ZSET: u8 = 3;
const T_HASH: u8 = 4;
const T_ZSET_2: u8 = 5;
const T_MODULE_PRE_GA: u8 = 6;
const T_MODULE_2: u8 = 7;
const T_HASH_ZIPMAP: u8 = 9;
const T_LIST_ZIPLIST: u8 = 10;
const T_SET_INTSET: u8 = 11;
const T_ZSET_ZIPLIST: u8 = 12;
const T_HASH_ZIPLIST: u8 = 13;
const T_LIST_QUICKLIST: u8 = 14;
const T_STREAM_LISTPACKS: u8 = 15;
const T_HASH_LISTPACK: u8 = 16;
const T_ZSET_LISTPACK: u8 = 17;
const T_LIST_QUICKLIST_2: u8 = 18;
const T_STREAM_LISTPACKS_2: u8 = 19;
const T_SET_LISTPACK: u8 = 20;
const T_STREAM_LISTPACKS_3: u8 = 21;
const T_HASH_METADATA_PRE_GA: u8 = 22;
const T_HASH_LISTPACK_EX_PRE_GA: u8 = 23;
const T_HASH_METADATA: u8 = 24;
const T_HASH_LISTPACK_EX: u8 = 25;

/// Bytes of a container's encoding needed to read its element count.
const HEADER: usize = 10;

/// What a value turned out to be, for counting.
enum Value {
    /// A key Redis loads.
    Key,
    /// A key whose hash fields expire: loaded, but may vanish early.
    FieldsExpire,
    /// An empty container: Redis skips it when loading.
    Empty,
}

/// A blob's container encoding, to read its element count from its header.
#[derive(Clone, Copy)]
enum Container {
    Ziplist,
    Listpack,
    Intset,
    Zipmap,
}

/// Counts the keys of the RDB file `r` reads, per database, with their
/// expiry times. Reads up to the file's end marker.
pub fn scan(r: impl Read) -> Result<FileKeys, RdbError> {
    let mut rd = Reader {
        r: std::io::BufReader::with_capacity(64 * 1024, r),
        pos: 0,
    };
    let magic: [u8; 9] = rd.array()?;
    let version = std::str::from_utf8(&magic[5..])
        .ok()
        .filter(|_| &magic[..5] == b"REDIS")
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| rd.format_at(0, "not an RDB file (no REDIS header)"))?;
    let mut keys = FileKeys::default();
    let mut db = 0u64;
    let mut expiry: Option<i64> = None;
    loop {
        let at = rd.pos;
        let op = rd.u8()?;
        match op {
            OP_EOF => break,
            OP_SELECTDB => db = rd.length()?,
            OP_RESIZEDB => {
                rd.length()?;
                rd.length()?;
            }
            OP_SLOT_INFO => {
                for _ in 0..3 {
                    rd.length()?;
                }
            }
            OP_AUX => {
                rd.skip_string()?;
                rd.skip_string()?;
            }
            OP_EXPIRETIME_MS => expiry = Some(i64::from_le_bytes(rd.array()?)),
            OP_EXPIRETIME => {
                expiry = Some(i64::from(i32::from_le_bytes(rd.array()?)).saturating_mul(1000))
            }
            OP_IDLE => {
                rd.length()?;
            }
            OP_FREQ => {
                rd.u8()?;
            }
            OP_MODULE_AUX => {
                rd.length()?;
                if rd.length()? != 2 {
                    return Err(rd.format_at(at, "module data without its `when` marker"));
                }
                rd.length()?;
                rd.skip_module_value()?;
            }
            OP_FUNCTION2 => rd.skip_string()?,
            OP_FUNCTION_PRE_GA => {
                rd.skip_string()?;
                rd.skip_string()?;
                if rd.length()? != 0 {
                    rd.skip_string()?;
                }
                rd.skip_string()?;
            }
            kind => {
                rd.skip_string()?; // the key
                let value = rd.skip_value(kind, version, at)?;
                let e = expiry.take();
                let d = keys.dbs.entry(db).or_default();
                if matches!(value, Value::Empty) {
                    continue;
                }
                if matches!(value, Value::FieldsExpire) {
                    d.may_vanish += 1;
                }
                match e {
                    Some(e) => d.expiries.push(e),
                    None => d.persistent += 1,
                }
            }
        }
    }
    keys.dbs
        .retain(|_, k| k.persistent > 0 || !k.expiries.is_empty());
    Ok(keys)
}

/// A length as RDB encodes it: a number, or the marker of a specially
/// encoded string.
enum Len {
    Plain(u64),
    Encoded(u8),
}

struct Reader<R> {
    r: std::io::BufReader<R>,
    pos: u64,
}

impl<R: Read> Reader<R> {
    fn format_at(&self, offset: u64, what: impl Into<String>) -> RdbError {
        RdbError::Format {
            offset,
            what: what.into(),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, RdbError> {
        Ok(self.array::<1>()?[0])
    }

    fn skip(&mut self, n: u64) -> Result<(), RdbError> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }

    fn len(&mut self) -> Result<Len, RdbError> {
        let at = self.pos;
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => Len::Plain(u64::from(b & 0x3f)),
            1 => Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(self.u8()?)),
            2 => match b {
                0x80 => Len::Plain(u64::from(u32::from_be_bytes(self.array()?))),
                0x81 => Len::Plain(u64::from_be_bytes(self.array()?)),
                _ => return Err(self.format_at(at, format!("unknown length encoding {b:#x}"))),
            },
            _ => Len::Encoded(b & 0x3f),
        })
    }

    fn length(&mut self) -> Result<u64, RdbError> {
        let at = self.pos;
        match self.len()? {
            Len::Plain(n) => Ok(n),
            Len::Encoded(_) => Err(self.format_at(at, "a string encoding where a length belongs")),
        }
    }

    fn skip_string(&mut self) -> Result<(), RdbError> {
        self.string_head(0).map(drop)
    }

    /// Reads a whole string, returning up to `keep` of its first bytes
    /// (decompressed if it is LZF-compressed).
    fn string_head(&mut self, keep: usize) -> Result<Vec<u8>, RdbError> {
        let at = self.pos;
        match self.len()? {
            Len::Plain(n) => {
                let take = n.min(keep as u64);
                let mut head = vec![0u8; take as usize];
                self.r.read_exact(&mut head)?;
                self.pos += take;
                self.skip(n - take)?;
                Ok(head)
            }
            // Integers stored as 1, 2 or 4 bytes.
            Len::Encoded(0) => self.skip(1).map(|_| Vec::new()),
            Len::Encoded(1) => self.skip(2).map(|_| Vec::new()),
            Len::Encoded(2) => self.skip(4).map(|_| Vec::new()),
            Len::Encoded(3) => {
                let compressed = self.length()?;
                let plain = self.length()?;
                if keep == 0 {
                    self.skip(compressed)?;
                    return Ok(Vec::new());
                }
                let want = (plain.min(keep as u64)) as usize;
                let (head, used) =
                    lzf_head(&mut (&mut self.r).take(compressed), want).map_err(|e| match e {
                        LzfError::Io(e) => RdbError::Io(e),
                        LzfError::Corrupt => self.format_at(at, "a compressed string is corrupt"),
                    })?;
                self.pos += used;
                self.skip(compressed - used)?;
                Ok(head)
            }
            Len::Encoded(e) => Err(self.format_at(at, format!("unknown string encoding {e}"))),
        }
    }

    /// Skips a module value: typed items up to its end marker.
    fn skip_module_value(&mut self) -> Result<(), RdbError> {
        loop {
            let at = self.pos;
            match self.length()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.length()?;
                }
                3 => self.skip(4)?,
                4 => self.skip(8)?,
                5 => self.skip_string()?,
                op => return Err(self.format_at(at, format!("unknown module item {op}"))),
            }
        }
    }

    /// The element count a container blob's header gives (`None`: more
    /// than its header can say, so not empty).
    fn container(&mut self, c: Container) -> Result<Value, RdbError> {
        let head = self.string_head(HEADER)?;
        let le16 = |i: usize| head.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let le32 = |i: usize| {
            head.get(i..i + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let count = match c {
            Container::Ziplist => le16(8).map(u64::from).filter(|&n| n != 0xffff),
            Container::Listpack => le16(4).map(u64::from).filter(|&n| n != 0xffff),
            Container::Intset => le32(4).map(u64::from),
            Container::Zipmap => match head.first() {
                Some(&n) if n < 254 => Some(u64::from(n)),
                // 254: count unknown; empty if the end marker comes first.
                Some(_) => Some(u64::from(head.get(1) != Some(&0xff))),
                None => Some(0),
            },
        };
        Ok(if count == Some(0) {
            Value::Empty
        } else {
            Value::Key
        })
    }

    /// Skips `n` strings.
    fn skip_strings(&mut self, n: u64) -> Result<(), RdbError> {
        for _ in 0..n {
            self.skip_string()?;
        }
        Ok(())
    }

    /// Skips one value of type `kind` (whose type byte is at `at`) and
    /// says what it was.
    fn skip_value(&mut self, kind: u8, version: u32, at: u64) -> Result<Value, RdbError> {
        let nonempty = |n: u64| if n == 0 { Value::Empty } else { Value::Key };
        Ok(match kind {
            T_STRING => {
                self.skip_string()?;
                Value::Key
            }
            T_LIST | T_SET => {
                let n = self.length()?;
                self.skip_strings(n)?;
                nonempty(n)
            }
            T_ZSET => self.skip_zset()?,
            T_ZSET_2 => {
                let n = self.length()?;
                for _ in 0..n {
                    self.skip_string()?;
                    self.skip(8)?;
                }
                nonempty(n)
            }
            T_HASH => {
                let n = self.length()?;
                self.skip_strings(n.saturating_mul(2))?;
                nonempty(n)
            }
            T_MODULE_2 => {
                self.length()?;
                self.skip_module_value()?;
                Value::Key
            }
            T_MODULE_PRE_GA => {
                return Err(self.format_at(
                    at,
                    "a module value from a Redis 4.0 release candidate, which cannot be read without its module",
                ));
            }
            T_HASH_ZIPMAP => self.container(Container::Zipmap)?,
            T_LIST_ZIPLIST | T_ZSET_ZIPLIST | T_HASH_ZIPLIST => {
                self.container(Container::Ziplist)?
            }
            T_SET_INTSET => self.container(Container::Intset)?,
            T_HASH_LISTPACK | T_ZSET_LISTPACK | T_SET_LISTPACK => {
                self.container(Container::Listpack)?
            }
            T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => self.skip_quicklist(kind, at)?,
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                self.skip_stream(kind)?;
                // An empty stream is a key all the same.
                Value::Key
            }
            T_HASH_METADATA | T_HASH_METADATA_PRE_GA => self.skip_hash_metadata(kind)?,
            T_HASH_LISTPACK_EX | T_HASH_LISTPACK_EX_PRE_GA => {
                if kind == T_HASH_LISTPACK_EX {
                    self.skip(8)?;
                }
                match self.container(Container::Listpack)? {
                    Value::Empty => Value::Empty,
                    _ => Value::FieldsExpire,
                }
            }
            other => {
                return Err(self.format_at(
                    at,
                    format!(
                        "unknown value type {other} (RDB version {version}: written by a newer Redis than this kompose-dr knows?)"
                    ),
                ));
            }
        })
    }

    /// Skips a sorted set with scores as text (`T_ZSET`).
    fn skip_zset(&mut self) -> Result<Value, RdbError> {
        let n = self.length()?;
        for _ in 0..n {
            self.skip_string()?;
            // A score as text: a length byte, or 253-255 for
            // NaN and the infinities.
            let l = self.u8()?;
            if l < 253 {
                self.skip(u64::from(l))?;
            }
        }
        Ok(if n == 0 { Value::Empty } else { Value::Key })
    }

    /// Skips a quicklist (`kind`: version 1 or 2, whose type byte is at
    /// `at`): its nodes, plain strings or ziplists and listpacks.
    fn skip_quicklist(&mut self, kind: u8, at: u64) -> Result<Value, RdbError> {
        let nodes = self.length()?;
        let mut any = false;
        for _ in 0..nodes {
            let plain = if kind == T_LIST_QUICKLIST_2 {
                match self.length()? {
                    1 => true,
                    2 => false,
                    c => {
                        return Err(self.format_at(at, format!("unknown list node container {c}")));
                    }
                }
            } else {
                false
            };
            let node = if plain {
                self.skip_string()?;
                Value::Key
            } else if kind == T_LIST_QUICKLIST_2 {
                self.container(Container::Listpack)?
            } else {
                self.container(Container::Ziplist)?
            };
            any |= matches!(node, Value::Key);
        }
        Ok(if any { Value::Key } else { Value::Empty })
    }

    /// Skips a hash whose fields carry expiry times (`kind`: the release
    /// or the pre-GA encoding).
    fn skip_hash_metadata(&mut self, kind: u8) -> Result<Value, RdbError> {
        if kind == T_HASH_METADATA {
            self.skip(8)?; // the earliest field expiry
        }
        let n = self.length()?;
        let mut every_field_expires = n > 0;
        for _ in 0..n {
            every_field_expires &= self.length()? != 0; // a field's TTL; 0: none
            self.skip_string()?;
            self.skip_string()?;
        }
        Ok(match (n, every_field_expires) {
            (0, _) => Value::Empty,
            (_, true) => Value::FieldsExpire,
            (_, false) => Value::Key,
        })
    }

    /// Skips a stream: its listpacks, metadata, consumer groups and their
    /// pending entries and consumers.
    fn skip_stream(&mut self, kind: u8) -> Result<(), RdbError> {
        let listpacks = self.length()?;
        for _ in 0..listpacks {
            self.skip_string()?; // master ID
            self.skip_string()?; // entries
        }
        // length, last id (ms, seq); since v2: first id, max deleted id,
        // entries added.
        let fields = if kind >= T_STREAM_LISTPACKS_2 { 8 } else { 3 };
        for _ in 0..fields {
            self.length()?;
        }
        let groups = self.length()?;
        for _ in 0..groups {
            self.skip_string()?; // name
            self.length()?; // last id ms
            self.length()?; // last id seq
            if kind >= T_STREAM_LISTPACKS_2 {
                self.length()?; // entries read
            }
            let pending = self.length()?;
            for _ in 0..pending {
                self.skip(16 + 8)?; // raw id, delivery time
                self.length()?; // delivery count
            }
            let consumers = self.length()?;
            for _ in 0..consumers {
                self.skip_string()?; // name
                self.skip(8)?; // seen time
                if kind >= T_STREAM_LISTPACKS_3 {
                    self.skip(8)?; // active time
                }
                let owned = self.length()?;
                self.skip(owned.saturating_mul(16))?;
            }
        }
        Ok(())
    }
}

enum LzfError {
    Io(std::io::Error),
    Corrupt,
}

/// Decompresses the first `want` bytes of an LZF stream; returns them and
/// how many compressed bytes were read for them.
fn lzf_head(r: &mut impl Read, want: usize) -> Result<(Vec<u8>, u64), LzfError> {
    let mut out: Vec<u8> = Vec::with_capacity(want + 264);
    let mut used = 0u64;
    let mut byte = |used: &mut u64| -> Result<u8, LzfError> {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(LzfError::Io)?;
        *used += 1;
        Ok(b[0])
    };
    while out.len() < want {
        let ctrl = usize::from(byte(&mut used)?);
        if ctrl < 32 {
            for _ in 0..=ctrl {
                out.push(byte(&mut used)?);
            }
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(byte(&mut used)?);
            }
            let back = ((ctrl & 0x1f) << 8) + usize::from(byte(&mut used)?) + 1;
            let start = out.len().checked_sub(back).ok_or(LzfError::Corrupt)?;
            for i in 0..len + 2 {
                out.push(out[start + i]);
            }
        }
    }
    out.truncate(want);
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(n: u64) -> Vec<u8> {
        match n {
            0..0x40 => vec![n as u8],
            0x40..0x4000 => vec![0x40 | (n >> 8) as u8, n as u8],
            _ => {
                let mut v = vec![0x80];
                v.extend_from_slice(&(n as u32).to_be_bytes());
                v
            }
        }
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = len(b.len() as u64);
        v.extend_from_slice(b);
        v
    }

    /// An RDB 10 file around `body`, with an aux field and the end marker.
    fn file(body: &[u8]) -> Vec<u8> {
        let mut v = b"REDIS0010".to_vec();
        v.push(OP_AUX);
        v.extend(s(b"redis-ver"));
        v.extend(s(b"7.0.15"));
        v.extend_from_slice(body);
        v.push(OP_EOF);
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn key(kind: u8, name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend(s(name));
        v.extend_from_slice(value);
        v
    }

    fn expiring(ms: i64, k: Vec<u8>) -> Vec<u8> {
        let mut v = vec![OP_EXPIRETIME_MS];
        v.extend_from_slice(&ms.to_le_bytes());
        v.extend(k);
        v
    }

    /// A listpack header of `n` elements (the rest of the blob is not read).
    fn listpack(n: u16) -> Vec<u8> {
        let mut v = 7u32.to_le_bytes().to_vec();
        v.extend_from_slice(&n.to_le_bytes());
        v.push(0xff);
        v
    }

    #[test]
    fn keys_are_counted_per_database_with_their_expiry() {
        let mut body = Vec::new();
        body.extend(key(T_STRING, b"a", &s(b"1")));
        body.extend(expiring(5_000, key(T_STRING, b"session", &s(b"x"))));
        body.extend([OP_SELECTDB, 3, OP_RESIZEDB, 2, 1]);
        // An integer-encoded value, a list, a hash.
        body.extend(key(T_STRING, b"n", &[0xc0, 7]));
        let mut list = len(2);
        list.extend(s(b"x"));
        list.extend(s(b"y"));
        body.extend(expiring(9_000, key(T_LIST, b"l", &list)));
        let mut hash = len(1);
        hash.extend(s(b"f"));
        hash.extend(s(b"v"));
        body.extend(key(T_HASH, b"h", &hash));
        let keys = scan(&file(&body)[..]).unwrap();
        assert_eq!(keys.dbs[&0].persistent, 1);
        assert_eq!(keys.dbs[&0].expiries, vec![5_000]);
        assert_eq!(keys.dbs[&3].persistent, 2);
        assert_eq!(keys.dbs[&3].expiries, vec![9_000]);
        let at = |ms| keys.counts_at(ms);
        assert_eq!(
            at(0)["db0"],
            Counts {
                keys: 2,
                volatile: 1
            }
        );
        // Redis' rule: a key expires once the clock is past its expiry.
        assert_eq!(
            at(5_000)["db0"],
            Counts {
                keys: 2,
                volatile: 1
            }
        );
        assert_eq!(
            at(5_001)["db0"],
            Counts {
                keys: 1,
                volatile: 0
            }
        );
        assert_eq!(
            at(9_001)["db3"],
            Counts {
                keys: 2,
                volatile: 0
            }
        );
    }

    #[test]
    fn empty_containers_are_not_keys_as_redis_skips_them() {
        let mut body = Vec::new();
        body.extend(key(T_LIST, b"empty-list", &len(0)));
        body.extend(key(T_HASH_LISTPACK, b"empty-lp", &s(&listpack(0))));
        body.extend(key(T_SET_LISTPACK, b"lp", &s(&listpack(2))));
        let mut intset = 8u32.to_le_bytes().to_vec();
        intset.extend_from_slice(&0u32.to_le_bytes());
        body.extend(key(T_SET_INTSET, b"empty-intset", &s(&intset)));
        let mut ziplist = 11u32.to_le_bytes().to_vec();
        ziplist.extend_from_slice(&10u32.to_le_bytes());
        ziplist.extend_from_slice(&0u16.to_le_bytes());
        ziplist.push(0xff);
        body.extend(key(T_ZSET_ZIPLIST, b"empty-zl", &s(&ziplist)));
        // A list of two nodes, both empty; and one with a plain node.
        let mut ql = len(2);
        for _ in 0..2 {
            ql.extend(len(2));
            ql.extend(s(&listpack(0)));
        }
        body.extend(key(T_LIST_QUICKLIST_2, b"empty-ql", &ql));
        let mut ql = len(1);
        ql.extend(len(1));
        ql.extend(s(b"a big element"));
        body.extend(key(T_LIST_QUICKLIST_2, b"plain-ql", &ql));
        let keys = scan(&file(&body)[..]).unwrap();
        assert_eq!(keys.dbs[&0].persistent, 2, "{keys:?}");
    }

    #[test]
    fn a_compressed_container_header_is_decompressed() {
        // LZF: a literal run of the header, then a back reference that
        // repeats its last three bytes twice.
        let header = listpack(0);
        let mut lzf = vec![(header.len() - 1) as u8];
        lzf.extend_from_slice(&header);
        lzf.extend([(4 << 5), 2]);
        let plain = header.len() + 6;
        let mut blob = vec![0xc3];
        blob.extend(len(lzf.len() as u64));
        blob.extend(len(plain as u64));
        blob.extend(&lzf);
        let body = key(T_HASH_LISTPACK, b"h", &blob);
        assert!(scan(&file(&body)[..]).unwrap().dbs.is_empty());
        let (head, used) = lzf_head(&mut &lzf[..], plain).ok().unwrap();
        assert_eq!(used, lzf.len() as u64);
        assert_eq!(&head[..header.len()], &header[..]);
        assert_eq!(&head[header.len()..], &[0, 0, 0xff, 0, 0, 0xff]);
    }

    #[test]
    fn streams_modules_functions_and_field_ttls_are_understood() {
        let mut body = vec![OP_FUNCTION2];
        body.extend(s(
            b"#!lua name=lib\nredis.register_function('f', function() return 1 end)",
        ));
        body.extend([OP_MODULE_AUX, 5, 2, 2, 5]);
        body.extend(s(b"aux"));
        body.push(0);
        // A stream (v3) with one listpack, one group, one pending entry
        // and one consumer owning it.
        let mut st = len(1);
        st.extend(s(&[0; 16]));
        st.extend(s(&listpack(3)));
        st.extend([1, 5, 0, 1, 0, 0, 0, 1]); // length, ids, entries added
        st.extend(len(1));
        st.extend(s(b"group"));
        st.extend([5, 0, 1]);
        st.extend(len(1));
        st.extend([0; 24]);
        st.push(1);
        st.extend(len(1));
        st.extend(s(b"consumer"));
        st.extend([0; 16]);
        st.extend(len(1));
        st.extend([0; 16]);
        body.extend(key(T_STREAM_LISTPACKS_3, b"events", &st));
        // A module value: an unsigned, a double, a string, the end.
        let mut m = len(12345);
        m.extend([2, 9, 4]);
        m.extend([0; 8]);
        m.push(5);
        m.extend(s(b"payload"));
        m.push(0);
        body.extend(key(T_MODULE_2, b"module", &m));
        // A hash whose only field expires (Redis 7.4).
        let mut h = 1000i64.to_le_bytes().to_vec();
        h.extend(len(1));
        h.extend(len(1));
        h.extend(s(b"f"));
        h.extend(s(b"v"));
        body.extend(key(T_HASH_METADATA, b"hfe", &h));
        let keys = scan(&file(&body)[..]).unwrap();
        assert_eq!(keys.dbs[&0].persistent, 3);
        assert_eq!(keys.dbs[&0].may_vanish, 1);
    }

    #[test]
    fn damage_and_unknown_types_are_errors_that_say_where() {
        let body = key(T_STRING, b"a", &s(b"1"));
        let f = file(&body);
        let e = scan(&f[..f.len() - 12]).unwrap_err().to_string();
        assert_eq!(e, "the file ends early");
        let e = scan(&b"NOTRDB0010"[..]).unwrap_err().to_string();
        assert!(e.contains("not an RDB file"), "{e}");
        let e = scan(&file(&key(99, b"a", &s(b"1")))[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown value type 99"), "{e}");
        assert!(e.starts_with("at byte 27:"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_an_answer_never_a_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut f = b"REDIS0011".to_vec();
            f.extend(tail);
            let _ = scan(&f[..]);
        }
    }
}
