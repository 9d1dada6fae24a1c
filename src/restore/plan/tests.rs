use super::*;
use crate::model::manifest::fixtures::{artifact as art, manifest as snap, t};

/// Three nightly snapshots, newest first; redis failed on the 26th.
fn history() -> Vec<Manifest> {
    vec![
        snap(
            "s27",
            "2026-11-27T03:00:00Z",
            vec![
                art("postgres/a", "2026-11-27T03:00:05Z", true),
                art("redis", "2026-11-27T03:01:00Z", true),
            ],
        ),
        snap(
            "s26",
            "2026-11-26T03:00:00Z",
            vec![
                art("postgres/a", "2026-11-26T03:00:05Z", true),
                art("redis", "2026-11-26T03:01:00Z", false),
            ],
        ),
        snap(
            "s25",
            "2026-11-25T03:00:00Z",
            vec![
                art("postgres/a", "2026-11-25T03:00:05Z", true),
                art("redis", "2026-11-25T03:01:00Z", true),
            ],
        ),
    ]
}

#[test]
fn point_in_time_picks_per_source_and_skips_failed() {
    let c = choose(
        &history(),
        &Selector::PointInTime(t("2026-11-26T12:00:00Z")),
        None,
    )
    .unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].source.as_str(), c[0].snapshot.as_str()),
        ("postgres/a", "s26")
    );
    assert_eq!(c[0].distance_seconds, Some(9 * 3600 - 5));
    assert_eq!(
        (c[1].source.as_str(), c[1].snapshot.as_str()),
        ("redis", "s25")
    );
    assert_eq!(c[1].skipped_failed, vec!["s26"]);
}

#[test]
fn exact_capture_time_is_included() {
    let c = choose(
        &history(),
        &Selector::PointInTime(t("2026-11-25T03:00:05Z")),
        Some((
            &crate::model::selection::matcher(&["postgres/a".into()])
                .unwrap()
                .unwrap(),
            &["postgres/a".into()],
        )),
    )
    .unwrap();
    assert_eq!(c[0].snapshot, "s25");
    assert_eq!(c[0].distance_seconds, Some(0));
}

#[test]
fn too_early_names_the_earliest_time() {
    let e = choose(
        &history(),
        &Selector::PointInTime(t("2026-11-20T00:00:00Z")),
        None,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("2026-11-25T03:00:05Z"), "{msg}");
    assert!(msg.contains("s25"), "{msg}");
}

#[test]
fn snapshot_selection_skips_failed_unless_named() {
    let c = choose(&history(), &Selector::Snapshot("s26".into()), None).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].source, "postgres/a");
    let pats = vec!["redis".to_owned()];
    let m = crate::model::selection::matcher(&pats).unwrap().unwrap();
    let e = choose(
        &history(),
        &Selector::Snapshot("s26".into()),
        Some((&m, &pats)),
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::FailedInSnapshot { .. }), "{e}");
    assert!(matches!(
        choose(&history(), &Selector::Snapshot("nope".into()), None),
        Err(PlanError::NoSuchSnapshot(_))
    ));
    assert_eq!(
        choose(&history(), &Selector::Latest, None).unwrap()[0].snapshot,
        "s27"
    );
}

#[test]
fn a_pattern_matching_nothing_is_an_error() {
    let pats = vec!["files/*".to_owned()];
    let m = crate::model::selection::matcher(&pats).unwrap().unwrap();
    let e = choose(&history(), &Selector::Latest, Some((&m, &pats))).unwrap_err();
    assert!(
        e.to_string().contains("available: postgres/a, redis"),
        "{e}"
    );
    assert_eq!(
        choose(&[], &Selector::Latest, None).unwrap_err(),
        PlanError::Empty
    );
}

#[test]
fn times_parse_in_both_formats() {
    assert_eq!(
        parse_time("2026-11-27T03:00:00Z").unwrap(),
        t("2026-11-27T03:00:00Z")
    );
    assert_eq!(
        parse_time("2026-11-27T04:00:00+01:00").unwrap(),
        t("2026-11-27T03:00:00Z")
    );
    let berlin = chrono::FixedOffset::east_opt(3600).unwrap();
    assert_eq!(
        parse_time_in("2026-11-27 04:00", &berlin).unwrap(),
        t("2026-11-27T03:00:00Z")
    );
    assert_eq!(
        parse_time_in("2026-11-27 04:00:30", &berlin).unwrap(),
        t("2026-11-27T03:00:30Z")
    );
    assert!(parse_time("yesterday").unwrap_err().0.contains("RFC 3339"));
}
