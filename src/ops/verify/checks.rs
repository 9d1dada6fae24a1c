//! The checks `verify` runs on restored data: row counts, key counts and
//! certificates against the facts recorded at backup time.

use std::collections::BTreeMap;

use chrono::Utc;

use super::Check;
use crate::clients::postgres::database::{self, Ownership};
use crate::model::config::{PostgresConfig, RedisConfig};
use crate::model::facts::SourceFacts;
use crate::sources::redis::rdb::{Counts, DbKeys, FileKeys};

/// Compares the row counts of database `db` on the scratch server `pg`
/// with those recorded in the facts.
pub(super) async fn compare_tables(
    pg: &PostgresConfig,
    db: &str,
    facts: Option<&SourceFacts>,
) -> Check {
    let Some(SourceFacts::Postgres {
        tables: recorded, ..
    }) = facts
    else {
        return Check::new(
            "row counts",
            false,
            "the facts hold no row counts for this database",
        );
    };
    let restored = match crate::clients::postgres::connect(pg, db).await {
        Ok(client) => crate::sources::postgres::count_rows(&client, db).await,
        Err(e) => Err(e),
    };
    let restored = match restored {
        Ok(r) => r,
        Err(e) => return Check::new("row counts", false, e.to_string()),
    };
    let problems = table_differences(recorded, &restored);
    if problems.is_empty() {
        Check::new(
            "row counts",
            true,
            format!(
                "{} tables, {} rows, as recorded",
                restored.len(),
                restored.values().sum::<u64>()
            ),
        )
    } else {
        Check::new("row counts", false, problems.join("; "))
    }
}

/// Compares the restored database object (owner, ACL, settings, comment,
/// encoding, locale) with the one recorded at backup time. With
/// [`Ownership::Skip`] (no roles were restored) owner, ACL and per-role
/// settings are not compared, and the check says so.
pub(super) async fn compare_database(
    pg: &PostgresConfig,
    db: &str,
    facts: Option<&SourceFacts>,
    ownership: Ownership,
) -> Check {
    const NAME: &str = "database properties";
    let Some(SourceFacts::Postgres {
        database: Some(recorded),
        ..
    }) = facts
    else {
        return Check::new(
            NAME,
            true,
            "not recorded in this snapshot (taken before kompose-dr recorded them): not compared",
        );
    };
    let restored = match crate::clients::postgres::connect(pg, &pg.endpoint.maintenance_db).await {
        Ok(client) => database::read(&client, db).await,
        Err(e) => Err(e),
    };
    let restored = match restored {
        Ok(r) => r,
        Err(e) => return Check::new(NAME, false, e.to_string()),
    };
    let problems = database::differences(recorded, &restored, ownership);
    if !problems.is_empty() {
        return Check::new(NAME, false, problems.join("; "));
    }
    let mut detail = format!(
        "encoding {}, {} locale {}, settings and comment as recorded",
        recorded.encoding,
        recorded.locale_provider,
        recorded.locale.as_deref().unwrap_or(&recorded.collate)
    );
    match ownership {
        Ownership::Recorded => detail.push_str(&format!(
            "; owner {} and privileges as recorded",
            recorded.owner
        )),
        Ownership::Skip => {
            detail.push_str("; owner and privileges not compared (the snapshot has no roles)")
        }
    }
    Check::new(NAME, true, detail)
}

/// What differs between the recorded and the restored row counts.
pub fn table_differences(
    recorded: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (t, n) in recorded {
        match restored.get(t) {
            None => problems.push(format!("table {t} is missing ({n} rows recorded)")),
            Some(m) if m != n => problems.push(format!("table {t} has {m} rows, {n} recorded")),
            Some(_) => {}
        }
    }
    for t in restored.keys().filter(|t| !recorded.contains_key(*t)) {
        problems.push(format!("table {t} was not recorded at backup time"));
    }
    problems
}

/// When the scratch Redis loaded the restored files: it started loading
/// after `started` and its counts were read before `read` (milliseconds
/// since the epoch); `aof` if it loaded an AOF.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadWindow {
    pub started: i64,
    pub read: i64,
    pub aof: bool,
}

/// How far apart the clocks of kompose-dr and the scratch Redis may read
/// (one host clock, read at different moments by two processes).
const SLACK_MS: i64 = 1000;

/// Why the restored Redis files' keys could not be counted.
#[derive(Debug, thiserror::Error)]
pub(super) enum Uncounted {
    /// The files could not be read or parsed.
    #[error(transparent)]
    Read(#[from] crate::sources::redis::RedisFileError),
    /// The counting task did not finish.
    #[error("the key count failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Compares the scratch Redis at `cfg`, which loaded the restored files in
/// `window`, with `file` (those files counted before it loaded them) and
/// with the facts.
pub(super) async fn compare_keys(
    cfg: &RedisConfig,
    facts: Option<&SourceFacts>,
    file: Result<FileKeys, Uncounted>,
    started: i64,
    aof: bool,
) -> Check {
    let Some(SourceFacts::Redis {
        keys,
        volatile,
        counted_at,
    }) = facts
    else {
        return Check::new(
            "key counts",
            false,
            "the facts hold no key counts for Redis",
        );
    };
    let loaded = async {
        let mut con = crate::clients::redis::connect(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let info = crate::clients::redis::info(&mut con, "keyspace")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(crate::sources::redis::parse_keyspace_counts(&info))
    }
    .await;
    let window = LoadWindow {
        started,
        read: Utc::now().timestamp_millis(),
        aof,
    };
    match loaded {
        Err(e) => Check::new("key counts", false, e),
        Ok(loaded) => {
            let file = file.map_err(|e| e.to_string());
            key_check(
                &Recorded {
                    keys,
                    volatile,
                    counted_at: counted_at.map(|t| t.timestamp_millis()),
                },
                file.as_ref().map_err(String::as_str),
                &loaded,
                window,
            )
        }
    }
}

/// The key counts of the facts.
pub(super) struct Recorded<'a> {
    pub keys: &'a BTreeMap<String, u64>,
    pub volatile: &'a BTreeMap<String, u64>,
    /// When they were counted in the file (absent: read from the server).
    pub counted_at: Option<i64>,
}

/// The verdict on Redis' keys, like with like:
///
/// 1. the restored file, counted at the facts' moment by the backup's own
///    rule, must hold exactly the recorded counts (the archive is the file
///    the backup counted);
/// 2. what Redis loaded from it must be what the file holds now: every key
///    without a TTL, and of the keys with one, at least those whose expiry
///    is after the counts were read and at most those not yet expired when
///    loading started (Redis skips those when it loads an RDB; from an AOF
///    base it loads them all and reclaims them later).
///
/// Keys with a TTL that ran out between the backup and the load are the
/// only difference allowed, so expiring sessions cannot fail a drill and a
/// key missing for any other reason does. Facts from an older version
/// (counted on the server after the save) are compared as they were: they
/// must equal what Redis loaded, unless the restored file can be counted,
/// which is then the reference.
pub(super) fn key_check(
    recorded: &Recorded<'_>,
    file: Result<&FileKeys, &str>,
    loaded: &BTreeMap<String, Counts>,
    w: LoadWindow,
) -> Check {
    let file = match file {
        Ok(f) => f,
        Err(why) if recorded.counted_at.is_some() => {
            return Check::new(
                "key counts",
                false,
                format!("cannot count the keys in the restored files: {why}"),
            );
        }
        Err(_) => return loaded_as_recorded(recorded, loaded),
    };
    let mut problems = Vec::new();
    if let Some(at) = recorded.counted_at {
        problems.extend(file_as_recorded(recorded, file, at));
    }
    problems.extend(loaded_as_file(file, loaded, &w));
    if !problems.is_empty() {
        return Check::new("key counts", false, problems.join("; "));
    }
    Check::new("key counts", true, agreed(recorded, loaded))
}

/// Facts of an older version with no countable file: what Redis loaded
/// must equal the recorded counts.
fn loaded_as_recorded(recorded: &Recorded<'_>, loaded: &BTreeMap<String, Counts>) -> Check {
    let loaded_total: u64 = loaded.values().map(|c| c.keys).sum();
    let found: BTreeMap<String, u64> = loaded.iter().map(|(db, c)| (db.clone(), c.keys)).collect();
    if &found == recorded.keys {
        Check::new(
            "key counts",
            true,
            format!(
                "{loaded_total} keys in {} database(s), as recorded",
                found.len()
            ),
        )
    } else {
        Check::new(
            "key counts",
            false,
            format!(
                "Redis loaded {found:?}, the backup recorded {:?}",
                recorded.keys
            ),
        )
    }
}

/// Rule 1: the restored file, counted at the facts' moment `at`, holds
/// exactly the recorded counts; the databases where it does not.
fn file_as_recorded(recorded: &Recorded<'_>, file: &FileKeys, at: i64) -> Vec<String> {
    let in_file = file.counts_at(at);
    let dbs: std::collections::BTreeSet<&String> =
        in_file.keys().chain(recorded.keys.keys()).collect();
    let mut problems = Vec::new();
    for db in dbs {
        let f = in_file.get(db).copied().unwrap_or_default();
        let rk = recorded.keys.get(db).copied().unwrap_or(0);
        let rv = recorded.volatile.get(db).copied().unwrap_or(0);
        if (f.keys, f.volatile) != (rk, rv) {
            problems.push(format!(
                "{db}: the restored file holds {} keys ({} with a TTL) at the backup's time, the backup recorded {rk} ({rv})",
                f.keys, f.volatile
            ));
        }
    }
    problems
}

/// Rule 2: what Redis loaded in window `w` is what the file holds, keys
/// whose TTL ran out aside; the databases where it is not.
fn loaded_as_file(
    file: &FileKeys,
    loaded: &BTreeMap<String, Counts>,
    w: &LoadWindow,
) -> Vec<String> {
    let file_dbs: BTreeMap<String, &DbKeys> = file
        .dbs
        .iter()
        .map(|(n, k)| (format!("db{n}"), k))
        .collect();
    let dbs: std::collections::BTreeSet<&String> = file_dbs.keys().chain(loaded.keys()).collect();
    let empty = DbKeys::default();
    let mut problems = Vec::new();
    for db in dbs {
        let k = file_dbs.get(db).copied().unwrap_or(&empty);
        let l = loaded.get(db).copied().unwrap_or_default();
        let persistent = l.keys.saturating_sub(l.volatile);
        if persistent > k.persistent || persistent + k.may_vanish < k.persistent {
            problems.push(format!(
                "{db}: Redis loaded {persistent} keys without a TTL, the restored file holds {}",
                k.persistent
            ));
        }
        let least = k
            .volatile_at(w.read + SLACK_MS)
            .saturating_sub(k.may_vanish);
        let most = if w.aof {
            k.expiries.len() as u64
        } else {
            k.volatile_at(w.started - SLACK_MS)
        };
        if l.volatile < least || l.volatile > most {
            problems.push(format!(
                "{db}: Redis loaded {} keys with a TTL, but {least} of the restored file's {} had not expired yet",
                l.volatile,
                k.expiries.len()
            ));
        }
    }
    problems
}

/// The detail of counts that agree.
fn agreed(recorded: &Recorded<'_>, loaded: &BTreeMap<String, Counts>) -> String {
    let loaded_total: u64 = loaded.values().map(|c| c.keys).sum();
    let recorded_total: u64 = recorded.keys.values().sum();
    let loaded_volatile: u64 = loaded.values().map(|c| c.volatile).sum();
    match recorded.counted_at {
        Some(_) => {
            let recorded_volatile: u64 = recorded.volatile.values().sum();
            let mut d = format!(
                "{recorded_total} keys in {} database(s), as recorded",
                recorded.keys.len()
            );
            if recorded_volatile > 0 {
                d.push_str(&format!(
                    "; {recorded_volatile} with a TTL, of which Redis still held {loaded_volatile}"
                ));
            }
            d
        }
        None => format!(
            "{loaded_total} keys in {} database(s), as the restored file holds them \
             (the backup recorded {recorded_total}, read from the server after the save)",
            loaded.len()
        ),
    }
}

/// Checks a restored ACME store: its certificates decode as recorded, and
/// none expires within 14 days (a warning).
pub(super) fn check_file(path: &std::path::Path, facts: Option<&SourceFacts>) -> Vec<Check> {
    let Some(SourceFacts::File {
        certificates: Some(recorded),
    }) = facts
    else {
        return Vec::new();
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            return vec![Check::new(
                "certificates",
                false,
                format!("cannot read the restored file: {e}"),
            )];
        }
    };
    let Some(found) = crate::sources::acme::certificates(&data) else {
        return vec![Check::new(
            "certificates",
            false,
            "the restored file is not an ACME store any more",
        )];
    };
    let mut checks = Vec::new();
    let undecodable: Vec<&str> = found
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.main.as_str())
        .collect();
    let same = found.len() == recorded.len()
        && found
            .iter()
            .zip(recorded)
            .all(|(a, b)| a.main == b.main && a.domains == b.domains && a.not_after == b.not_after);
    checks.push(Check::new(
        "certificates",
        same && undecodable.is_empty(),
        if !undecodable.is_empty() {
            format!(
                "certificates that do not decode: {}",
                undecodable.join(", ")
            )
        } else if same {
            format!(
                "{} certificate(s) decode with the recorded domains and expiry",
                found.len()
            )
        } else {
            "the certificates differ from those recorded at backup time".to_owned()
        },
    ));
    let soon = Utc::now() + chrono::Duration::days(14);
    for c in found
        .iter()
        .filter(|c| c.not_after.is_some_and(|t| t < soon))
    {
        let mut w = Check::new(
            format!("certificate {} expiry", c.main),
            false,
            format!(
                "expires {} (within 14 days)",
                c.not_after.expect("filtered").to_rfc3339()
            ),
        );
        w.warning = true;
        checks.push(w);
    }
    checks
}

/// Counts the regular files under `root` and their bytes (symlinks not
/// followed).
fn count_tree(root: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                files += 1;
                bytes += e.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

/// Checks a restored directory tree against its facts: the same number
/// of files and bytes, and every SQLite database opens, passes `PRAGMA
/// integrity_check` and holds the recorded row counts.
pub(super) fn check_directory(root: &std::path::Path, facts: Option<&SourceFacts>) -> Vec<Check> {
    let Some(SourceFacts::Directory {
        files,
        bytes,
        sqlite,
    }) = facts
    else {
        return vec![Check::new(
            "files",
            false,
            "the facts hold nothing for this directory",
        )];
    };
    let mut checks = vec![match count_tree(root) {
        Ok((f, b)) => Check::new(
            "files",
            f == *files && b == *bytes,
            if f == *files && b == *bytes {
                format!("{f} files, {b} bytes, as recorded")
            } else {
                format!(
                    "{f} files, {b} bytes restored; the backup recorded {files} files, {bytes} bytes"
                )
            },
        ),
        Err(e) => Check::new(
            "files",
            false,
            format!("cannot read the restored tree: {e}"),
        ),
    }];
    for (rel, recorded) in sqlite {
        let name = format!("sqlite {rel}");
        let check = match crate::sources::directories::sqlite::describe(&root.join(rel)) {
            Err(e) => Check::new(name, false, e.to_string()),
            Ok(found) if found.integrity != "ok" => {
                Check::new(name, false, format!("integrity_check: {}", found.integrity))
            }
            Ok(found) => {
                let differ = table_differences(&recorded.tables, &found.tables);
                if differ.is_empty() {
                    Check::new(
                        name,
                        true,
                        format!(
                            "integrity ok; {} tables, {} rows, as recorded",
                            found.tables.len(),
                            found.tables.values().sum::<u64>()
                        ),
                    )
                } else {
                    Check::new(
                        name,
                        false,
                        format!("integrity ok, but {}", differ.join("; ")),
                    )
                }
            }
        };
        checks.push(check);
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 100 keys without a TTL and 1000 expiring at 10 000 ms in
    /// db0; the facts counted at 5 000 ms.
    fn sessions() -> (FileKeys, BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let mut file = FileKeys::default();
        file.dbs.insert(
            0,
            DbKeys {
                persistent: 100,
                expiries: vec![10_000; 1000],
                may_vanish: 0,
            },
        );
        let keys = [("db0".to_owned(), 1100)].into();
        let volatile = [("db0".to_owned(), 1000)].into();
        (file, keys, volatile)
    }

    fn loaded(keys: u64, volatile: u64) -> BTreeMap<String, Counts> {
        [("db0".to_owned(), Counts { keys, volatile })].into()
    }

    const AFTER_EXPIRY: LoadWindow = LoadWindow {
        started: 20_000,
        read: 20_100,
        aof: false,
    };

    #[test]
    fn keys_whose_ttl_ran_out_since_the_backup_do_not_fail_the_check() {
        let (file, keys, volatile) = sessions();
        let rec = Recorded {
            keys: &keys,
            volatile: &volatile,
            counted_at: Some(5_000),
        };
        let c = key_check(&rec, Ok(&file), &loaded(100, 0), AFTER_EXPIRY);
        assert!(c.ok, "{c:?}");
        assert_eq!(
            c.detail,
            "1100 keys in 1 database(s), as recorded; 1000 with a TTL, of which Redis still held 0"
        );
        // Loaded from an AOF base they are all there until reclaimed.
        let aof = LoadWindow {
            aof: true,
            ..AFTER_EXPIRY
        };
        assert!(key_check(&rec, Ok(&file), &loaded(1100, 1000), aof).ok);
        // Before they expire they must all be there.
        let early = LoadWindow {
            started: 6_000,
            read: 6_100,
            aof: false,
        };
        assert!(key_check(&rec, Ok(&file), &loaded(1100, 1000), early).ok);
        let c = key_check(&rec, Ok(&file), &loaded(1099, 999), early);
        assert!(!c.ok);
        assert!(
            c.detail
                .contains("db0: Redis loaded 999 keys with a TTL, but 1000 of the restored file's 1000 had not expired yet"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn a_missing_key_or_facts_that_differ_from_the_file_fail() {
        let (file, keys, volatile) = sessions();
        let rec = Recorded {
            keys: &keys,
            volatile: &volatile,
            counted_at: Some(5_000),
        };
        let c = key_check(&rec, Ok(&file), &loaded(99, 0), AFTER_EXPIRY);
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "db0: Redis loaded 99 keys without a TTL, the restored file holds 100"
        );
        let more: BTreeMap<String, u64> = [("db0".to_owned(), 1101)].into();
        let rec = Recorded { keys: &more, ..rec };
        let c = key_check(&rec, Ok(&file), &loaded(100, 0), AFTER_EXPIRY);
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "db0: the restored file holds 1100 keys (1000 with a TTL) at the backup's time, the backup recorded 1101 (1000)"
        );
        // Facts that need the file counted, and a file that cannot be.
        let c = key_check(
            &rec,
            Err("the file ends early"),
            &loaded(100, 0),
            AFTER_EXPIRY,
        );
        assert!(!c.ok);
        assert!(c.detail.contains("the file ends early"), "{}", c.detail);
    }

    #[test]
    fn facts_of_older_versions_compare_as_before_or_with_the_file() {
        let (file, keys, _) = sessions();
        let none = BTreeMap::new();
        let rec = Recorded {
            keys: &keys,
            volatile: &none,
            counted_at: None,
        };
        assert!(
            key_check(
                &rec,
                Err("AOF with writes"),
                &loaded(1100, 1000),
                AFTER_EXPIRY
            )
            .ok
        );
        assert!(!key_check(&rec, Err("AOF with writes"), &loaded(100, 0), AFTER_EXPIRY).ok);
        let c = key_check(&rec, Ok(&file), &loaded(100, 0), AFTER_EXPIRY);
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail.contains("as the restored file holds them"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn table_differences_are_named() {
        let rec: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.b".into(), 1)].into();
        let got: BTreeMap<String, u64> = [("public.a".into(), 2), ("public.c".into(), 0)].into();
        let d = table_differences(&rec, &got);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("public.a has 2 rows, 3 recorded"));
        assert!(d[1].contains("public.b is missing"));
        assert!(d[2].contains("public.c was not recorded"));
        assert!(table_differences(&rec, &rec).is_empty());
    }
}
