//! `policies: coverage`: when policies exist, every configured source must
//! be sent to every repository by at least one of them — a
//! `[[directories]]` entry that no policy selects is never backed up by the
//! timers, and nothing else would say so.

use super::{Check, check};
use crate::model::config::{Config, DatabaseSelection};
use crate::model::policy::Policy;
use crate::model::selection::{database_source, matcher};

/// The configured sources by name, as a policy's patterns see them. With
/// `databases = ["*"]` the databases are unknown here: one stands for them
/// all (`postgres/<every database>`), so a policy must select them by a
/// glob such as `postgres/*`.
fn configured(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(pg) = &config.postgres {
        if pg.globals {
            out.push(("postgres/globals".to_owned(), "postgres/globals".to_owned()));
        }
        if pg.wal.is_some() {
            out.push(("postgres/cluster".to_owned(), "postgres/cluster".to_owned()));
        }
        match &pg.databases {
            DatabaseSelection::All => out.push((
                database_source("kdr-every-database"),
                "postgres/<every database> (databases = [\"*\"])".to_owned(),
            )),
            DatabaseSelection::List(dbs) => {
                out.extend(dbs.iter().map(|d| (database_source(d), database_source(d))));
            }
        }
    }
    if config.redis.is_some() {
        out.push(("redis".to_owned(), "redis".to_owned()));
    }
    for f in &config.files {
        let n = format!("files/{}", f.name);
        out.push((n.clone(), n));
    }
    for d in &config.directories {
        let n = format!("directories/{}", d.name);
        out.push((n.clone(), n));
    }
    out
}

/// The configured sources (their display names) that no policy in
/// `policies` sends to the repository `repo`.
pub fn uncovered(config: &Config, policies: &[Policy], repo: &str) -> Vec<String> {
    let sending: Vec<Option<globset::GlobSet>> = policies
        .iter()
        .filter(|p| p.repositories.is_empty() || p.repositories.iter().any(|r| r == repo))
        // A policy's patterns were checked when it was loaded.
        .filter_map(|p| matcher(&p.sources).ok())
        .collect();
    configured(config)
        .into_iter()
        .filter(|(name, _)| {
            !sending
                .iter()
                .any(|m| m.as_ref().is_none_or(|m| m.is_match(name)))
        })
        .map(|(_, shown)| shown)
        .collect()
}

/// The check, when there are policies: fails naming, per repository, the
/// sources no policy sends there.
pub(super) fn coverage(config: &Config, policies: &[Policy]) -> Option<Check> {
    if policies.is_empty() {
        return None;
    }
    let gaps: Vec<String> = config
        .repositories
        .iter()
        .filter_map(|r| {
            let missing = uncovered(config, policies, &r.name);
            (!missing.is_empty()).then(|| {
                format!(
                    "no policy sends {} to repository {}",
                    missing.join(", "),
                    r.name
                )
            })
        })
        .collect();
    let result = if gaps.is_empty() {
        Ok(format!(
            "every configured source goes to every repository ({} repositories)",
            config.repositories.len()
        ))
    } else {
        Err(format!(
            "{}: add them to a policy's sources in {} (\"directories/*\", \"postgres/*\" select every one of \
             a kind) and make sure its repositories include each repository, or remove the source from {}",
            gaps.join("; "),
            config.policies_dir.display(),
            config.path.display()
        ))
    };
    Some(check("policies: coverage", result))
}
