//! Unit tests of retention on fixture manifests: which snapshots each rule
//! keeps, the last good copy of a failed source, and calendar buckets that
//! follow the configured time zone across DST changes.

use super::*;
use crate::model::manifest::fixtures::{artifact, manifest, t};

fn snap(id: &str, at: &str, sources: &[(&str, bool)]) -> Manifest {
    manifest(
        id,
        at,
        sources.iter().map(|(s, ok)| artifact(s, at, *ok)).collect(),
    )
}

/// Nightly snapshots at 03:00 UTC for `days` days ending 2026-11-27.
fn nightly(days: i64) -> Vec<Manifest> {
    (0..days)
        .map(|i| {
            let at = t("2026-11-27T03:00:00Z") - chrono::Duration::days(i);
            snap(
                &format!("s{:03}", days - i),
                &at.to_rfc3339(),
                &[("postgres/a", true)],
            )
        })
        .collect()
}

fn kept(r: &Reasons) -> Vec<String> {
    r.keys().cloned().collect()
}

#[test]
fn table_of_policies() {
    let now = t("2026-11-27T12:00:00Z");
    let utc = chrono::Utc;
    let cases: Vec<(Retention, usize)> = vec![
        (Retention::default(), 1), // nothing but the newest good backup
        (
            Retention {
                keep_last: Some(3),
                ..Default::default()
            },
            3,
        ),
        (
            Retention {
                keep_daily: Some(14),
                ..Default::default()
            },
            14,
        ),
        (
            Retention {
                keep_weekly: Some(8),
                ..Default::default()
            },
            8,
        ),
        (
            Retention {
                keep_monthly: Some(12),
                ..Default::default()
            },
            4,
        ), // Aug..Nov of 100 days
        (
            Retention {
                keep_yearly: Some(2),
                ..Default::default()
            },
            1,
        ),
        (
            Retention {
                keep_within: Some(Duration::from_secs(3 * 86400)),
                ..Default::default()
            },
            3,
        ),
    ];
    let snaps = nightly(100);
    for (r, n) in cases {
        assert_eq!(decide(&snaps, &r, now, &utc).len(), n, "{r:?}");
    }
}

#[test]
fn the_kompose_nightly_policy() {
    let r = Retention {
        keep_daily: Some(14),
        keep_weekly: Some(8),
        keep_monthly: Some(12),
        keep_yearly: Some(2),
        ..Default::default()
    };
    let snaps = nightly(400);
    let k = decide(&snaps, &r, t("2026-11-27T12:00:00Z"), &chrono::Utc);
    // 14 daily + weeks beyond them + months beyond + one more year.
    assert!(k.contains_key("s400"), "the newest");
    assert!(k["s400"].iter().any(|w| w.contains("keep_daily")));
    let n = k.len();
    assert!((14 + 6..=14 + 8 + 12 + 2).contains(&n), "{n}");
}

#[test]
fn a_source_that_failed_last_night_keeps_its_last_good_copy() {
    let snaps = vec![
        snap(
            "s3",
            "2026-11-27T03:00:00Z",
            &[("postgres/a", true), ("redis", false)],
        ),
        snap(
            "s2",
            "2026-11-26T03:00:00Z",
            &[("postgres/a", true), ("redis", false)],
        ),
        snap(
            "s1",
            "2026-11-25T03:00:00Z",
            &[("postgres/a", true), ("redis", true)],
        ),
    ];
    let r = Retention {
        keep_last: Some(1),
        ..Default::default()
    };
    let k = decide(&snaps, &r, t("2026-11-27T12:00:00Z"), &chrono::Utc);
    assert_eq!(kept(&k), ["s1", "s3"]);
    assert!(k["s1"].iter().any(|w| w == "redis: newest good backup"));
}

#[test]
fn day_edges_follow_the_time_zone() {
    // 23:30 and 00:30 UTC are the same local day at UTC-02:00.
    let snaps = vec![
        snap("b", "2026-11-27T00:30:00Z", &[("x", true)]),
        snap("a", "2026-11-26T23:30:00Z", &[("x", true)]),
    ];
    let r = Retention {
        keep_daily: Some(2),
        ..Default::default()
    };
    let now = t("2026-11-27T12:00:00Z");
    assert_eq!(decide(&snaps, &r, now, &chrono::Utc).len(), 2);
    let minus2 = chrono::FixedOffset::west_opt(2 * 3600).unwrap();
    assert_eq!(kept(&decide(&snaps, &r, now, &minus2)), ["b"]);
}

#[test]
fn weeks_are_iso_weeks_and_dst_does_not_split_a_day() {
    // Sunday 2026-03-29 is the EU DST change; Monday 2026-03-30 starts a new ISO week.
    let snaps = vec![
        snap("mon", "2026-03-30T01:00:00Z", &[("x", true)]),
        snap("sun-late", "2026-03-29T21:00:00Z", &[("x", true)]),
        snap("sun-early", "2026-03-29T00:30:00Z", &[("x", true)]),
    ];
    let now = t("2026-03-30T12:00:00Z");
    let weekly = Retention {
        keep_weekly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        kept(&decide(&snaps, &weekly, now, &chrono::Utc)),
        ["mon", "sun-late"]
    );
    let daily = Retention {
        keep_daily: Some(3),
        ..Default::default()
    };
    assert_eq!(
        decide(&snaps, &daily, now, &chrono::Utc).len(),
        2,
        "two snapshots on one Sunday are one day"
    );
}

#[test]
fn a_dst_change_does_not_split_or_merge_local_days() {
    // 2026-03-29 02:00 CET becomes 03:00 CEST in Berlin. 00:30 CET (23:30 UTC
    // the day before) and 23:30 CEST (21:30 UTC) are the same local day.
    let berlin = chrono_tz::Europe::Berlin;
    let snaps = vec![
        snap("late", "2026-03-29T21:30:00Z", &[("x", true)]),
        snap("early", "2026-03-28T23:30:00Z", &[("x", true)]),
        snap("before", "2026-03-28T12:00:00Z", &[("x", true)]),
    ];
    let r = Retention {
        keep_daily: Some(2),
        ..Default::default()
    };
    let now = t("2026-03-30T12:00:00Z");
    assert_eq!(kept(&decide(&snaps, &r, now, &berlin)), ["before", "late"]);
    // In UTC the same snapshots fall on three days.
    assert_eq!(
        kept(&decide(&snaps, &r, now, &chrono::Utc)),
        ["early", "late"]
    );
}
