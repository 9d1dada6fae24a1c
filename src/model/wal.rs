//! Write-ahead log archiving (docs/DESIGN.md §11): the names PostgreSQL
//! gives WAL files, log sequence numbers, the record kompose-dr writes
//! beside every archived WAL file, and the arithmetic of continuity — which
//! files a base backup needs to reach a point in time, and which are
//! missing.
//!
//! A WAL segment is named `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the
//! segment number split in two (`XXXXXXXX` counts 4 GiB of log, `YYYYYYYY`
//! the segment within it). A timeline's history file is `TTTTTTTT.history`.
//!
//! In the repository, under `wal/<system identifier>/<timeline>/`:
//!
//! ```text
//! <segment>.zst.age              a complete segment
//! <segment>.partial-<n>.zst.age  the segment being written, shipped every max_lag
//! <TTTTTTTT>.history.zst.age     a timeline's history
//! <name>.json                    the record (written last: the commit point)
//! ```
//!
//! The system identifier keeps two clusters (a server initialised again)
//! from writing over each other's segments, which have the same names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A log sequence number (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` form.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return None;
        }
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        Some(Lsn((hi << 32) | lo))
    }

    /// The segment number holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an LSN")))
    }
}

/// The sizes PostgreSQL allows for a WAL segment: a power of two from 1 MiB
/// to 1 GiB.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// A WAL segment: timeline and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline.
    pub timeline: u32,
    /// The segment number (position / segment size).
    pub number: u64,
}

impl Segment {
    /// Segments per 4 GiB of log, the unit of the name's middle part.
    fn per_id(segment_size: u64) -> u64 {
        0x1_0000_0000 / segment_size
    }

    /// Parses a segment's file name, given the cluster's segment size.
    pub fn parse(name: &str, segment_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if name.bytes().any(|b| b.is_ascii_lowercase()) {
            return None;
        }
        let tl = u32::from_str_radix(&name[0..8], 16).ok()?;
        let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
        let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = Segment::per_id(segment_size);
        if tl == 0 || lo >= per {
            return None;
        }
        Some(Segment {
            timeline: tl,
            number: hi * per + lo,
        })
    }

    /// The file name PostgreSQL gives this segment.
    pub fn name(self, segment_size: u64) -> String {
        let per = Segment::per_id(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per,
            self.number % per
        )
    }

    /// The position where this segment begins.
    pub fn start(self, segment_size: u64) -> Lsn {
        Lsn(self.number * segment_size)
    }
}

/// A timeline history file's name (`00000002.history`) → its timeline.
pub fn parse_history(name: &str) -> Option<u32> {
    let tl = name.strip_suffix(".history")?;
    if tl.len() != 8
        || !tl
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    {
        return None;
    }
    u32::from_str_radix(tl, 16).ok().filter(|t| *t > 1)
}

/// The name of timeline `tl`'s history file.
pub fn history_name(tl: u32) -> String {
    format!("{tl:08X}.history")
}

/// What an archived WAL file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalKind {
    /// A complete segment.
    Segment,
    /// The segment still being written, as far as it was when shipped.
    Partial,
    /// A timeline's history file.
    History,
}

/// The record of one archived WAL file, written after the file itself: a
/// WAL file exists in the repository iff its record does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalRecord {
    /// Record format version.
    pub version: u32,
    /// The cluster (`pg_control_system().system_identifier`).
    pub system_identifier: String,
    /// The file's PostgreSQL name (`000000010000000000000003`,
    /// `00000002.history`).
    pub name: String,
    /// Its timeline.
    pub timeline: u32,
    /// What it is.
    pub kind: WalKind,
    /// The cluster's WAL segment size in bytes.
    pub segment_size: u64,
    /// Key of the stored file.
    pub path: String,
    /// Bytes before compression.
    pub plaintext_bytes: u64,
    /// Bytes as stored (zstd, then age).
    pub stored_bytes: u64,
    /// sha256 of the stored bytes.
    pub sha256: String,
    /// When it was stored (the archiver's clock).
    pub archived_at: DateTime<Utc>,
    /// Every transaction the server committed before this moment (the
    /// server's clock) is in this file or an earlier one of its timeline;
    /// absent when the archiver could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_until: Option<DateTime<Utc>>,
    /// The position up to which the file holds the log (for a partial
    /// file; the end of the segment for a complete one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<Lsn>,
}

/// The version of [`WalRecord`] this build writes.
pub const WAL_RECORD_VERSION: u32 = 1;

impl WalRecord {
    /// The segment it holds (none for a history file).
    pub fn segment(&self) -> Option<Segment> {
        match self.kind {
            WalKind::History => None,
            _ => Segment::parse(&self.name, self.segment_size),
        }
    }
}

/// Where a base backup starts in the log, as its manifest entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasePosition {
    /// The cluster (`pg_control_system().system_identifier`).
    pub system_identifier: String,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// Where its WAL starts (the checkpoint's redo point).
    pub start_lsn: Lsn,
    /// Where it is consistent: recovery must reach this position.
    pub end_lsn: Lsn,
    /// The cluster's WAL segment size in bytes.
    pub segment_size: u64,
}

/// The archived WAL of one cluster, as a reader sees it: the newest record
/// per segment (a complete segment over a partial one).
#[derive(Debug, Clone, Default)]
pub struct WalArchive {
    /// Complete or partial segments, by segment.
    pub segments: std::collections::BTreeMap<Segment, WalRecord>,
    /// History files, by timeline.
    pub histories: std::collections::BTreeMap<u32, WalRecord>,
}

/// Why the archive cannot take a base backup to a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    /// A segment between the base backup and the target is missing.
    #[error("WAL segment {0} is missing from the archive")]
    Missing(String),
    /// The archive ends before the target.
    #[error("the archived WAL ends at {0}")]
    EndsBefore(String),
}

impl WalArchive {
    /// Builds the view from records (any order; one cluster's).
    pub fn from_records(records: impl IntoIterator<Item = WalRecord>) -> WalArchive {
        let mut a = WalArchive::default();
        for r in records {
            match r.kind {
                WalKind::History => {
                    a.histories.insert(r.timeline, r);
                }
                _ => {
                    let Some(seg) = r.segment() else { continue };
                    let better = match a.segments.get(&seg) {
                        None => true,
                        Some(old) => match (old.kind, r.kind) {
                            (WalKind::Segment, WalKind::Partial) => false,
                            (WalKind::Partial, WalKind::Segment) => true,
                            _ => (r.end_lsn, r.archived_at) > (old.end_lsn, old.archived_at),
                        },
                    };
                    if better {
                        a.segments.insert(seg, r);
                    }
                }
            }
        }
        a
    }

    /// The newest timeline with any segment.
    pub fn newest_timeline(&self) -> Option<u32> {
        self.segments.keys().map(|s| s.timeline).max()
    }

    /// The timeline a recovery following the timelines from `from_tl` up
    /// to `newest` reads segment `number` on: the highest timeline that had
    /// begun by then (its first archived segment is at or before it). A
    /// timeline switch mid-segment leaves the new timeline's copy of that
    /// segment holding the old timeline's records too, so from the switch
    /// on only the new timeline's copies will do: an older timeline's copy
    /// of a later segment is a fork PostgreSQL rejects, never a stand-in.
    fn expected_timeline(&self, number: u64, from_tl: u32, newest: u32) -> u32 {
        (from_tl..=newest)
            .rev()
            .find(|tl| {
                *tl == from_tl
                    || self
                        .segments
                        .keys()
                        .find(|s| s.timeline == *tl)
                        .is_some_and(|first| first.number <= number)
            })
            .unwrap_or(from_tl)
    }

    /// The file a recovery reads at segment `number` (see
    /// [`WalArchive::expected_timeline`]).
    fn at(&self, number: u64, from_tl: u32, newest: u32) -> Option<&WalRecord> {
        self.segments.get(&Segment {
            timeline: self.expected_timeline(number, from_tl, newest),
            number,
        })
    }

    /// The files a recovery from `base` to `target` reads, in order, and
    /// the moment the archive covers through; an error naming the first
    /// missing segment, or the archive's end when it stops before `target`.
    /// `target` None: as far as the archive goes (the whole log).
    pub fn chain(
        &self,
        base: &BasePosition,
        target: Option<DateTime<Utc>>,
    ) -> Result<(Vec<&WalRecord>, Option<DateTime<Utc>>), CoverageError> {
        let size = base.segment_size;
        let newest = self
            .newest_timeline()
            .unwrap_or(base.timeline)
            .max(base.timeline);
        let mut out: Vec<&WalRecord> = Vec::new();
        let mut covered: Option<DateTime<Utc>> = None;
        let last_number = self
            .segments
            .keys()
            .filter(|s| s.timeline >= base.timeline)
            .map(|s| s.number)
            .max();
        let first = base.start_lsn.segment(size);
        let end_segment = base.end_lsn.segment(size);
        let Some(last_number) = last_number.filter(|n| *n >= first) else {
            return Err(missing(base.timeline, first, size));
        };
        for number in first..=last_number {
            let Some(r) = self.at(number, base.timeline, newest) else {
                let expected = self.expected_timeline(number, base.timeline, newest);
                return Err(missing(expected, number, size));
            };
            // A partial copy is the end of what was archived: one with
            // later segments after it stands for a complete segment that is
            // missing.
            if let Some(prev) = out.last()
                && prev.kind == WalKind::Partial
            {
                return Err(missing(prev.timeline, number - 1, size));
            }
            out.push(r);
            if let Some(c) = r.covered_until {
                covered = Some(covered.map_or(c, |x: DateTime<Utc>| x.max(c)));
            }
            // Enough once the archive is known to hold the target, and the
            // base backup is consistent.
            if number >= end_segment
                && let (Some(t), Some(c)) = (target, covered)
                && c >= t
            {
                break;
            }
        }
        if let Some(t) = target
            && covered.is_none_or(|c| c < t)
        {
            return Err(CoverageError::EndsBefore(
                covered
                    .map(|c| c.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "an unknown time".into()),
            ));
        }
        Ok((out, covered))
    }

    /// Missing segments between the first segment `from` (per timeline
    /// chain) and the newest archived: what `check` reports.
    pub fn gaps(&self, base: &BasePosition) -> Vec<String> {
        let size = base.segment_size;
        let newest = self
            .newest_timeline()
            .unwrap_or(base.timeline)
            .max(base.timeline);
        let first = base.start_lsn.segment(size);
        let Some(last) = self
            .segments
            .keys()
            .filter(|s| s.timeline >= base.timeline)
            .map(|s| s.number)
            .max()
        else {
            return vec![
                Segment {
                    timeline: base.timeline,
                    number: first,
                }
                .name(size),
            ];
        };
        (first..=last)
            .filter(|n| {
                // Absent, or only a partial copy with later segments after it.
                self.at(*n, base.timeline, newest)
                    .is_none_or(|r| r.kind == WalKind::Partial && *n < last)
            })
            .map(|n| {
                Segment {
                    timeline: self.expected_timeline(n, base.timeline, newest),
                    number: n,
                }
                .name(size)
            })
            .collect()
    }

    /// When the archive's newest file was covered through (server time).
    pub fn covered_until(&self) -> Option<DateTime<Utc>> {
        self.segments.values().filter_map(|r| r.covered_until).max()
    }
}

/// The error naming segment `number` of `timeline` as missing.
fn missing(timeline: u32, number: u64, size: u64) -> CoverageError {
    CoverageError::Missing(Segment { timeline, number }.name(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn lsns_parse_and_print() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/2000028").unwrap().segment(MB16), 2);
        for bad in ["", "/", "1/", "x/1", "123456789/0", "1/2/3"] {
            assert!(Lsn::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn segment_names_round_trip() {
        let s = Segment::parse("000000010000000000000003", MB16).unwrap();
        assert_eq!(
            s,
            Segment {
                timeline: 1,
                number: 3
            }
        );
        // 256 segments of 16 MiB per 4 GiB.
        let s = Segment::parse("0000000200000001000000FF", MB16).unwrap();
        assert_eq!(s.number, 256 + 255);
        assert_eq!(s.name(MB16), "0000000200000001000000FF");
        assert!(Segment::parse("000000010000000100000100", MB16).is_none());
        assert!(Segment::parse("00000001000000000000000a", MB16).is_none());
        assert!(Segment::parse("../00000000000000000003", MB16).is_none());
        assert_eq!(parse_history("00000002.history"), Some(2));
        assert_eq!(parse_history("00000001.history"), None);
        assert_eq!(parse_history("2.history"), None);
        assert!(valid_segment_size(MB16));
        assert!(!valid_segment_size(1000));
    }

    fn rec(tl: u32, n: u64, kind: WalKind, covered: Option<i64>) -> WalRecord {
        let name = Segment {
            timeline: tl,
            number: n,
        }
        .name(MB16);
        WalRecord {
            version: 1,
            system_identifier: "1".into(),
            path: format!("wal/1/{tl:08X}/{name}.zst.age"),
            name,
            timeline: tl,
            kind,
            segment_size: MB16,
            plaintext_bytes: MB16,
            stored_bytes: 1,
            sha256: "0".repeat(64),
            archived_at: DateTime::from_timestamp(covered.unwrap_or(0), 0).unwrap(),
            covered_until: covered.map(|c| DateTime::from_timestamp(c, 0).unwrap()),
            end_lsn: None,
        }
    }

    fn base(tl: u32, start: u64, end: u64) -> BasePosition {
        BasePosition {
            system_identifier: "1".into(),
            timeline: tl,
            start_lsn: Lsn(start * MB16 + 40),
            end_lsn: Lsn(end * MB16 + 100),
            segment_size: MB16,
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn a_chain_runs_from_the_base_to_the_target_and_no_further() {
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Segment, Some(100)),
            rec(1, 3, WalKind::Segment, Some(200)),
            rec(1, 4, WalKind::Segment, Some(300)),
            rec(1, 5, WalKind::Partial, Some(400)),
        ]);
        let (chain, covered) = a.chain(&base(1, 2, 2), Some(t(150))).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(covered, Some(t(200)));
        let (chain, _) = a.chain(&base(1, 2, 2), Some(t(400))).unwrap();
        assert_eq!(chain.len(), 4);
        assert_eq!(
            a.chain(&base(1, 2, 2), Some(t(401))),
            Err(CoverageError::EndsBefore("1970-01-01T00:06:40Z".into()))
        );
        assert!(a.gaps(&base(1, 2, 2)).is_empty());
    }

    #[test]
    fn a_missing_segment_is_named() {
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Segment, Some(100)),
            rec(1, 4, WalKind::Segment, Some(300)),
        ]);
        assert_eq!(
            a.chain(&base(1, 2, 2), Some(t(250))),
            Err(CoverageError::Missing("000000010000000000000003".into()))
        );
        assert_eq!(a.gaps(&base(1, 2, 2)), vec!["000000010000000000000003"]);
        // A base backup that starts after the gap is not affected.
        assert!(a.gaps(&base(1, 4, 4)).is_empty());
    }

    #[test]
    fn a_new_timeline_takes_over_from_its_switch() {
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Segment, Some(100)),
            rec(1, 3, WalKind::Partial, Some(150)),
            rec(2, 3, WalKind::Segment, Some(200)),
            rec(2, 4, WalKind::Partial, Some(300)),
        ]);
        let (chain, _) = a.chain(&base(1, 2, 2), Some(t(250))).unwrap();
        assert_eq!(
            chain.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec![
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004"
            ]
        );
    }

    #[test]
    fn an_old_timelines_copy_never_stands_in_for_the_new_ones() {
        // Timeline 2 began in segment 3; its segment 4 is missing, the old
        // primary's timeline-1 segment 4 is there: a gap, not a stand-in.
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Segment, Some(100)),
            rec(1, 3, WalKind::Segment, Some(150)),
            rec(1, 4, WalKind::Segment, Some(400)),
            rec(2, 3, WalKind::Segment, Some(200)),
            rec(2, 5, WalKind::Partial, Some(300)),
        ]);
        assert_eq!(
            a.chain(&base(1, 2, 2), Some(t(250))),
            Err(CoverageError::Missing("000000020000000000000004".into()))
        );
        assert_eq!(a.gaps(&base(1, 2, 2)), vec!["000000020000000000000004"]);
    }

    #[test]
    fn a_partial_copy_with_segments_after_it_is_a_gap() {
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Segment, Some(100)),
            rec(1, 3, WalKind::Partial, Some(150)),
            rec(1, 4, WalKind::Segment, Some(300)),
        ]);
        assert_eq!(
            a.chain(&base(1, 2, 2), Some(t(250))),
            Err(CoverageError::Missing("000000010000000000000003".into()))
        );
        assert_eq!(a.gaps(&base(1, 2, 2)), vec!["000000010000000000000003"]);
        // As the last file it is the archive's end, and fine.
        assert!(a.chain(&base(1, 2, 2), Some(t(140))).is_ok());
    }

    #[test]
    fn a_complete_segment_wins_over_a_partial_one() {
        let a = WalArchive::from_records([
            rec(1, 2, WalKind::Partial, Some(100)),
            rec(1, 2, WalKind::Segment, Some(90)),
        ]);
        assert_eq!(a.segments.values().next().unwrap().kind, WalKind::Segment);
    }
}
