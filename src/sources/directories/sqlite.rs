//! SQLite databases inside a directory source: copied with SQLite's online
//! backup API into a private temporary file (a file copy of a live
//! database, or of its `-wal` beside it, can be torn), and described for
//! the facts: page count, `PRAGMA integrity_check`, rows per table.
//!
//! The copy is stored in rollback-journal mode (one self-contained file).
//! The copy is taken in one backup step: it reads every page inside one
//! read transaction, which in WAL mode does not block the writers and is
//! not restarted by their commits, so a database under constant writes
//! still yields a consistent copy of one committed state.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::model::facts::SqliteFacts;

/// How long a copy waits for a lock a writer holds (a database in rollback
/// journal mode being written).
const BUSY: Duration = Duration::from_secs(30);

/// Why a SQLite database could not be copied or described.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// SQLite refused a step.
    #[error("cannot {doing} SQLite {}: {context}{source}", .path.display())]
    Sqlite {
        /// `copy` or `read`.
        doing: &'static str,
        /// The database.
        path: PathBuf,
        /// What was being done, if more than opening (`counting the rows
        /// of t: `).
        context: String,
        /// SQLite's error (boxed: it is large).
        source: Box<rusqlite::Error>,
    },
    /// The copy's file could not be created.
    #[error("cannot copy SQLite {}: creating {}: {source}", .live.display(), .copy.display())]
    Create {
        /// The live database.
        live: PathBuf,
        /// The copy.
        copy: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A writer held its lock for longer than the copy waits.
    #[error("cannot copy SQLite {}: the database stayed locked for {secs}s", .live.display())]
    Locked {
        /// The live database.
        live: PathBuf,
        /// How long the copy waited.
        secs: u64,
    },
}

/// `map_err` for a SQLite step on `path`.
fn failed(
    doing: &'static str,
    path: &Path,
    context: String,
) -> impl FnOnce(rusqlite::Error) -> SqliteError {
    let path = path.to_owned();
    move |source| SqliteError::Sqlite {
        doing,
        path,
        context,
        source: Box::new(source),
    }
}

/// Copies the live database `live` into `copy` (created 0600; must not
/// exist) with the online backup API.
pub fn snapshot(live: &Path, copy: &Path) -> Result<(), SqliteError> {
    let what = || failed("copy", live, String::new());
    let src = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(what())?;
    src.busy_timeout(BUSY).map_err(what())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(copy)
        .map_err(|source| SqliteError::Create {
            live: live.to_owned(),
            copy: copy.to_owned(),
            source,
        })?;
    let mut dst = Connection::open(copy).map_err(what())?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(what())?;
        let deadline = std::time::Instant::now() + BUSY;
        loop {
            // -1: every page in one step, inside one read transaction.
            match backup.step(-1).map_err(what())? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ if std::time::Instant::now() > deadline => {
                    return Err(SqliteError::Locked {
                        live: live.to_owned(),
                        secs: BUSY.as_secs(),
                    });
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // The copy must be one self-contained file, readable without a -wal or
    // -shm beside it (by hand, read-only): rollback-journal mode. An
    // application that wants WAL sets it again when it opens the file.
    dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(what())?;
    dst.close().map_err(|(_, e)| what()(e))?;
    Ok(())
}

/// Describes the database file `db`: page count, integrity check, rows per
/// table. Opens it read-write when it has a `-wal` beside it (so that the
/// log is applied), else read-only.
pub fn describe(db: &Path) -> Result<SqliteFacts, SqliteError> {
    let what = || failed("read", db, String::new());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let flags = if Path::new(&wal).exists() {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let con = Connection::open_with_flags(db, flags).map_err(what())?;
    con.busy_timeout(BUSY).map_err(what())?;
    let integrity: Vec<String> = {
        let mut st = con.prepare("PRAGMA integrity_check").map_err(what())?;
        st.query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(what())?
    };
    let pages: i64 = con
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(what())?;
    let names: Vec<String> = {
        let mut st = con
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .map_err(what())?;
        st.query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(what())?
    };
    let mut tables = BTreeMap::new();
    for t in names {
        let n: i64 = con
            .query_row(
                &format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\"")),
                [],
                |r| r.get(0),
            )
            .map_err(failed("read", db, format!("counting the rows of {t}: ")))?;
        tables.insert(t, n.max(0) as u64);
    }
    Ok(SqliteFacts {
        pages: pages.max(0) as u64,
        integrity: integrity.join("; "),
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_database_under_writes_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("db.sqlite3");
        let con = Connection::open(&live).unwrap();
        con.pragma_update(None, "journal_mode", "WAL").unwrap();
        con.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3);")
            .unwrap();
        let copy = dir.path().join("copy.sqlite3");
        snapshot(&live, &copy).unwrap();
        con.execute("INSERT INTO t VALUES (4)", []).unwrap();
        let f = describe(&copy).unwrap();
        assert_eq!(f.integrity, "ok");
        assert_eq!(f.tables.get("t"), Some(&3));
        assert!(f.pages > 0);
        let mut wal = copy.as_os_str().to_owned();
        wal.push("-wal");
        assert!(!Path::new(&wal).exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
