//! GFS retention: which snapshots a policy keeps, and why.
//!
//! Evaluated per source over that source's *good* artifacts, newest first,
//! in a given time zone (calendar buckets are local days, ISO weeks,
//! months and years). A snapshot survives if any of its sources keeps it.
//! The newest good artifact of every source is always kept, whatever the
//! policy says.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::model::manifest::Manifest;

/// A retention policy (`[retention]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The newest N.
    pub keep_last: Option<u32>,
    /// The newest of each of the last N hours.
    pub keep_hourly: Option<u32>,
    /// The newest of each of the last N days.
    pub keep_daily: Option<u32>,
    /// The newest of each of the last N ISO weeks.
    pub keep_weekly: Option<u32>,
    /// The newest of each of the last N months.
    pub keep_monthly: Option<u32>,
    /// The newest of each of the last N years.
    pub keep_yearly: Option<u32>,
    /// Everything newer than this (`14d`).
    #[serde(default, with = "humantime_serde_opt")]
    pub keep_within: Option<Duration>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e} (write 14d, 36h)")))
        })
        .transpose()
    }
}

impl Retention {
    /// Whether the policy says anything at all.
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// Why a snapshot is kept: `(source, rule)` pairs.
pub type Reasons = BTreeMap<String, BTreeSet<String>>;

/// Decides, for snapshots of one policy, which to keep and why. Snapshots
/// not in the result are to be removed.
pub fn decide<Tz: TimeZone>(
    snapshots: &[Manifest],
    r: &Retention,
    now: DateTime<Utc>,
    tz: &Tz,
) -> Reasons
where
    Tz::Offset: std::fmt::Display,
{
    let mut keep: Reasons = BTreeMap::new();
    // Per source: its good artifacts, newest first.
    let mut per_source: BTreeMap<&str, Vec<(&str, DateTime<Utc>)>> = BTreeMap::new();
    for m in snapshots {
        for a in m.artifacts.iter().filter(|a| a.is_ok()) {
            per_source
                .entry(a.source.as_str())
                .or_default()
                .push((m.id.as_str(), a.captured_at.unwrap_or(m.started_at)));
        }
    }
    for (source, mut items) in per_source {
        items.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
        let mut mark = |id: &str, why: String| {
            keep.entry(id.to_owned())
                .or_default()
                .insert(format!("{source}: {why}"));
        };
        if let Some((id, _)) = items.first() {
            mark(id, "newest good backup".into());
        }
        if let Some(n) = r.keep_last {
            for (id, _) in items.iter().take(n as usize) {
                mark(id, format!("keep_last {n}"));
            }
        }
        if let Some(d) = r.keep_within {
            let since = now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            for (id, _) in items.iter().filter(|(_, t)| *t >= since) {
                mark(id, format!("keep_within {}", humantime::format_duration(d)));
            }
        }
        let buckets: [(&str, Option<u32>, &str); 5] = [
            ("keep_hourly", r.keep_hourly, "%Y-%m-%d %H"),
            ("keep_daily", r.keep_daily, "%Y-%m-%d"),
            ("keep_weekly", r.keep_weekly, "%G-W%V"),
            ("keep_monthly", r.keep_monthly, "%Y-%m"),
            ("keep_yearly", r.keep_yearly, "%Y"),
        ];
        for (rule, n, fmt) in buckets {
            let Some(n) = n else { continue };
            let mut seen: BTreeSet<String> = BTreeSet::new();
            for (id, t) in &items {
                if seen.len() >= n as usize {
                    break;
                }
                let bucket = t.with_timezone(tz).format(fmt).to_string();
                if seen.insert(bucket.clone()) {
                    mark(id, format!("{rule} {n} ({bucket})"));
                }
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests;
