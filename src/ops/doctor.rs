//! `doctor`: prove the configuration works before the night it is needed.
//!
//! For every repository it checks, in order, that the store answers and
//! the credentials are accepted, that the repository is initialised, and
//! that a write, a read-back and a delete of a probe object succeed. It
//! also checks that the identity file (needed only to restore) is readable
//! when one is configured. Every failure carries the storage layer's
//! message, which says what to fix (unknown key, wrong secret, missing
//! bucket, DNS, TLS, clock skew, permissions).

use bytes::Bytes;
use serde::Serialize;

use crate::model::config::Config;
use crate::repository::{Repository, RepositoryError};
use crate::storage::PutMode;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`repository offsite: write`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details, or what to fix.
    pub message: String,
}

/// Runs every check; `only` limits them to one repository.
pub async fn run(config: &Config, only: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    for rc in config
        .repositories
        .iter()
        .filter(|r| only.is_none_or(|o| o == r.name))
    {
        let repo = Repository::open(rc);
        repository(&repo, &mut checks).await;
    }
    if only.is_none() {
        match config
            .encryption
            .as_ref()
            .and_then(|e| e.identity_file.as_ref())
        {
            Some(p) => checks.push(match crate::pipeline::load_identities(config) {
                Ok(_) => Check {
                    name: "identity".into(),
                    ok: true,
                    message: format!(
                        "{} is readable (restore, verify and drills can decrypt)",
                        p.display()
                    ),
                },
                Err(e) => Check {
                    name: "identity".into(),
                    ok: false,
                    message: e.to_string(),
                },
            }),
            None => checks.push(Check {
                name: "identity".into(),
                ok: true,
                message:
                    "no identity_file configured: backups work; restore, verify and drills need one"
                        .into(),
            }),
        }
    }
    checks
}

async fn repository(repo: &Repository, checks: &mut Vec<Check>) {
    let name = |what: &str| format!("repository {}: {what}", repo.name());
    let backend = repo.backend();
    // Reachable, credentials accepted (a list needs both).
    if let Err(e) = backend.list("snapshots/").await {
        checks.push(Check {
            name: name("reach"),
            ok: false,
            message: e.to_string(),
        });
        return;
    }
    checks.push(Check {
        name: name("reach"),
        ok: true,
        message: format!("{} answers; the credentials are accepted", repo.location()),
    });
    checks.push(match repo.marker().await {
        Ok(m) => Check {
            name: name("initialised"),
            ok: true,
            message: format!("format version {}, created {}", m.version, m.created_at),
        },
        Err(e @ RepositoryError::NotInitialised { .. }) => Check {
            name: name("initialised"),
            ok: false,
            message: e.to_string(),
        },
        Err(e) => Check {
            name: name("initialised"),
            ok: false,
            message: e.to_string(),
        },
    });
    let key = format!("doctor/probe-{:08x}", rand::random::<u32>());
    let body = Bytes::from_static(b"kompose-dr doctor probe\n");
    let result = async {
        backend.put(&key, body.clone(), PutMode::Overwrite).await?;
        let back = backend.get(&key).await?;
        if back != body {
            return Err(crate::storage::StorageError::Remote {
                op: "read back",
                location: key.clone(),
                message: "the probe came back different".into(),
            });
        }
        backend.delete(&key).await
    }
    .await;
    checks.push(match result {
        Ok(()) => Check {
            name: name("write"),
            ok: true,
            message: "a probe object was written, read back and deleted".into(),
        },
        Err(e) => Check {
            name: name("write"),
            ok: false,
            message: e.to_string(),
        },
    });
}
