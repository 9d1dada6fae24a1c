//! The facts sidecar: what verification needs to know about the data,
//! stored encrypted at `data/<ID>/facts.json.zst.age` because it is derived
//! from the data's content (table names and row counts, key counts,
//! certificate domains).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything recorded about one snapshot's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The snapshot these facts describe: the same id as its manifest and as
    /// the `data/<ID>/` prefix the sidecar is stored under.
    pub snapshot: String,
    /// Per source name.
    pub sources: BTreeMap<String, SourceFacts>,
}

/// What is known about one source's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceFacts {
    /// A database: exact row count per table (`schema.table`), counted in
    /// the same snapshot pg_dump used.
    Postgres {
        /// Row count per table.
        tables: BTreeMap<String, u64>,
    },
    /// Redis: keys per logical database (`db0` …).
    Redis {
        /// Key count per database: counted in the saved file, without the
        /// keys whose expiry was before `counted_at`. Facts without
        /// `counted_at` (older versions, or a file that could not be
        /// counted) hold the server's own count right after the save.
        keys: BTreeMap<String, u64>,
        /// Of those, the keys with a TTL, per database (absent: none).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        volatile: BTreeMap<String, u64>,
        /// The moment the counts hold for, when they were counted in the
        /// file: a key counts unless its expiry is before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counted_at: Option<DateTime<Utc>>,
    },
    /// A file; certificates when it is an ACME store such as acme.json.
    File {
        /// Certificates found, if the file is an ACME store.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificates: Option<Vec<Certificate>>,
    },
}

/// A certificate in an ACME store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// The resolver it belongs to (Traefik's certificate resolver).
    pub resolver: String,
    /// The main domain as the store names it.
    pub main: String,
    /// DNS names in the certificate.
    pub domains: Vec<String>,
    /// When the certificate expires (its `notAfter`, UTC); absent when it could
    /// not be decoded, and then `error` says why.
    pub not_after: Option<DateTime<Utc>>,
    /// Why it could not be decoded, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
