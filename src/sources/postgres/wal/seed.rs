//! Where pg_receivewal starts with an empty spool: a zero-filled
//! `.partial` of a segment makes it start at that segment's beginning.
//!
//! - The archive holds log of the cluster: the segment after the newest
//!   archived one (or the newest, if only a partial copy of it is
//!   archived), so a restart neither skips nor repeats.
//! - It holds none: the segment holding the start of the oldest base
//!   backup this stack's snapshots retain, so that "init, a base backup,
//!   then the archiver" archives from the base backup's start, and every
//!   base backup has its log. A server that has already recycled that
//!   segment makes pg_receivewal fail; the archiver then reports the gap,
//!   naming the base backup, and resumes at the server's position.
//! - Neither: nothing is seeded, pg_receivewal starts at the server's
//!   current position.

use std::path::Path;

use super::{Archiver, list_spool};
use crate::model::wal::{BasePosition, Segment, WalKind};
use crate::sources::SourceError;
use crate::sources::postgres::cluster::ClusterIdentity;

/// The segment holding the start of the oldest of `bases` (by position,
/// then timeline) of cluster `id` with segment size `segment_size`, and
/// the id of the snapshot that holds it.
pub fn base_seed(
    bases: &[(String, BasePosition)],
    id: &str,
    segment_size: u64,
) -> Option<(String, Segment)> {
    bases
        .iter()
        .filter(|(_, b)| b.system_identifier == id && b.segment_size == segment_size)
        .min_by_key(|(snapshot, b)| (b.start_lsn, b.timeline, snapshot.clone()))
        .map(|(snapshot, b)| {
            (
                snapshot.clone(),
                Segment {
                    timeline: b.timeline,
                    number: b.start_lsn.segment(segment_size),
                },
            )
        })
}

impl Archiver {
    /// Seeds an empty spool so that pg_receivewal starts right after the
    /// newest archived log or, with none archived, at the oldest base
    /// backup's start.
    pub(super) async fn seed(&self, id: &ClusterIdentity, spool: &Path) -> Result<(), SourceError> {
        if !list_spool(spool, id.segment_size)?.is_empty() {
            return Ok(());
        }
        let (next, why) = match self.newest_archived(id).await {
            Some((seg, WalKind::Segment)) => (
                Segment {
                    timeline: seg.timeline,
                    number: seg.number + 1,
                },
                "resuming after the newest archived WAL".to_owned(),
            ),
            Some((seg, _)) => (seg, "resuming at the newest archived WAL".to_owned()),
            None => {
                let bases = self.retained_bases().await;
                let Some((snapshot, seg)) =
                    base_seed(&bases, &id.system_identifier, id.segment_size)
                else {
                    return Ok(());
                };
                *self
                    .seeded_from_base
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some((seg.name(id.segment_size), snapshot.clone()));
                (
                    seg,
                    format!(
                        "no WAL archived yet: starting at the base backup of snapshot {snapshot}"
                    ),
                )
            }
        };
        let path = spool.join(format!("{}.partial", next.name(id.segment_size)));
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(SourceError::io(format!("cannot create {}", path.display())))?;
        f.set_len(id.segment_size)
            .map_err(SourceError::io(format!("cannot size {}", path.display())))?;
        tracing::info!(segment = %next.name(id.segment_size), "{why}");
        Ok(())
    }

    /// The newest archived segment of cluster `id` in any repository, and
    /// whether it is complete.
    async fn newest_archived(&self, id: &ClusterIdentity) -> Option<(Segment, WalKind)> {
        let mut newest: Option<(Segment, WalKind)> = None;
        for repo in &self.ctx.repositories {
            if let Ok((records, _)) = repo.wal_records(&id.system_identifier).await {
                for r in records {
                    if let Some(s) = r.segment()
                        && newest
                            .is_none_or(|(n, _)| (s.number, s.timeline) > (n.number, n.timeline))
                    {
                        newest = Some((s, r.kind));
                    }
                }
            }
        }
        newest
    }

    /// The base backups (`postgres/cluster` artifacts that carry their
    /// start) of this stack's snapshots in every repository that answers,
    /// by snapshot id.
    async fn retained_bases(&self) -> Vec<(String, BasePosition)> {
        let mut bases = Vec::new();
        for repo in &self.ctx.repositories {
            let listing = match repo.listing().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(repository = %repo.name(), error = %e, "cannot list the snapshots: its base backups are not considered");
                    continue;
                }
            };
            for m in &listing.ours {
                for a in m.artifacts.iter().filter(|a| a.is_ok()) {
                    if let Some(w) = &a.wal {
                        bases.push((m.id.clone(), w.clone()));
                    }
                }
            }
        }
        bases
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wal::Lsn;

    const SIZE: u64 = 16 << 20;

    fn base(id: &str, tl: u32, start: u64) -> BasePosition {
        BasePosition {
            system_identifier: id.into(),
            timeline: tl,
            start_lsn: Lsn(start),
            end_lsn: Lsn(start + 0x100),
            segment_size: SIZE,
        }
    }

    #[test]
    fn the_seed_is_the_segment_holding_the_oldest_base_backups_start() {
        let bases = vec![
            ("20260105T000000Z".to_owned(), base("7", 1, 5 * SIZE + 0x28)),
            ("20260103T000000Z".to_owned(), base("7", 1, 2 * SIZE + 0x60)),
            ("20260104T000000Z".to_owned(), base("7", 2, 3 * SIZE)),
            // Another cluster's, older: not this one's.
            ("20260101T000000Z".to_owned(), base("8", 1, SIZE)),
        ];
        let (snapshot, seg) = base_seed(&bases, "7", SIZE).unwrap();
        assert_eq!(snapshot, "20260103T000000Z");
        assert_eq!(
            seg,
            Segment {
                timeline: 1,
                number: 2
            }
        );
        assert_eq!(seg.name(SIZE), "000000010000000000000002");
    }

    #[test]
    fn a_start_on_a_segment_boundary_seeds_that_segment() {
        let bases = vec![("s".to_owned(), base("7", 3, 0x1_0000_0000 + SIZE))];
        let (_, seg) = base_seed(&bases, "7", SIZE).unwrap();
        assert_eq!(seg.name(SIZE), "000000030000000100000001");
    }

    #[test]
    fn no_base_backup_of_the_cluster_seeds_nothing() {
        assert_eq!(base_seed(&[], "7", SIZE), None);
        let other_size = vec![(
            "s".to_owned(),
            BasePosition {
                segment_size: 64 << 20,
                ..base("7", 1, SIZE)
            },
        )];
        assert_eq!(base_seed(&other_size, "7", SIZE), None);
        let other = vec![("s".to_owned(), base("8", 1, SIZE))];
        assert_eq!(base_seed(&other, "7", SIZE), None);
    }
}
