//! `check`: repository integrity, with or without the key.
//!
//! Without a key: every manifest parses, every archive it names exists with
//! the recorded size and sha256 (hashed streaming), and data that no
//! manifest names is reported. With `--read-data` and the identity, every
//! archive is also decrypted and decompressed end to end (age
//! authentication and zstd frame checksums).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::model::manifest::Artifact;
use crate::repository::{Repository, RepositoryError};
use crate::restore::stream::{VerifyingReader, copy_archive};

/// One damaged thing.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// The snapshot, if any.
    pub snapshot: Option<String>,
    /// The source (or `facts`, or the manifest key).
    pub source: String,
    /// Key of the damaged object in the repository: an archive, the facts
    /// sidecar or a manifest.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// The result of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Name of the repository checked (`--repository`, or the first configured
    /// one that answers).
    pub repository: String,
    /// Snapshots whose manifest parsed.
    pub snapshots: usize,
    /// How many stored objects were checked: every good artifact's archive and
    /// each snapshot's facts sidecar.
    pub archives: usize,
    /// Whether archives were also decrypted and decompressed.
    pub read_data: bool,
    /// Every damaged manifest or object; empty when the repository is sound.
    pub damaged: Vec<Damage>,
    /// Objects under `data/` that no manifest names (unfinished or
    /// abandoned runs; prune removes them).
    pub unreferenced: Vec<String>,
    /// Whether nothing is damaged (`damaged` is empty); unreferenced objects do
    /// not count against it. Decides the exit status.
    pub ok: bool,
}

async fn hash_object(repo: &Repository, a: &Artifact) -> Result<(), String> {
    let path = a.path.as_deref().unwrap_or_default();
    let mut r = repo.backend().open(path).await.map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = r.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    if n != a.stored_bytes {
        return Err(format!("{n} bytes, the manifest says {}", a.stored_bytes));
    }
    let sha = hex::encode(h.finalize());
    if a.sha256.as_deref() != Some(sha.as_str()) {
        return Err(format!("sha256 {sha} differs from the manifest's"));
    }
    Ok(())
}

async fn read_object(
    repo: &Repository,
    a: &Artifact,
    identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
) -> Result<(), String> {
    let path = a.path.as_deref().unwrap_or_default();
    let r = repo.backend().open(path).await.map_err(|e| e.to_string())?;
    let stored = VerifyingReader::new(tokio_util::io::SyncIoBridge::new(r), a, Box::new(|_| {}));
    tokio::task::spawn_blocking(move || {
        copy_archive(stored, &identities, &mut std::io::sink()).map(|_| ())
    })
    .await
    .map_err(|e| format!("reader failed: {e}"))?
    .map_err(|e| e.to_string())
}

/// Checks a repository; `identities` given means `--read-data`.
pub async fn run(
    repo: &Repository,
    identities: Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>,
) -> Result<CheckReport, RepositoryError> {
    let (snapshots, damaged_manifests) = repo.snapshots().await?;
    let mut damaged: Vec<Damage> = damaged_manifests
        .into_iter()
        .map(|d| Damage {
            snapshot: None,
            source: "manifest".into(),
            path: d.key,
            problem: d.message,
        })
        .collect();
    let mut referenced = BTreeSet::new();
    let mut archives = 0;
    for m in &snapshots {
        let mut objects: Vec<Artifact> =
            m.artifacts.iter().filter(|a| a.is_ok()).cloned().collect();
        if let Some(f) = &m.facts {
            // The sidecar, checked like an artifact.
            let mut a = m
                .artifacts
                .first()
                .cloned()
                .expect("a committed snapshot has artifacts");
            a.source = "facts".into();
            a.path = Some(f.path.clone());
            a.stored_bytes = f.stored_bytes;
            a.sha256 = Some(f.sha256.clone());
            objects.push(a);
        }
        for a in objects {
            let path = a.path.clone().unwrap_or_default();
            referenced.insert(path.clone());
            archives += 1;
            let result = match &identities {
                None => hash_object(repo, &a).await,
                Some(ids) => read_object(repo, &a, ids.clone()).await,
            };
            match result {
                Ok(()) => tracing::debug!(snapshot = %m.id, source = %a.source, "intact"),
                Err(problem) => {
                    tracing::error!(snapshot = %m.id, source = %a.source, path = %path, "{problem}");
                    damaged.push(Damage {
                        snapshot: Some(m.id.clone()),
                        source: a.source.clone(),
                        path,
                        problem,
                    });
                }
            }
        }
    }
    let unreferenced: Vec<String> = repo
        .backend()
        .list(crate::storage::keys::DATA)
        .await
        .map_err(|source| RepositoryError::Storage {
            name: repo.name().to_owned(),
            source,
        })?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !referenced.contains(k))
        .collect();
    Ok(CheckReport {
        repository: repo.name().to_owned(),
        snapshots: snapshots.len(),
        archives,
        read_data: identities.is_some(),
        ok: damaged.is_empty(),
        damaged,
        unreferenced,
    })
}
