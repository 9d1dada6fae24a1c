//! A drill's own checks (`[[check]]`): a query on a restored database, a
//! key count in the restored Redis, the certificates of a restored ACME
//! store, or the file count of a restored directory.
//!
//! The file format has one table with optional keys; [`CheckFile::validate`]
//! turns it into a [`DrillCheck`], in which each kind carries exactly what
//! it needs, so nothing downstream checks combinations again.

use chrono::Utc;
use serde::Deserialize;

use crate::error::InvalidInput;
use crate::ops::verify::{Check, Restored};

/// One `[[check]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckFile {
    source: String,
    sql: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    equals: Option<String>,
    min_keys: Option<u64>,
    min_files: Option<u64>,
    min_certificates: Option<usize>,
    max_expired: Option<usize>,
}

/// One of the drill's own checks.
#[derive(Debug, Clone, PartialEq)]
pub enum DrillCheck {
    /// A query on the restored database `postgres/<db>`; the first column
    /// of its first row is compared.
    Sql {
        /// The source (`postgres/<db>`).
        source: String,
        /// The query.
        sql: String,
        /// What the value must be.
        expect: SqlExpect,
    },
    /// The restored Redis must hold at least `min` keys (in db0).
    MinKeys {
        /// The source (`redis`).
        source: String,
        /// The least number of keys.
        min: u64,
    },
    /// The restored directory (`directories/<name>`) must hold at least
    /// `min` regular files.
    MinFiles {
        /// The source (`directories/<name>`).
        source: String,
        /// The least number of files.
        min: u64,
    },
    /// The restored ACME store's certificates.
    Certificates {
        /// The source (`files/<name>`).
        source: String,
        /// What the certificates must satisfy.
        limits: CertificateLimits,
    },
}

/// What an SQL check's value must be.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlExpect {
    /// Exactly this text (and, if given, a number within the bound).
    Equals {
        /// The text.
        text: String,
        /// A bound given beside it.
        within: Option<Bound>,
    },
    /// A number within the bound.
    Within(Bound),
}

/// A numeric bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// `min`.
    AtLeast(f64),
    /// `max`.
    AtMost(f64),
    /// `min` and `max`.
    Between(f64, f64),
}

/// What the certificates of an ACME store must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateLimits {
    /// At least this many certificates.
    AtLeast(usize),
    /// At most this many expired.
    MaxExpired(usize),
    /// Both.
    Both {
        /// At least this many certificates.
        min: usize,
        /// At most this many expired.
        max_expired: usize,
    },
}

impl Bound {
    fn new(min: Option<f64>, max: Option<f64>) -> Option<Bound> {
        match (min, max) {
            (Some(lo), Some(hi)) => Some(Bound::Between(lo, hi)),
            (Some(lo), None) => Some(Bound::AtLeast(lo)),
            (None, Some(hi)) => Some(Bound::AtMost(hi)),
            (None, None) => None,
        }
    }

    fn holds(self, value: Option<f64>) -> bool {
        value.is_some_and(|n| match self {
            Bound::AtLeast(lo) => n >= lo,
            Bound::AtMost(hi) => n <= hi,
            Bound::Between(lo, hi) => n >= lo && n <= hi,
        })
    }
}

impl CertificateLimits {
    fn new(min: Option<usize>, max_expired: Option<usize>) -> Option<CertificateLimits> {
        match (min, max_expired) {
            (Some(min), Some(max_expired)) => Some(CertificateLimits::Both { min, max_expired }),
            (Some(min), None) => Some(CertificateLimits::AtLeast(min)),
            (None, Some(max)) => Some(CertificateLimits::MaxExpired(max)),
            (None, None) => None,
        }
    }

    fn min(self) -> Option<usize> {
        match self {
            CertificateLimits::AtLeast(m) | CertificateLimits::Both { min: m, .. } => Some(m),
            CertificateLimits::MaxExpired(_) => None,
        }
    }

    fn max_expired(self) -> Option<usize> {
        match self {
            CertificateLimits::MaxExpired(m) | CertificateLimits::Both { max_expired: m, .. } => {
                Some(m)
            }
            CertificateLimits::AtLeast(_) => None,
        }
    }
}

impl CheckFile {
    /// The check `check[i]` describes, or what is wrong with it.
    pub(super) fn validate(self, i: usize) -> Result<DrillCheck, InvalidInput> {
        let CheckFile {
            source,
            sql,
            min,
            max,
            equals,
            min_keys,
            min_files,
            min_certificates,
            max_expired,
        } = self;
        let certificates = CertificateLimits::new(min_certificates, max_expired);
        if let Some(min) = min_files {
            if sql.is_some() || min_keys.is_some() || certificates.is_some() {
                return Err(InvalidInput(format!(
                    "check[{i}] ({source}): give exactly one of sql, min_keys, min_files, or min_certificates/max_expired"
                )));
            }
            if !source.starts_with("directories/") {
                return Err(InvalidInput(format!(
                    "check[{i}]: min_files applies to directories/<name> sources, not {source}"
                )));
            }
            return Ok(DrillCheck::MinFiles { source, min });
        }
        match (sql, min_keys, certificates) {
            (Some(sql), None, None) => {
                let within = Bound::new(min, max);
                let expect = match (equals, within) {
                    (Some(text), within) => SqlExpect::Equals { text, within },
                    (None, Some(b)) => SqlExpect::Within(b),
                    (None, None) => {
                        return Err(InvalidInput(format!(
                            "check[{i}] ({source}): an sql check needs min, max or equals"
                        )));
                    }
                };
                if !source.starts_with("postgres/") {
                    return Err(InvalidInput(format!(
                        "check[{i}]: sql checks apply to postgres/<db> sources, not {source}"
                    )));
                }
                Ok(DrillCheck::Sql {
                    source,
                    sql,
                    expect,
                })
            }
            (None, Some(min), None) => Ok(DrillCheck::MinKeys { source, min }),
            (None, None, Some(limits)) => Ok(DrillCheck::Certificates { source, limits }),
            _ => Err(InvalidInput(format!(
                "check[{i}] ({source}): give exactly one of sql, min_keys, min_files, or min_certificates/max_expired"
            ))),
        }
    }
}

impl DrillCheck {
    /// The source the check applies to.
    pub fn source(&self) -> &str {
        match self {
            DrillCheck::Sql { source, .. }
            | DrillCheck::MinKeys { source, .. }
            | DrillCheck::MinFiles { source, .. }
            | DrillCheck::Certificates { source, .. } => source,
        }
    }

    /// The check's name in reports.
    pub fn describe(&self) -> String {
        match self {
            DrillCheck::Sql { sql, expect, .. } => {
                let bound = match expect {
                    SqlExpect::Equals { text, .. } => format!(" = {text}"),
                    SqlExpect::Within(Bound::Between(lo, hi)) => format!(" in [{lo}, {hi}]"),
                    SqlExpect::Within(Bound::AtLeast(lo)) => format!(" >= {lo}"),
                    SqlExpect::Within(Bound::AtMost(hi)) => format!(" <= {hi}"),
                };
                format!("sql `{sql}`{bound}")
            }
            DrillCheck::MinKeys { min, .. } => format!("at least {min} keys"),
            DrillCheck::MinFiles { min, .. } => format!("at least {min} files"),
            DrillCheck::Certificates { limits, .. } => format!(
                "certificates (min {}, max expired {})",
                limits.min().map_or("-".into(), |n| n.to_string()),
                limits.max_expired().map_or("-".into(), |n| n.to_string())
            ),
        }
    }

    /// Runs the check on what `verify` restored.
    pub async fn run(&self, restored: &Restored) -> Check {
        let name = self.describe();
        match self {
            DrillCheck::Sql {
                source,
                sql,
                expect,
            } => sql_check(name, source, sql, expect, restored).await,
            DrillCheck::MinKeys { min, .. } => min_keys_check(name, *min, restored).await,
            DrillCheck::MinFiles { source, min } => min_files_check(name, source, *min, restored),
            DrillCheck::Certificates { source, limits } => {
                certificates_check(name, source, *limits, restored)
            }
        }
    }
}

async fn sql_check(
    name: String,
    source: &str,
    sql: &str,
    expect: &SqlExpect,
    restored: &Restored,
) -> Check {
    let Some(pg) = restored.postgres_config() else {
        return Check::new(name, false, "no database was restored");
    };
    let Some(db) = crate::model::selection::source_database(source) else {
        return Check::new(
            name,
            false,
            "sql checks apply to databases, not postgres/globals",
        );
    };
    let value = async {
        let client = crate::clients::postgres::connect(&pg, db)
            .await
            .map_err(|e| e.to_string())?;
        let msgs = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("the query failed: {e}"))?;
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("NULL").to_owned())
                }
                _ => None,
            })
            .ok_or_else(|| "the query returned no row".to_owned())
    }
    .await;
    match value {
        Err(e) => Check::new(name, false, e),
        Ok(v) => {
            let num = v.trim().parse::<f64>().ok();
            let ok = match expect {
                SqlExpect::Equals { text, within } => {
                    text == &v && within.is_none_or(|b| b.holds(num))
                }
                SqlExpect::Within(b) => b.holds(num),
            };
            Check::new(name, ok, format!("returned {v}"))
        }
    }
}

async fn min_keys_check(name: String, min: u64, restored: &Restored) -> Check {
    let Some(cfg) = restored.redis_config() else {
        return Check::new(name, false, "Redis was not restored");
    };
    let n = async {
        let mut con = crate::clients::redis::connect(&cfg)
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("DBSIZE")
            .query_async::<u64>(&mut con)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match n {
        Ok(n) => Check::new(name, n >= min, format!("{n} keys in db0")),
        Err(e) => Check::new(name, false, e),
    }
}

fn min_files_check(name: String, source: &str, min: u64, restored: &Restored) -> Check {
    let Some(root) = restored.files.get(source) else {
        return Check::new(name, false, "the directory was not restored");
    };
    let mut n = 0u64;
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Check::new(name, false, format!("cannot read {}", dir.display()));
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    Check::new(name, n >= min, format!("{n} files"))
}

fn certificates_check(
    name: String,
    source: &str,
    limits: CertificateLimits,
    restored: &Restored,
) -> Check {
    let Some(path) = restored.files.get(source) else {
        return Check::new(name, false, "the file was not restored");
    };
    let certs = std::fs::read(path)
        .ok()
        .and_then(|d| crate::sources::acme::certificates(&d));
    let Some(certs) = certs else {
        return Check::new(name, false, "the restored file is not an ACME store");
    };
    let now = Utc::now();
    let expired = certs
        .iter()
        .filter(|c| c.not_after.is_none_or(|t| t < now))
        .count();
    let ok = limits.min().is_none_or(|m| certs.len() >= m)
        && limits.max_expired().is_none_or(|m| expired <= m);
    Check::new(
        name,
        ok,
        format!("{} certificate(s), {expired} expired", certs.len()),
    )
}
