//! Restoring roles and tablespaces (`postgres/globals`, pg_dumpall
//! --globals-only) with psql.
//!
//! The archive is read whole and checked before psql sees a byte, and its
//! SQL is split into statements and sorted by what each one changes: a role
//! (`CREATE ROLE`, `ALTER ROLE`, `COMMENT ON ROLE`, a membership `GRANT … TO`
//! it), a tablespace, or the session (`SET`). Roles and tablespaces that
//! exist on the target are left exactly as they are — a restore never rolls
//! a live role's password, `LOGIN`, connection limit or `VALID UNTIL` back,
//! nor re-grants a membership revoked since — unless `--overwrite-roles`
//! asks for it. The plan names what will be created and what is kept (or
//! reset).

use std::collections::BTreeSet;

use super::roles_sql::{self, Subject};
use super::{
    ReadyItem, RestoreContext, RestoreError, Target, choose_client, command, connect_to,
    open_stored, progress_bar, resolved_target, role_names, server, target_config,
};
use crate::clients::launch::Launch;
use crate::process::{Ended, stderr_tail};
use crate::restore::plan::Choice;
use crate::restore::stream::copy_archive;

/// What the roles archive will do to a server: the roles (and tablespaces)
/// it creates, and those that exist and are kept as they are — or reset,
/// with `--overwrite-roles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RolesPlan {
    /// Roles the target lacks: created as the snapshot has them.
    pub create: Vec<String>,
    /// Roles that exist: left exactly as they are.
    pub keep: Vec<String>,
    /// Roles that exist and are reset to the snapshot (`--overwrite-roles`).
    pub reset: Vec<String>,
    /// Tablespaces the target lacks: created.
    pub create_tablespaces: Vec<String>,
    /// Tablespaces that exist: left as they are (or reset).
    pub existing_tablespaces: Vec<String>,
}

impl std::fmt::Display for RolesPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(f, "create {}", list(&self.create))?;
        if !self.keep.is_empty() {
            write!(
                f,
                "; leave existing {} as they are (--overwrite-roles resets them)",
                list(&self.keep)
            )?;
        }
        if !self.reset.is_empty() {
            write!(
                f,
                "; RESET existing {} to the snapshot (password, attributes, settings, memberships)",
                list(&self.reset)
            )?;
        }
        if !self.create_tablespaces.is_empty() {
            write!(
                f,
                "; create tablespace(s) {}",
                list(&self.create_tablespaces)
            )?;
        }
        Ok(())
    }
}

/// The target of `postgres/globals`, with what it will do when the key is
/// at hand to read the archive (a dry run without it says less).
pub async fn globals_target(ctx: &RestoreContext<'_>, c: &Choice) -> Result<Target, RestoreError> {
    let server = server(&target_config(ctx)?);
    if ctx.identities.is_empty() {
        return Ok(Target::Globals {
            server,
            roles: None,
        });
    }
    let cfg = resolved_target(ctx).await?;
    let sql = read_archive(ctx, c).await?;
    let statements = parse(&sql)?;
    let admin = connect_to(&cfg, &cfg.endpoint.maintenance_db).await?;
    let (_, plan) = select(
        &statements,
        &existing(&admin).await?,
        ctx.options.overwrite_roles,
    );
    Ok(Target::Globals {
        server,
        roles: Some(plan),
    })
}

/// How long psql may take to apply a roles archive.
const ROLES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The roles and tablespaces that exist on the target.
async fn existing(admin: &tokio_postgres::Client) -> Result<Existing, RestoreError> {
    let tablespaces = admin
        .query("SELECT spcname FROM pg_tablespace", &[])
        .await
        .map_err(RestoreError::db("cannot list tablespaces"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Existing {
        roles: role_names(admin).await?,
        tablespaces,
    })
}

/// The roles and tablespaces a server has.
#[derive(Debug, Default)]
struct Existing {
    roles: BTreeSet<String>,
    tablespaces: BTreeSet<String>,
}

/// Restores roles and tablespaces: creates those the target lacks, leaves
/// those it has as they are (or resets them with `--overwrite-roles`).
pub async fn restore_globals(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
) -> Result<(u64, String), RestoreError> {
    let cfg = resolved_target(ctx).await?;
    let tool = choose_client(&cfg, "psql", 0, "any")
        .await
        .map_err(RestoreError::from_source)?;
    let sql = read_archive(ctx, &item.choice).await?;
    let statements = parse(&sql)?;
    // What exists is read again now: the plan was made before the question.
    let admin = connect_to(&cfg, &cfg.endpoint.maintenance_db).await?;
    let (chosen, plan) = select(
        &statements,
        &existing(&admin).await?,
        ctx.options.overwrite_roles,
    );
    drop(admin);
    let script = chosen.join("\n");
    let mut cmd = command(&cfg, &tool, "psql", &cfg.endpoint.maintenance_db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
    let bytes = sql.len() as u64;
    // Kilobytes of SQL: minutes mean psql waits on a lock (a role in use
    // by a long transaction); it is stopped rather than waited on forever.
    let (stderr, status) = tokio::time::timeout(ROLES_TIMEOUT, feed(cmd, "psql", script.into_bytes(), ctx))
        .await
        .map_err(|_| {
            RestoreError::Failed(format!(
                "psql did not finish applying the roles to {} within {} (waiting on a lock?): it was stopped; \
                 statements it had run remain ({plan})",
                server(&cfg),
                humantime::format_duration(ROLES_TIMEOUT)
            ))
        })??;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .collect();
    if !status.success() || !errors.is_empty() {
        return Err(RestoreError::Failed(format!(
            "applying the roles to {} failed ({}): {}; statements before and after the failing one were applied ({plan})",
            server(&cfg),
            status,
            if errors.is_empty() {
                stderr.trim().to_owned()
            } else {
                errors.join("; ")
            }
        )));
    }
    Ok((bytes, format!("roles on {}: {}", server(&cfg), done(&plan))))
}

/// The plan in the past tense, for the result line.
fn done(plan: &RolesPlan) -> String {
    let mut out = if plan.create.is_empty() {
        "no role created".to_owned()
    } else {
        format!("created {}", plan.create.join(", "))
    };
    if !plan.keep.is_empty() {
        out.push_str(&format!(
            "; left existing {} as they were",
            plan.keep.join(", ")
        ));
    }
    if !plan.reset.is_empty() {
        out.push_str(&format!(
            "; reset {} to the snapshot",
            plan.reset.join(", ")
        ));
    }
    out
}

/// Reads the archive whole (it is small) with every check held, and
/// refuses SQL that could carry a psql meta-command.
async fn read_archive(ctx: &RestoreContext<'_>, c: &Choice) -> Result<Vec<u8>, RestoreError> {
    let item = ReadyItem {
        choice: c.clone(),
        target: Target::Globals {
            server: String::new(),
            roles: None,
        },
        replaces: false,
    };
    // The whole archive is read and checked (age, zstd, sha256) and its SQL
    // scanned before psql sees a byte: psql runs meta-commands (`\!`,
    // `\copy … program`), so a forged archive must never reach it.
    let sql = read_verified(ctx, &item).await?;
    check_globals_sql(&sql).map_err(|e| RestoreError::Refused(format!("the roles archive {e}")))?;
    Ok(sql)
}

/// The statements of a roles archive with what each changes. A statement
/// this does not understand is refused, naming it: applying it blindly
/// could change a live role.
fn parse(sql: &[u8]) -> Result<Vec<(String, Subject)>, RestoreError> {
    let text = String::from_utf8_lossy(sql);
    roles_sql::split(&text)
        .into_iter()
        .map(|stmt| match roles_sql::subject(&stmt) {
            Some(s) => Ok((stmt, s)),
            None => Err(RestoreError::Refused(format!(
                "the roles archive holds a statement that is not one pg_dumpall writes (`{}`): nothing was applied \
                 (the archive may have been forged); read it and apply the roles by hand (docs/RUNBOOK.md)",
                stmt.chars().take(80).collect::<String>().escape_debug()
            ))),
        })
        .collect()
}

/// The statements to run against a server with `existing` roles and
/// tablespaces, and the plan they carry out.
fn select(
    statements: &[(String, Subject)],
    existing: &Existing,
    overwrite: bool,
) -> (Vec<String>, RolesPlan) {
    let mut plan = RolesPlan::default();
    let mut chosen = Vec::new();
    let note = |list: &mut Vec<String>, name: &str| {
        if !list.iter().any(|n| n == name) {
            list.push(name.to_owned());
        }
    };
    for (stmt, subject) in statements {
        let apply = match subject {
            Subject::Session => true,
            Subject::Role(r) if !existing.roles.contains(r) => {
                note(&mut plan.create, r);
                true
            }
            Subject::Role(r) if overwrite => {
                note(&mut plan.reset, r);
                true
            }
            Subject::Role(r) => {
                note(&mut plan.keep, r);
                false
            }
            Subject::Tablespace(t) if !existing.tablespaces.contains(t) => {
                note(&mut plan.create_tablespaces, t);
                true
            }
            Subject::Tablespace(t) => {
                note(&mut plan.existing_tablespaces, t);
                overwrite
            }
        };
        if apply {
            // A role created here is not "existing" for its later lines.
            chosen.push(format!("{stmt};"));
        }
    }
    (chosen, plan)
}

/// The most a roles archive may hold once decompressed: pg_dumpall
/// --globals-only writes kilobytes.
const MAX_GLOBALS: u64 = 64 << 20;

/// Reads a whole (small) archive into memory, every check held: age
/// authentication, zstd checksums, size and sha256 against the manifest.
async fn read_verified(
    ctx: &RestoreContext<'_>,
    item: &ReadyItem,
) -> Result<Vec<u8>, RestoreError> {
    let pb = progress_bar(ctx, item);
    let stored = open_stored(ctx, item, &pb).await?;
    let ids = ctx.identities.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Bounded {
            data: Vec::new(),
            limit: MAX_GLOBALS,
        };
        copy_archive(stored, &ids, &mut out).map(|_| out.data)
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("restore thread failed: {e}")))?;
    pb.finish_and_clear();
    Ok(read?)
}

/// A `Vec` that refuses to grow past `limit`.
struct Bounded {
    data: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "more than {} MiB of SQL: not a roles archive",
                self.limit >> 20
            )));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A line of a roles archive that psql would run as a meta-command.
#[derive(Debug, thiserror::Error)]
#[error(
    "has a backslash on line {line} (`{shown}`): psql would run it as a meta-command, and \
     pg_dumpall writes none; refusing to run it (the archive may have been forged; \
     apply the roles by hand after reading them, see docs/RUNBOOK.md)"
)]
pub struct MetaCommand {
    /// The line, counted from 1.
    pub line: usize,
    /// Its first 60 characters, escaped.
    pub shown: String,
}

/// Refuses SQL for psql that could hold a meta-command. psql runs a
/// backslash command anywhere outside quotes — mid-line (`SELECT 1; \\! id`)
/// or after another meta-command's arguments — so no backslash at all is
/// accepted, except pg_dumpall's own whole lines `\\restrict KEY` and
/// `\\unrestrict KEY`. (A backslash inside a role comment is refused too:
/// it fails closed, and the message says what to do.)
pub fn check_globals_sql(sql: &[u8]) -> Result<(), MetaCommand> {
    let is_restrict = |line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let key = line
            .strip_prefix(b"\\restrict ")
            .or_else(|| line.strip_prefix(b"\\unrestrict "));
        key.is_some_and(|k| !k.is_empty() && k.iter().all(u8::is_ascii_alphanumeric))
    };
    for (i, line) in sql.split(|&b| b == b'\n').enumerate() {
        if !line.contains(&b'\\') || is_restrict(line) {
            continue;
        }
        let shown: String = String::from_utf8_lossy(line).chars().take(60).collect();
        return Err(MetaCommand {
            line: i + 1,
            shown: shown.escape_debug().to_string(),
        });
    }
    Ok(())
}

/// Runs `launch` with `input` on its stdin; returns its stderr tail and how
/// it ended.
async fn feed(
    launch: Launch,
    program: &str,
    input: Vec<u8>,
    ctx: &RestoreContext<'_>,
) -> Result<(String, Ended), RestoreError> {
    use tokio::io::AsyncWriteExt;
    let mut child = launch
        .start(program, true)
        .await
        .map_err(|e| RestoreError::Failed(format!("cannot start {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is attached");
    drop(child.stdout.take());
    let stderr = stderr_tail(child.stderr.take(), program, ctx.redactor.clone());
    let mut written = stdin.write_all(&input).await;
    if written.is_ok() {
        written = stdin.shutdown().await;
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(RestoreError::io(format!("cannot wait for {program}")))?;
    let stderr = stderr.await.unwrap_or_default();
    if let Err(e) = written
        && status.success()
    {
        return Err(RestoreError::io(format!("{program} stdin"))(e));
    }
    Ok((stderr, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMPALL: &str = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abc\n\nSET default_transaction_read_only = off;\n\
SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n--\n-- Roles\n--\n\n\
CREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';\n\
CREATE ROLE \"New Role\";\nALTER ROLE \"New Role\" WITH NOLOGIN CONNECTION LIMIT 3 VALID UNTIL '2030-01-01 00:00:00+00';\n\
COMMENT ON ROLE \"New Role\" IS 'has a ; and a '' inside\nand a second line';\n\
CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;\n\n\
--\n-- User Configurations\n--\n\nALTER ROLE app SET search_path TO 'x';\n\n\
--\n-- Role memberships\n--\n\nGRANT pg_read_all_data TO app GRANTED BY postgres;\nGRANT app TO \"New Role\" WITH INHERIT TRUE GRANTED BY postgres;\n\n\
--\n-- Tablespaces\n--\n\nCREATE TABLESPACE ts OWNER app LOCATION '/srv/ts';\nGRANT ALL ON TABLESPACE ts TO app;\n\n\
\\unrestrict abc\n\n--\n-- PostgreSQL database cluster dump complete\n--\n";

    fn existing(roles: &[&str]) -> Existing {
        Existing {
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            tablespaces: ["pg_default", "pg_global"].map(String::from).into(),
        }
    }

    #[test]
    fn pg_dumpall_output_is_understood_statement_by_statement() {
        check_globals_sql(DUMPALL.as_bytes()).unwrap();
        let st = parse(DUMPALL.as_bytes()).unwrap();
        let subjects: Vec<&Subject> = st.iter().map(|(_, s)| s).collect();
        assert_eq!(
            subjects.iter().filter(|s| ***s == Subject::Session).count(),
            3
        );
        assert!(
            st.iter()
                .any(|(sql, s)| *s == Subject::Role("New Role".into())
                    && sql.contains("second line"))
        );
        assert_eq!(
            st.iter()
                .filter(|(_, s)| *s == Subject::Role("app".into()))
                .count(),
            4,
            "CREATE, ALTER, ALTER … SET, and the membership granted to it"
        );
        assert_eq!(
            st.iter()
                .filter(|(_, s)| *s == Subject::Tablespace("ts".into()))
                .count(),
            2
        );
    }

    #[test]
    fn existing_roles_are_left_alone_unless_overwrite_is_asked() {
        let st = parse(DUMPALL.as_bytes()).unwrap();
        let (sql, plan) = select(&st, &existing(&["postgres", "app"]), false);
        assert_eq!(plan.create, ["New Role"]);
        assert_eq!(plan.keep, ["app", "postgres"]);
        assert!(plan.reset.is_empty());
        assert_eq!(plan.create_tablespaces, ["ts"]);
        let script = sql.join("\n");
        assert!(!script.contains("PASSWORD"), "{script}");
        assert!(!script.contains("ALTER ROLE postgres"), "{script}");
        assert!(
            !script.contains("pg_read_all_data"),
            "a membership of an existing role: {script}"
        );
        assert!(script.contains("GRANT app TO \"New Role\""), "{script}");
        assert!(script.contains("CONNECTION LIMIT 3"), "{script}");
        assert!(
            plan.to_string()
                .contains("leave existing app, postgres as they are"),
            "{plan}"
        );

        let (sql, plan) = select(&st, &existing(&["postgres", "app"]), true);
        assert_eq!(plan.reset, ["app", "postgres"]);
        assert!(sql.join("\n").contains("PASSWORD"));
        assert!(
            plan.to_string().contains("RESET existing app, postgres"),
            "{plan}"
        );
    }

    #[test]
    fn an_unknown_statement_is_refused_not_applied() {
        let e = parse(b"CREATE ROLE a;\nDO $$ BEGIN PERFORM 1; END $$;\n").unwrap_err();
        assert!(e.to_string().contains("not one pg_dumpall writes"), "{e}");
    }

    #[test]
    fn roles_sql_with_a_meta_command_is_refused_and_pg_dumpall_output_passes() {
        let dumpall = b"\\restrict abc\nSET default_transaction_read_only = off;\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\n\\unrestrict abc\n";
        super::check_globals_sql(dumpall).unwrap();
        for evil in [
            &b"CREATE ROLE a;\n\\! touch /tmp/canary\n"[..],
            b"  \\copy (select 1) to program 'id'\n",
            b"\\o |sh\n",
            b"CREATE ROLE x; \\! id\n",
            b"SELECT 1 \\! id\n",
            b"\\unrestrict k \\! id\n",
            b"\x0b\\! id\n",
            b"\\restrict \n",
        ] {
            let e = super::check_globals_sql(evil).unwrap_err();
            assert!(e.to_string().contains("backslash on line"), "{e}");
        }
    }
}
