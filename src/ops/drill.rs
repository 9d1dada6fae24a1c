//! Restore drills (design §7): verify plus the drill's own checks, the
//! measured time to restore each source, a report (JSON and Markdown) in
//! `reports_dir`, the `drill/completed` or `drill/failed` event and the
//! drill metrics.
//!
//! A drill file (`restore-drills/*.toml`):
//!
//! ```toml
//! name = "kompose-quarterly"
//! snapshot = "latest"              # or "oldest", or an id
//! sources = ["postgres/*", "redis", "files/*"]
//!
//! [[check]]
//! source = "postgres/linkwarden"
//! sql = 'select count(*) from "Link"'
//! min = 1                          # or: equals = "…", max = …
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::metrics::{self, Metrics};
use crate::model::config::Config;
use crate::ops::verify::{self, Check, Restored, SourceVerdict, Which};
use crate::repository::Repository;

/// A drill file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Its name (reports and metrics use it).
    pub name: String,
    /// `latest`, `oldest`, or a snapshot id.
    #[serde(default = "latest")]
    pub snapshot: String,
    /// Sources to restore (names or globs); default every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The repository to drill (default: the first that answers).
    pub repository: Option<String>,
    /// The drill's own checks.
    #[serde(default, rename = "check")]
    pub checks: Vec<DrillCheck>,
}

fn latest() -> String {
    "latest".into()
}

/// One of the drill's own checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrillCheck {
    /// The source it applies to.
    pub source: String,
    /// A query on the restored database; its first column of the first row
    /// is compared.
    pub sql: Option<String>,
    /// The value must be at least this.
    pub min: Option<f64>,
    /// The value must be at most this.
    pub max: Option<f64>,
    /// The value must be exactly this text.
    pub equals: Option<String>,
    /// Redis must hold at least this many keys.
    pub min_keys: Option<u64>,
    /// The ACME store must hold at least this many certificates.
    pub min_certificates: Option<usize>,
    /// At most this many of its certificates may have expired.
    pub max_expired: Option<usize>,
}

impl Drill {
    /// Reads and validates a drill file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Drill, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("drill {}: cannot read it: {e}", path.display()))?;
        let drill: Drill = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            format!(
                "drill {}{}: {}",
                path.display(),
                line.map(|l| format!(" line {l}")).unwrap_or_default(),
                e.message().trim()
            )
        })?;
        drill
            .validate()
            .map_err(|e| format!("drill {}: {e}", path.display()))?;
        Ok(drill)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name `{}`: use letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        crate::model::selection::matcher(&self.sources)?;
        for (i, c) in self.checks.iter().enumerate() {
            let kinds = [
                c.sql.is_some(),
                c.min_keys.is_some(),
                c.min_certificates.is_some() || c.max_expired.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "check[{i}] ({}): give exactly one of sql, min_keys, or min_certificates/max_expired",
                    c.source
                ));
            }
            if c.sql.is_some() && c.min.is_none() && c.max.is_none() && c.equals.is_none() {
                return Err(format!(
                    "check[{i}] ({}): an sql check needs min, max or equals",
                    c.source
                ));
            }
            if c.sql.is_some() && !c.source.starts_with("postgres/") {
                return Err(format!(
                    "check[{i}]: sql checks apply to postgres/<db> sources, not {}",
                    c.source
                ));
            }
        }
        Ok(())
    }
}

/// The report of one drill run.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Drill name.
    pub drill: String,
    /// Repository drilled.
    pub repository: String,
    /// Snapshot restored.
    pub snapshot: String,
    /// When the snapshot was taken.
    pub snapshot_time: DateTime<Utc>,
    /// Start of the drill.
    pub started_at: DateTime<Utc>,
    /// End of the drill.
    pub finished_at: DateTime<Utc>,
    /// Whether every check held.
    pub ok: bool,
    /// Per source: time to restore and every check.
    pub sources: Vec<SourceVerdict>,
    /// Where the report was written.
    pub report_files: Vec<PathBuf>,
}

/// Every drill in `drills_dir` (sorted), or the one file given.
pub fn find(config: &Config, file: Option<&Path>) -> Result<Vec<Drill>, String> {
    if let Some(f) = file {
        return Ok(vec![Drill::load(f)?]);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&config.drills_dir)
        .map_err(|e| {
            format!(
                "cannot read drills_dir {}: {e}; set drills_dir in {} or pass --drill FILE",
                config.drills_dir.display(),
                config.path.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!(
            "no drill (*.toml) in {}",
            config.drills_dir.display()
        ));
    }
    paths.iter().map(|p| Drill::load(p)).collect()
}

/// Runs one drill: restore, check, report, publish, record.
pub async fn run(
    config: &Config,
    drill: &Drill,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<DrillReport, String> {
    let started_at = Utc::now();
    let repo = match &drill.repository {
        Some(name) => {
            let rc = config
                .repository_named(name)
                .map_err(|e| format!("drill {}: {e}", drill.name))?;
            Repository::open(rc)
        }
        None => {
            let rc = config
                .repositories
                .first()
                .ok_or("no [[repository]] is configured")?;
            Repository::open(rc)
        }
    };
    let which = match drill.snapshot.as_str() {
        "latest" => Which::Latest,
        "oldest" => Which::Oldest,
        id => Which::Id(id.to_owned()),
    };
    let manifest = verify::find_snapshot(&repo, &which).await?;
    let runtime = crate::scratch::runtime(&config.scratch);
    let (vr, restored) = verify::run(
        config,
        &repo,
        identities,
        runtime.as_ref(),
        &manifest,
        &drill.sources,
    )
    .await?;
    let mut sources = vr.sources;
    for c in &drill.checks {
        let result = own_check(c, &restored).await;
        match sources.iter_mut().find(|v| v.source == c.source) {
            Some(v) => {
                v.ok &= result.ok;
                v.checks.push(result);
            }
            None => sources.push(SourceVerdict {
                source: c.source.clone(),
                restore_seconds: 0.0,
                ok: false,
                checks: vec![Check::new(
                    describe(c),
                    false,
                    "this source was not restored by the drill",
                )],
            }),
        }
    }
    drop(restored);
    let ok = !sources.is_empty() && sources.iter().all(|v| v.ok);
    let mut report = DrillReport {
        drill: drill.name.clone(),
        repository: repo.name().to_owned(),
        snapshot: manifest.id.clone(),
        snapshot_time: manifest.started_at,
        started_at,
        finished_at: Utc::now(),
        ok,
        sources,
        report_files: Vec::new(),
    };
    report.report_files = write_report(&config.reports_dir, &report)?;
    publish_and_record(config, &report).await;
    Ok(report)
}

fn describe(c: &DrillCheck) -> String {
    if let Some(sql) = &c.sql {
        let bound = match (&c.equals, c.min, c.max) {
            (Some(e), _, _) => format!(" = {e}"),
            (None, Some(lo), Some(hi)) => format!(" in [{lo}, {hi}]"),
            (None, Some(lo), None) => format!(" >= {lo}"),
            (None, None, Some(hi)) => format!(" <= {hi}"),
            _ => String::new(),
        };
        format!("sql `{sql}`{bound}")
    } else if let Some(k) = c.min_keys {
        format!("at least {k} keys")
    } else {
        format!(
            "certificates (min {}, max expired {})",
            c.min_certificates.map_or("-".into(), |n| n.to_string()),
            c.max_expired.map_or("-".into(), |n| n.to_string())
        )
    }
}

async fn own_check(c: &DrillCheck, restored: &Restored) -> Check {
    let name = describe(c);
    if let Some(sql) = &c.sql {
        let Some(pg) = restored.postgres_config() else {
            return Check::new(name, false, "no database was restored");
        };
        let db = c.source.trim_start_matches("postgres/");
        let value = async {
            let client = crate::sources::postgres::connect(&pg, db).await?;
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
        return match value {
            Err(e) => Check::new(name, false, e),
            Ok(v) => {
                let num = v.trim().parse::<f64>().ok();
                let ok = c.equals.as_ref().is_none_or(|e| e == &v)
                    && c.min.is_none_or(|lo| num.is_some_and(|n| n >= lo))
                    && c.max.is_none_or(|hi| num.is_some_and(|n| n <= hi));
                Check::new(name, ok, format!("returned {v}"))
            }
        };
    }
    if let Some(min) = c.min_keys {
        let Some(cfg) = restored.redis_config() else {
            return Check::new(name, false, "Redis was not restored");
        };
        let n = async {
            let mut con = crate::sources::redis::connect(&cfg).await?;
            redis::cmd("DBSIZE")
                .query_async::<u64>(&mut con)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        return match n {
            Ok(n) => Check::new(name, n >= min, format!("{n} keys in db0")),
            Err(e) => Check::new(name, false, e),
        };
    }
    let Some(path) = restored.files.get(&c.source) else {
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
    let ok = c.min_certificates.is_none_or(|m| certs.len() >= m)
        && c.max_expired.is_none_or(|m| expired <= m);
    Check::new(
        name,
        ok,
        format!("{} certificate(s), {expired} expired", certs.len()),
    )
}

fn write_report(dir: &Path, report: &DrillReport) -> Result<Vec<PathBuf>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    crate::storage::local::create_dir_private(dir)
        .map_err(|e| format!("cannot create reports_dir {}: {e}", dir.display()))?;
    let stem = format!(
        "{}-{}",
        report.drill,
        report.started_at.format("%Y%m%dT%H%M%SZ")
    );
    let json = dir.join(format!("{stem}.json"));
    let md = dir.join(format!("{stem}.md"));
    let mut with_paths = report.clone();
    with_paths.report_files = vec![json.clone(), md.clone()];
    for (path, body) in [
        (
            &json,
            serde_json::to_string_pretty(&with_paths).expect("report serialises"),
        ),
        (&md, markdown(&with_paths)),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        f.write_all(body.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(vec![json, md])
}

/// The Markdown report.
pub fn markdown(r: &DrillReport) -> String {
    let mut s = format!(
        "# Restore drill {}: {}\n\n- repository: {}\n- snapshot: {} (taken {})\n- ran: {} to {}\n\n",
        r.drill,
        if r.ok { "PASSED" } else { "FAILED" },
        r.repository,
        r.snapshot,
        r.snapshot_time.to_rfc3339(),
        r.started_at.to_rfc3339(),
        r.finished_at.to_rfc3339()
    );
    s.push_str("| source | time to restore | verdict |\n| --- | ---: | --- |\n");
    for v in &r.sources {
        s.push_str(&format!(
            "| {} | {:.1} s | {} |\n",
            v.source,
            v.restore_seconds,
            if v.ok { "ok" } else { "FAILED" }
        ));
    }
    for v in &r.sources {
        s.push_str(&format!("\n## {}\n\n", v.source));
        for c in &v.checks {
            let mark = if c.ok {
                "ok"
            } else if c.warning {
                "warning"
            } else {
                "FAILED"
            };
            s.push_str(&format!(
                "- **{mark}** {}: {}\n",
                c.name,
                c.detail.replace('\n', " ")
            ));
        }
    }
    s
}

async fn publish_and_record(config: &Config, r: &DrillReport) {
    let prefix = config
        .mqtt
        .as_ref()
        .map_or("kompose", |m| m.topic_prefix.as_str());
    let failed: Vec<serde_json::Value> = r
        .sources
        .iter()
        .flat_map(|v| {
            v.checks
                .iter()
                .filter(|c| !c.ok && !c.warning)
                .map(move |c| serde_json::json!({ "source": v.source, "check": c.name, "detail": c.detail }))
        })
        .collect();
    let ev = crate::events::event(
        prefix,
        "drill",
        if r.ok { "completed" } else { "failed" },
        serde_json::json!({
            "drill": r.drill,
            "repository": r.repository,
            "snapshot": r.snapshot,
            "status": if r.ok { "ok" } else { "failed" },
            "duration_seconds": (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0,
            "sources": r.sources.iter().map(|v| serde_json::json!({
                "source": v.source, "restore_seconds": v.restore_seconds, "ok": v.ok,
            })).collect::<Vec<_>>(),
            "failed": failed,
            "report": r.report_files,
        }),
    );
    let published = crate::events::publish(config, &[ev]).await;
    let Some(mc) = &config.metrics else { return };
    let mut m = Metrics::load(&mc.textfile);
    let l = [("drill", r.drill.as_str())];
    m.set(metrics::DRILL_LAST_STATUS, &l, if r.ok { 1.0 } else { 0.0 });
    if r.ok {
        m.set(
            metrics::DRILL_LAST_SUCCESS,
            &l,
            r.finished_at.timestamp() as f64,
        );
    }
    for v in &r.sources {
        m.set(
            metrics::DRILL_LAST_RESTORE,
            &[("drill", r.drill.as_str()), ("source", v.source.as_str())],
            v.restore_seconds,
        );
    }
    if !published {
        m.add(metrics::PUBLISH_FAILURES, &[], 1.0);
    }
    if let Err(e) = m.write(&mc.textfile) {
        tracing::warn!(path = %mc.textfile.display(), error = %e, "cannot write the metrics textfile");
    }
}
