//! The database object itself: owner, ACL, connection limit, settings,
//! per-role settings, comment, encoding and locale.
//!
//! pg_dump writes these only for `pg_restore --create`, which restores under
//! the archive's own name. kompose-dr restores into a scratch database and
//! renames it into place (so that a failed restore never touches the
//! original), so it records the object at backup time — in the encrypted
//! facts, inside the dump's own snapshot — creates the scratch database with
//! the recorded encoding and locale, and sets the rest on it before the
//! swap. `verify` reads the object back and compares it with the facts.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::{query_error, quote_ident};
use crate::clients::ClientError;
use crate::model::facts::{DatabaseFacts, RoleSettings};

/// Reads database `db`'s object through any session on its server.
pub async fn read(client: &Client, db: &str) -> Result<DatabaseFacts, ClientError> {
    // to_jsonb keeps this one query across versions: the locale columns
    // were added (15: datlocprovider, daticulocale; 16: daticurules) and
    // renamed (17: datlocale).
    let row = client
        .query_opt(
            "SELECT (to_jsonb(d) - 'datacl')::text, pg_get_userbyid(d.datdba), \
                    pg_encoding_to_char(d.encoding), shobj_description(d.oid, 'pg_database'), \
                    d.datacl::text[], t.spcname \
             FROM pg_database d LEFT JOIN pg_tablespace t ON t.oid = d.dattablespace \
             WHERE d.datname = $1",
            &[&db],
        )
        .await
        .map_err(query_error(format!(
            "database `{db}`: cannot read its properties"
        )))?
        .ok_or_else(|| ClientError::PostgresData(format!("database `{db}` does not exist")))?;
    let json: String = row.get(0);
    let j: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
        ClientError::PostgresData(format!("database `{db}`: pg_database as JSON: {e}"))
    })?;
    let text = |k: &str| j.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let locale_provider = match text("datlocprovider").as_deref() {
        Some("i") => "icu",
        Some("b") => "builtin",
        _ => "libc",
    }
    .to_owned();
    let locale = text("datlocale")
        .or_else(|| text("daticulocale"))
        .filter(|_| locale_provider != "libc");
    let settings = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = $1 ORDER BY 1 NULLS FIRST",
            &[&db],
        )
        .await
        .map_err(query_error(format!(
            "database `{db}`: cannot read its settings"
        )))?
        .iter()
        .map(|r| RoleSettings {
            role: r.get(0),
            settings: r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
        })
        .filter(|s| !s.settings.is_empty())
        .collect();
    Ok(DatabaseFacts {
        owner: row.get(1),
        encoding: row.get(2),
        locale_provider,
        collate: text("datcollate").unwrap_or_default(),
        ctype: text("datctype").unwrap_or_default(),
        locale,
        icu_rules: text("daticurules"),
        connection_limit: j
            .get("datconnlimit")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(-1) as i32,
        acl: row.get(4),
        comment: row.get(3),
        settings,
        tablespace: row
            .get::<_, Option<String>>(5)
            .filter(|t| t != "pg_default"),
    })
}

/// A string as an SQL literal (`standard_conforming_strings` is on on every
/// supported server).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Why the recorded database cannot be created on the target server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// The facts name a locale provider PostgreSQL does not have.
    #[error(
        "the recorded locale provider `{}` is not one PostgreSQL has (libc, icu, builtin)",
        .0.escape_debug()
    )]
    UnknownProvider(String),
    /// The target server is too old for the recorded locale provider.
    #[error(
        "the database used the {provider} locale provider, which PostgreSQL {major} does not have: \
         restore onto PostgreSQL {needs} or newer (--target-url)"
    )]
    ProviderTooNew {
        /// `icu` or `builtin`.
        provider: String,
        /// The target's major version.
        major: u32,
        /// The first major version that has the provider.
        needs: u32,
    },
}

/// `CREATE DATABASE name` with the recorded encoding and locale, on a
/// server of major version `major`.
pub fn create_sql(name: &str, f: &DatabaseFacts, major: u32) -> Result<String, CreateError> {
    let mut sql = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(name),
        literal(&f.encoding),
        literal(&f.collate),
        literal(&f.ctype)
    );
    if let Some(t) = &f.tablespace {
        sql.push_str(&format!(" TABLESPACE {}", quote_ident(t)));
    }
    match (f.locale_provider.as_str(), &f.locale) {
        (provider, _) if !["libc", "icu", "builtin"].contains(&provider) => {
            return Err(CreateError::UnknownProvider(provider.to_owned()));
        }
        ("libc", _) => {
            if major >= 15 {
                sql.push_str(" LOCALE_PROVIDER libc");
            }
        }
        (provider, locale) => {
            let needs = if provider == "icu" { 15 } else { 17 };
            if major < needs {
                return Err(CreateError::ProviderTooNew {
                    provider: provider.to_owned(),
                    major,
                    needs,
                });
            }
            let key = if provider == "icu" {
                "ICU_LOCALE"
            } else {
                "BUILTIN_LOCALE"
            };
            sql.push_str(&format!(" LOCALE_PROVIDER {provider}"));
            if let Some(l) = locale {
                sql.push_str(&format!(" {key} {}", literal(l)));
            }
            if let Some(r) = &f.icu_rules {
                sql.push_str(&format!(" ICU_RULES {}", literal(r)));
            }
        }
    }
    Ok(sql)
}

/// What [`apply_sql`] may set: everything, or (for `--no-owner`) neither the
/// owner nor the ACL, and role settings only for roles that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Owner, ACL and every role's settings, as recorded.
    Recorded,
    /// Leave owner and ACL as the restoring user made them.
    Skip,
}

/// The statements that give database `name` the recorded properties
/// besides encoding and locale (set at creation). `roles` are the roles
/// that exist on the target: per-role settings of other roles are skipped
/// with [`Ownership::Skip`] (and listed in the second value).
pub fn apply_sql(
    name: &str,
    f: &DatabaseFacts,
    ownership: Ownership,
    roles: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let db = quote_ident(name);
    let mut sql = Vec::new();
    let mut skipped = Vec::new();
    if ownership == Ownership::Recorded {
        sql.push(format!(
            "ALTER DATABASE {db} OWNER TO {}",
            quote_ident(&f.owner)
        ));
    }
    sql.push(format!(
        "ALTER DATABASE {db} CONNECTION LIMIT {}",
        f.connection_limit
    ));
    if ownership == Ownership::Recorded
        && let Some(acl) = &f.acl
    {
        sql.push(format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"));
        sql.push(format!(
            "REVOKE ALL ON DATABASE {db} FROM {}",
            quote_ident(&f.owner)
        ));
        for item in acl.iter().filter_map(|a| AclItem::parse(a)) {
            sql.extend(item.grants(&db));
        }
    }
    for rs in &f.settings {
        let target = match &rs.role {
            None => format!("ALTER DATABASE {db}"),
            Some(r) if ownership == Ownership::Skip && !roles.contains(r) => {
                skipped.push(format!("settings of role {r} (it does not exist here)"));
                continue;
            }
            Some(r) => format!("ALTER ROLE {} IN DATABASE {db}", quote_ident(r)),
        };
        for s in &rs.settings {
            if let Some(set) = set_clause(s) {
                sql.push(format!("{target} {set}"));
            }
        }
    }
    sql.push(format!(
        "COMMENT ON DATABASE {db} IS {}",
        f.comment.as_deref().map_or("NULL".to_owned(), literal)
    ));
    (sql, skipped)
}

/// Settings whose value is a list of (possibly double-quoted) items, each
/// of which must be given as its own literal (pg_dump's list).
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `SET name TO value` for one `name=value` text of `pg_db_role_setting`.
pub fn set_clause(setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    let values = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        let items = split_list(value);
        if items.is_empty() {
            literal("")
        } else {
            items
                .iter()
                .map(|v| literal(v))
                .collect::<Vec<_>>()
                .join(", ")
        }
    } else {
        literal(value)
    };
    Some(format!("SET {} TO {values}", quote_ident(name)))
}

/// Splits a list setting (`"$user", public`) into its items, unquoted.
fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_owned();
        }
        // `""` is an item (an empty search_path is stored as `""`); an
        // unquoted empty one is nothing.
        if quoted || !item.is_empty() {
            items.push(item);
        }
        if chars.next().is_none() {
            break;
        }
    }
    items
}

/// One `aclitem`: `grantee=privileges/grantor`, the grantee empty for
/// PUBLIC, a `*` after a privilege letter for its grant option.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclItem {
    /// The role, or `None` for PUBLIC.
    pub grantee: Option<String>,
    /// Privilege letters, with `*` after those held with grant option.
    pub privileges: String,
}

impl AclItem {
    /// Parses an `aclitem` text; `None` if it is not one.
    pub fn parse(text: &str) -> Option<AclItem> {
        let (grantee, rest) = if let Some(quoted) = text.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().is_some_and(|(_, c)| *c == '"') {
                        chars.next();
                        name.push('"');
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    name.push(c);
                }
            }
            (Some(name), &quoted[end?..])
        } else {
            let (g, _) = text.split_once('=')?;
            ((!g.is_empty()).then(|| g.to_owned()), &text[g.len()..])
        };
        let rest = rest.strip_prefix('=')?;
        let privileges = rest.split('/').next()?.to_owned();
        Some(AclItem {
            grantee,
            privileges,
        })
    }

    /// The `GRANT`s that give this item's privileges on database `db` (an
    /// identifier, quoted).
    fn grants(&self, db: &str) -> Vec<String> {
        let who = self
            .grantee
            .as_deref()
            .map_or("PUBLIC".to_owned(), quote_ident);
        let mut plain = Vec::new();
        let mut with_option = Vec::new();
        let mut chars = self.privileges.chars().peekable();
        while let Some(c) = chars.next() {
            let name = match c {
                'C' => "CREATE",
                'T' => "TEMPORARY",
                'c' => "CONNECT",
                _ => continue,
            };
            if chars.peek() == Some(&'*') {
                chars.next();
                with_option.push(name);
            } else {
                plain.push(name);
            }
        }
        let mut out = Vec::new();
        if !plain.is_empty() {
            out.push(format!(
                "GRANT {} ON DATABASE {db} TO {who}",
                plain.join(", ")
            ));
        }
        if !with_option.is_empty() {
            out.push(format!(
                "GRANT {} ON DATABASE {db} TO {who} WITH GRANT OPTION",
                with_option.join(", ")
            ));
        }
        out
    }
}

/// The ACL as a set of (grantee, privileges), the grantor left out: the
/// default (NULL) is spelled out as PostgreSQL defines it.
fn acl_set(acl: &Option<Vec<String>>, owner: &str) -> BTreeSet<AclItem> {
    match acl {
        Some(items) => items
            .iter()
            .filter_map(|a| AclItem::parse(a))
            .filter(|a| !a.privileges.is_empty())
            .collect(),
        None => [
            AclItem {
                grantee: None,
                privileges: "Tc".into(),
            },
            AclItem {
                grantee: Some(owner.to_owned()),
                privileges: "CTc".into(),
            },
        ]
        .into_iter()
        .collect(),
    }
}

/// What differs between the recorded object and a restored one. With
/// [`Ownership::Skip`] (the roles were not restored) owner, ACL and
/// per-role settings are not compared.
pub fn differences(
    recorded: &DatabaseFacts,
    restored: &DatabaseFacts,
    ownership: Ownership,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut same = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} is {b}, {a} recorded"));
        }
    };
    same(
        "encoding",
        recorded.encoding.clone(),
        restored.encoding.clone(),
    );
    same(
        "locale provider",
        recorded.locale_provider.clone(),
        restored.locale_provider.clone(),
    );
    same(
        "LC_COLLATE",
        recorded.collate.clone(),
        restored.collate.clone(),
    );
    same("LC_CTYPE", recorded.ctype.clone(), restored.ctype.clone());
    same(
        "locale",
        format!("{:?}", recorded.locale),
        format!("{:?}", restored.locale),
    );
    same(
        "ICU rules",
        format!("{:?}", recorded.icu_rules),
        format!("{:?}", restored.icu_rules),
    );
    same(
        "tablespace",
        format!("{:?}", recorded.tablespace),
        format!("{:?}", restored.tablespace),
    );
    same(
        "connection limit",
        recorded.connection_limit.to_string(),
        restored.connection_limit.to_string(),
    );
    same(
        "comment",
        format!("{:?}", recorded.comment),
        format!("{:?}", restored.comment),
    );
    let settings = |f: &DatabaseFacts| -> BTreeSet<(Option<String>, String)> {
        f.settings
            .iter()
            .filter(|s| ownership == Ownership::Recorded || s.role.is_none())
            .flat_map(|s| s.settings.iter().map(|v| (s.role.clone(), v.clone())))
            .collect()
    };
    same(
        "settings",
        format!("{:?}", settings(recorded)),
        format!("{:?}", settings(restored)),
    );
    if ownership == Ownership::Recorded {
        same("owner", recorded.owner.clone(), restored.owner.clone());
        same(
            "ACL",
            format!("{:?}", acl_set(&recorded.acl, &recorded.owner)),
            format!("{:?}", acl_set(&restored.acl, &restored.owner)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DatabaseFacts {
        DatabaseFacts {
            owner: "app".into(),
            encoding: "LATIN1".into(),
            locale_provider: "libc".into(),
            collate: "C".into(),
            ctype: "C".into(),
            connection_limit: 17,
            acl: Some(vec![
                "=T/postgres".into(),
                "app=CTc/app".into(),
                "\"Odd \"\"One\"\"\"=c*/app".into(),
            ]),
            comment: Some("it's".into()),
            settings: vec![
                RoleSettings {
                    role: None,
                    settings: vec!["work_mem=7MB".into()],
                },
                RoleSettings {
                    role: Some("ghost".into()),
                    settings: vec!["search_path=\"$user\", public, \"a,b\"".into()],
                },
            ],
            ..DatabaseFacts::default()
        }
    }

    #[test]
    fn acl_items_parse_with_quoted_grantees_and_public() {
        assert_eq!(
            AclItem::parse("=Tc/postgres").unwrap(),
            AclItem {
                grantee: None,
                privileges: "Tc".into()
            }
        );
        assert_eq!(
            AclItem::parse("\"Odd \"\"One\"\"\"=c*/app").unwrap(),
            AclItem {
                grantee: Some("Odd \"One\"".into()),
                privileges: "c*".into()
            }
        );
        assert!(AclItem::parse("nonsense").is_none());
    }

    #[test]
    fn an_empty_list_setting_stays_empty() {
        assert_eq!(
            set_clause("search_path=\"\"").unwrap(),
            "SET \"search_path\" TO ''"
        );
        assert_eq!(
            set_clause("search_path=\"\", public").unwrap(),
            "SET \"search_path\" TO '', 'public'"
        );
    }

    #[test]
    fn list_settings_are_split_into_literals() {
        assert_eq!(
            set_clause("search_path=\"$user\", public, \"a,b\"").unwrap(),
            "SET \"search_path\" TO '$user', 'public', 'a,b'"
        );
        assert_eq!(
            set_clause("work_mem=7MB").unwrap(),
            "SET \"work_mem\" TO '7MB'"
        );
        assert_eq!(
            set_clause("app.note=it's").unwrap(),
            "SET \"app.note\" TO 'it''s'"
        );
    }

    #[test]
    fn the_object_is_rebuilt_statement_by_statement() {
        let (sql, skipped) = apply_sql("s", &facts(), Ownership::Recorded, &BTreeSet::new());
        assert_eq!(
            sql,
            [
                "ALTER DATABASE \"s\" OWNER TO \"app\"",
                "ALTER DATABASE \"s\" CONNECTION LIMIT 17",
                "REVOKE ALL ON DATABASE \"s\" FROM PUBLIC",
                "REVOKE ALL ON DATABASE \"s\" FROM \"app\"",
                "GRANT TEMPORARY ON DATABASE \"s\" TO PUBLIC",
                "GRANT CREATE, TEMPORARY, CONNECT ON DATABASE \"s\" TO \"app\"",
                "GRANT CONNECT ON DATABASE \"s\" TO \"Odd \"\"One\"\"\" WITH GRANT OPTION",
                "ALTER DATABASE \"s\" SET \"work_mem\" TO '7MB'",
                "ALTER ROLE \"ghost\" IN DATABASE \"s\" SET \"search_path\" TO '$user', 'public', 'a,b'",
                "COMMENT ON DATABASE \"s\" IS 'it''s'",
            ]
        );
        assert!(skipped.is_empty());
        let (sql, skipped) = apply_sql("s", &facts(), Ownership::Skip, &BTreeSet::new());
        assert!(
            !sql.iter()
                .any(|s| s.contains("OWNER") || s.contains("GRANT"))
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
    }

    #[test]
    fn create_keeps_encoding_and_locale_and_refuses_what_the_server_lacks() {
        let mut f = facts();
        assert_eq!(
            create_sql("s", &f, 15).unwrap(),
            "CREATE DATABASE \"s\" TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' LOCALE_PROVIDER libc"
        );
        f.locale_provider = "icu".into();
        f.locale = Some("de-DE".into());
        assert!(
            create_sql("s", &f, 15)
                .unwrap()
                .ends_with("LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'")
        );
        let e = create_sql("s", &f, 14).unwrap_err();
        assert!(matches!(e, CreateError::ProviderTooNew { needs: 15, .. }));
        assert!(e.to_string().contains("icu locale provider"), "{e}");
    }

    #[test]
    fn differences_name_what_changed_and_ignore_grantors() {
        let a = facts();
        let mut b = facts();
        b.acl = Some(vec![
            "=T/app".into(),
            "app=CTc/app".into(),
            "\"Odd \"\"One\"\"\"=c*/postgres".into(),
        ]);
        assert!(differences(&a, &b, Ownership::Recorded).is_empty());
        b.collate = "de_DE.UTF-8".into();
        b.acl = None;
        let d = differences(&a, &b, Ownership::Recorded);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("LC_COLLATE is de_DE.UTF-8, C recorded"));
        assert!(d[1].starts_with("ACL"));
        assert_eq!(differences(&a, &b, Ownership::Skip).len(), 1);
    }
}
