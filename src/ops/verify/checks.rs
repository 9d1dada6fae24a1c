//! The checks `verify` runs on restored data: row counts, key counts and
//! certificates against the facts recorded at backup time.

use std::collections::BTreeMap;

use chrono::Utc;

use super::Check;
use crate::model::config::{PostgresConfig, RedisConfig};
use crate::model::facts::SourceFacts;
use crate::sources::postgres::database::{self, Ownership};

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
    let restored = match crate::sources::postgres::connect(pg, db).await {
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
    let restored = match crate::sources::postgres::connect(pg, &pg.endpoint.maintenance_db).await {
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

/// Compares the key counts of the scratch Redis at `cfg` with the facts.
pub(super) async fn compare_keys(cfg: &RedisConfig, facts: Option<&SourceFacts>) -> Check {
    let Some(SourceFacts::Redis { keys: recorded }) = facts else {
        return Check::new(
            "key counts",
            false,
            "the facts hold no key counts for Redis",
        );
    };
    let found = async {
        let mut con = crate::sources::redis::connect(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let text: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("INFO keyspace: {e}"))?;
        let info = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Ok::<_, String>(crate::sources::redis::parse_keyspace(&info))
    }
    .await;
    match found {
        Err(e) => Check::new("key counts", false, e),
        Ok(found) if &found == recorded => Check::new(
            "key counts",
            true,
            format!(
                "{} keys in {} database(s), as recorded",
                found.values().sum::<u64>(),
                found.len()
            ),
        ),
        Ok(found) => Check::new(
            "key counts",
            false,
            format!("Redis loaded {found:?}, the backup recorded {recorded:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
