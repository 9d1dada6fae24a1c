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
        /// The database object itself (owner, ACL, settings, locale…);
        /// absent in snapshots taken before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<Box<DatabaseFacts>>,
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
    /// A directory tree or volume: what the tar holds.
    Directory {
        /// Regular files in the tar (SQLite copies included).
        files: u64,
        /// Their bytes, in total.
        bytes: u64,
        /// Per SQLite database (its path relative to the root).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sqlite: BTreeMap<String, SqliteFacts>,
    },
    /// kompose-dr's own configuration (source `config`): every file in
    /// the tar, in its order.
    Config {
        /// The files, as the tar names them (relative to `/`).
        files: Vec<ConfigFileFacts>,
    },
}

/// One file of the `config` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFileFacts {
    /// Its path on the host, relative to `/` (the tar entry's name).
    pub path: String,
    /// What named it: `config` (the file itself), `policies_dir`,
    /// `drills_dir`, or the key (`postgres.password_file`).
    pub named_by: String,
    /// Whether it holds a secret (written back 0600).
    pub secret: bool,
    /// Its permission bits on the host.
    pub mode: u32,
    /// Its size.
    pub bytes: u64,
    /// sha256 of its content, hex.
    pub sha256: String,
}

/// A SQLite database as copied into the tar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqliteFacts {
    /// `PRAGMA page_count` of the copy.
    pub pages: u64,
    /// `PRAGMA integrity_check` of the copy (`ok`).
    pub integrity: String,
    /// Row count per table (`sqlite_master` tables, internal ones left out).
    pub tables: BTreeMap<String, u64>,
}

/// The database object as `pg_database` and its satellites describe it at
/// backup time: what `pg_restore --create` would bring back, and what a
/// restore into a scratch database must set itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseFacts {
    /// The owning role.
    pub owner: String,
    /// Server encoding (`UTF8`, `LATIN1`).
    pub encoding: String,
    /// Locale provider: `libc`, `icu` or `builtin` (PostgreSQL 15+; `libc`
    /// before).
    pub locale_provider: String,
    /// `LC_COLLATE`.
    pub collate: String,
    /// `LC_CTYPE`.
    pub ctype: String,
    /// The ICU (or builtin) locale, when the provider is not libc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// ICU tailoring rules (PostgreSQL 16+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
    /// The ACL as `aclitem` texts (`=Tc/postgres`, `app=c/postgres`);
    /// absent when it is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// `COMMENT ON DATABASE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The default tablespace, when it is not `pg_default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<String>,
    /// `ALTER DATABASE … SET` (role absent) and `ALTER ROLE … IN DATABASE …
    /// SET` settings, as `name=value` texts like `pg_db_role_setting` holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<RoleSettings>,
}

/// The settings of one role in the database, or of every role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoleSettings {
    /// The role; absent for `ALTER DATABASE … SET` (every role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `name=value` texts.
    pub settings: Vec<String>,
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
