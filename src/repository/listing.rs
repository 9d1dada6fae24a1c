//! Reading a repository's snapshots: every manifest checked (bounded in
//! size and number, signed, validated), sorted into this stack's and other
//! stacks', and the gaps that show a deletion: a snapshot that a later one
//! names as its predecessor and that prune did not remove, and a newest
//! snapshot that this host committed and that is gone.

use std::collections::BTreeSet;

use serde::Serialize;

use super::validate::{self, MAX_DOCUMENT};
use super::{DamagedManifest, MarkerState, Repository, RepositoryError};
use crate::model::manifest::{MANIFEST_VERSION, Manifest};
use crate::storage::{StorageError, keys};

/// The most manifests a reader loads: a nightly backup for centuries.
pub const MAX_MANIFESTS: usize = 50_000;

/// A repository's snapshots, as a reader may use them.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The repository's stack (its marker's), if it has one yet.
    pub stack: Option<String>,
    /// This stack's snapshots, newest first: the ones `latest`, a point in
    /// time, retention and the agent's schedule consider.
    pub ours: Vec<Manifest>,
    /// Snapshots of other stacks (signed by the same key, written for
    /// another host or repository), newest first: used only when named.
    pub others: Vec<Manifest>,
    /// Manifests and prune records that could not be read, with why.
    pub damaged: Vec<DamagedManifest>,
    /// Snapshots that a later one names as its predecessor, gone other
    /// than through prune.
    pub vanished: Vec<Vanished>,
    /// The newest snapshot this host committed here, if it is gone other
    /// than through prune: the repository is behind what this host wrote.
    pub behind: Option<Behind>,
}

/// A snapshot gone other than through prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vanished {
    /// The vanished snapshot's id.
    pub id: String,
    /// The snapshot that names it as its predecessor.
    pub named_by: String,
}

/// The repository holds less than this host committed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Behind {
    /// The newest snapshot this host committed here, now missing.
    pub host_newest: String,
    /// The repository's newest snapshot of this stack, if any.
    pub repository_newest: Option<String>,
}

impl Listing {
    /// A snapshot by id, of this stack or another (named snapshots may be
    /// of any stack).
    pub fn find(&self, id: &str) -> Option<&Manifest> {
        self.ours.iter().chain(&self.others).find(|m| m.id == id)
    }

    /// Whether a deletion shows: a vanished snapshot, or a repository
    /// behind this host's record.
    pub fn deletion_shows(&self) -> bool {
        !self.vanished.is_empty() || self.behind.is_some()
    }
}

/// What reading one manifest gave.
enum Read {
    /// Removed between the listing and the read (a prune running).
    Gone,
    /// Checked out.
    Good(Box<Manifest>),
    /// Does not check out: why.
    Damaged(String),
}

/// Whether `m` belongs to the stack of a repository in `state`: its own
/// stack; or none (written before stack ids) in a repository not adopted
/// yet, or one of those it held when it was adopted.
fn belongs(m: &Manifest, state: &MarkerState) -> bool {
    match (&m.stack, &state.legacy) {
        (Some(_), _) => m.stack == state.stack,
        (None, None) => state.stack.is_none(),
        (None, Some(legacy)) => legacy.contains(&m.id),
    }
}

/// The snapshot id of a manifest key, if it is one.
fn id_of(key: &str) -> Option<&str> {
    key.strip_prefix(keys::SNAPSHOTS)?.strip_suffix(".json")
}

impl Repository {
    /// Every snapshot, read with every rule a reader applies and sorted by
    /// stack, with the deletions that show.
    pub async fn listing(&self) -> Result<Listing, RepositoryError> {
        let state = self.marker_state().await;
        let objects = self.manifest_objects().await?;
        let mut listing = Listing {
            stack: state.stack.clone(),
            ..Listing::default()
        };
        for o in &objects {
            let key = &o.key;
            // Larger than any manifest: not read at all.
            let read = if o.size > MAX_DOCUMENT {
                Read::Damaged(format!(
                    "it is larger than the {MAX_DOCUMENT} bytes any manifest kompose-dr writes can be"
                ))
            } else {
                self.read_manifest(key).await?
            };
            match read {
                Read::Gone => {}
                Read::Good(m) if belongs(&m, &state) => listing.ours.push(*m),
                Read::Good(m) => listing.others.push(*m),
                Read::Damaged(message) => listing.damaged.push(DamagedManifest {
                    key: key.clone(),
                    message,
                }),
            }
        }
        // Newest first; ids of one second differ only by their random part.
        for list in [&mut listing.ours, &mut listing.others] {
            list.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        }
        self.marker_put_back(&state, &listing)?;
        // Present means it checks out: garbage at a deleted snapshot's key
        // hides nothing.
        let present: BTreeSet<&str> = listing
            .ours
            .iter()
            .chain(&listing.others)
            .map(|m| m.id.as_str())
            .collect();
        let (pruned, bad) = self.pruned().await?;
        listing.damaged.extend(bad);
        listing.vanished = listing
            .ours
            .iter()
            .filter(|m| m.repository == self.name)
            .filter_map(|m| {
                let p = m.previous.as_deref()?;
                (!present.contains(p) && !pruned.contains(p)).then(|| Vanished {
                    id: p.to_owned(),
                    named_by: m.id.clone(),
                })
            })
            .collect();
        if let Some(seen) = self.seen()
            && !present.contains(seen.newest.as_str())
            && !pruned.contains(&seen.newest)
        {
            listing.behind = Some(Behind {
                host_newest: seen.newest,
                repository_newest: listing.ours.first().map(|m| m.id.clone()),
            });
        }
        Ok(listing)
    }

    /// The keys of every manifest, oldest first; refused past
    /// [`MAX_MANIFESTS`].
    async fn manifest_keys(&self) -> Result<Vec<String>, RepositoryError> {
        Ok(self
            .manifest_objects()
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    /// Every manifest as listed (key and size); refused past
    /// [`MAX_MANIFESTS`].
    async fn manifest_objects(&self) -> Result<Vec<crate::storage::ObjectMeta>, RepositoryError> {
        let objects = self
            .backend
            .list(keys::SNAPSHOTS)
            .await
            .map_err(|e| self.storage(e))?;
        let keys: Vec<_> = objects
            .into_iter()
            .filter(|o| o.key.ends_with(".json"))
            .collect();
        if keys.len() > MAX_MANIFESTS {
            return Err(RepositoryError::TooMany {
                name: self.name.clone(),
                prefix: keys::SNAPSHOTS,
                count: keys.len(),
                limit: MAX_MANIFESTS,
            });
        }
        Ok(keys)
    }

    /// Refuses a listing in which signed snapshots name a stack while the
    /// marker names none: the marker from before stack ids was put back
    /// over the adopted one (which would make every newer snapshot
    /// another stack's).
    fn marker_put_back(
        &self,
        state: &MarkerState,
        listing: &Listing,
    ) -> Result<(), RepositoryError> {
        match (
            &state.stack,
            listing.others.iter().find_map(|m| m.stack.as_deref()),
        ) {
            (None, Some(stack)) => Err(RepositoryError::Damaged {
                name: self.name.clone(),
                key: super::MARKER.into(),
                message: format!(
                    "it names no stack, but signed snapshots here name stack {stack}: a marker from before stack ids \
                     was put back over the adopted one; put kompose-dr.json and its .minisig back from another \
                     repository of that stack"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Whether any manifest in the repository verifies with the public key
    /// (a repository that has one is a signed one, whatever its marker).
    pub(super) async fn any_manifest_signed(&self) -> Result<bool, RepositoryError> {
        for o in self.manifest_objects().await? {
            if o.size > MAX_DOCUMENT {
                continue;
            }
            let Ok(Some(body)) = self.read_document(&o.key, MAX_DOCUMENT).await else {
                continue;
            };
            let Ok(Some(sig)) = self.read_signature(&o.key).await else {
                continue;
            };
            let strict = super::signing::UnsignedRule::RefuseSigned;
            if super::signing::check(&self.trust, &o.key, &body, Some(&sig), strict).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One manifest, with every rule a reader applies: at most
    /// [`MAX_DOCUMENT`] bytes read, signed, a known version, validated.
    async fn read_manifest(&self, key: &str) -> Result<Read, RepositoryError> {
        let body = match self.read_document(key, MAX_DOCUMENT).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Read::Gone),
            Err(StorageError::NotAnObject { message, .. }) => return Ok(Read::Damaged(message)),
            Err(e) => return Err(self.storage(e)),
        };
        if let Err(e) = self.check_signed(key, &body).await {
            return Ok(Read::Damaged(e.to_string()));
        }
        Ok(match serde_json::from_slice::<Manifest>(&body) {
            Ok(m) if m.version <= MANIFEST_VERSION => match validate::manifest(&m, key) {
                Ok(()) => Read::Good(Box::new(m)),
                Err(message) => Read::Damaged(message.0),
            },
            Ok(m) => Read::Damaged(format!(
                "manifest version {} is newer than this kompose-dr reads",
                m.version
            )),
            Err(e) => Read::Damaged(e.to_string()),
        })
    }

    /// The newest snapshot of the repository's stack started before
    /// `manifest`: the predecessor it names when committed now. Manifests
    /// are read newest first (by the second in their id), until one of the
    /// stack checks out and nothing of an earlier second can be newer.
    pub(super) async fn newest_of_stack(
        &self,
        state: &MarkerState,
        manifest: &Manifest,
    ) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>, RepositoryError> {
        let second = |id: &str| id.get(..16).unwrap_or_default().to_owned();
        let own = (manifest.started_at, manifest.id.as_str());
        let mut keys = self.manifest_keys().await?;
        keys.retain(|k| {
            id_of(k).is_some_and(|i| i != manifest.id && second(i) <= second(&manifest.id))
        });
        keys.sort();
        let mut best: Option<Manifest> = None;
        for key in keys.iter().rev() {
            if let Some(b) = &best
                && id_of(key).is_some_and(|i| second(i) < second(&b.id))
            {
                break;
            }
            if let Read::Good(m) = self.read_manifest(key).await?
                && belongs(&m, state)
                && (m.started_at, m.id.as_str()) < own
                && best
                    .as_ref()
                    .is_none_or(|b| (m.started_at, &m.id) > (b.started_at, &b.id))
            {
                best = Some(*m);
            }
        }
        Ok(best.map(|m| (m.started_at, m.id)))
    }
}
