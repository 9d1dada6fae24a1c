//! Reading a roles archive (`pg_dumpall --globals-only`) statement by
//! statement, strictly: each statement must have one of the exact shapes
//! pg_dumpall writes, and is classified by the one role or tablespace it
//! changes. Anything else — a second grantee, a comment, dollar quoting,
//! `U&` or `E''` strings, a keyword where a name belongs (`ALL`,
//! `CURRENT_USER`), a function call — refuses the whole archive: the
//! archive comes from the repository, which is untrusted input, and a
//! statement misread here could change a live role.

/// What one statement of the roles archive changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Only the session (`SET client_encoding = …` and the like).
    Session,
    /// One role: its creation, attributes, password, settings, comment, a
    /// membership or a parameter privilege granted to it.
    Role(String),
    /// One tablespace: its creation, owner, options, comment or privileges.
    Tablespace(String),
}

/// A token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word, ASCII-lower-cased as PostgreSQL folds it (may hold `.`).
    Word(String),
    /// A double-quoted identifier, as it is.
    Ident(String),
    /// A standard string literal.
    Literal,
    /// An integer, possibly negative.
    Number,
    /// `(`, `)`, `,` or `=`.
    Punct(char),
}

/// Splits SQL into statements at `;` outside quotes, dropping `--`
/// comments, blank statements and psql's `\restrict` lines (checked
/// beforehand to be the only backslash lines).
pub fn split(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut line_start = true;
    while let Some(c) = chars.next() {
        match c {
            '\\' if line_start => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                line_start = true;
                continue;
            }
            '\'' | '"' => {
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == c {
                        if chars.peek() == Some(&c) {
                            cur.push(chars.next().expect("peeked"));
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                cur.push('\n');
                line_start = true;
                continue;
            }
            ';' => {
                let stmt = cur.trim();
                if !stmt.is_empty() {
                    out.push(stmt.to_owned());
                }
                cur.clear();
            }
            c => cur.push(c),
        }
        line_start = c == '\n' || (line_start && c.is_whitespace());
    }
    let stmt = cur.trim();
    if !stmt.is_empty() {
        out.push(stmt.to_owned());
    }
    out
}

/// The tokens of a statement; `None` if it holds anything pg_dumpall does
/// not write (`$`, `/*`, `&`, `:`, a prefixed string such as `E'…'`).
fn tokens(stmt: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = stmt.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut id = String::new();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        id.push('"');
                    }
                    '"' => break,
                    d => id.push(d),
                }
            }
            out.push(Token::Ident(id));
        } else if c == '\'' {
            chars.next();
            loop {
                match chars.next()? {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
            out.push(Token::Literal);
        } else if c.is_ascii_digit() || (c == '-' && out.last().is_some()) {
            chars.next();
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push(Token::Number);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' {
                    w.push(d.to_ascii_lowercase());
                    chars.next();
                } else {
                    break;
                }
            }
            // `E'…'`, `U&'…'`, `B'…'`: a prefixed literal.
            if matches!(chars.peek(), Some('\'' | '&' | '"')) {
                return None;
            }
            out.push(Token::Word(w));
        } else if matches!(c, '(' | ')' | ',' | '=') {
            chars.next();
            out.push(Token::Punct(c));
        } else {
            return None;
        }
    }
    Some(out)
}

/// Bare words that are never a role's name here: pg_dumpall quotes a
/// name that is a keyword, and these mean something else unquoted.
const NOT_NAMES: [&str; 14] = [
    "all",
    "current_user",
    "session_user",
    "current_role",
    "public",
    "none",
    "if",
    "with",
    "user",
    "role",
    "group",
    "in",
    "to",
    "from",
];

/// Role attributes `ALTER ROLE … WITH` may carry.
const ATTRIBUTES: [&str; 14] = [
    "superuser",
    "nosuperuser",
    "inherit",
    "noinherit",
    "createrole",
    "nocreaterole",
    "createdb",
    "nocreatedb",
    "login",
    "nologin",
    "replication",
    "noreplication",
    "bypassrls",
    "nobypassrls",
];

/// A cursor over a statement's tokens.
struct Cursor {
    t: Vec<Token>,
    i: usize,
}

impl Cursor {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.t.get(self.i), Some(Token::Word(s)) if s == w)
    }

    /// Consumes the word `w`.
    fn word(&mut self, w: &str) -> Option<()> {
        self.peek_word(w).then(|| self.i += 1)
    }

    /// Consumes one of `words`, returning it.
    fn one_of(&mut self, words: &[&str]) -> Option<String> {
        match self.t.get(self.i) {
            Some(Token::Word(s)) if words.contains(&s.as_str()) => {
                self.i += 1;
                Some(s.clone())
            }
            _ => None,
        }
    }

    /// Consumes a role or tablespace name: a quoted identifier, or a bare
    /// word that is a plain identifier and not a keyword.
    fn name(&mut self) -> Option<String> {
        let n = match self.t.get(self.i)? {
            Token::Ident(s) => s.clone(),
            Token::Word(s)
                if !s.contains('.')
                    && !NOT_NAMES.contains(&s.as_str())
                    && !s.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                s.clone()
            }
            _ => return None,
        };
        self.i += 1;
        Some(n)
    }

    /// Consumes a setting's name (a word, possibly dotted, or quoted).
    fn setting(&mut self) -> Option<()> {
        match self.t.get(self.i)? {
            Token::Word(_) | Token::Ident(_) => {
                self.i += 1;
                Some(())
            }
            _ => None,
        }
    }

    fn literal(&mut self) -> Option<()> {
        (self.t.get(self.i) == Some(&Token::Literal)).then(|| self.i += 1)
    }

    fn number(&mut self) -> Option<()> {
        (self.t.get(self.i) == Some(&Token::Number)).then(|| self.i += 1)
    }

    fn punct(&mut self, c: char) -> Option<()> {
        (self.t.get(self.i) == Some(&Token::Punct(c))).then(|| self.i += 1)
    }

    /// A setting's value: a literal, a number or a bare word.
    fn value(&mut self) -> Option<()> {
        match self.t.get(self.i)? {
            Token::Literal | Token::Number | Token::Word(_) => {
                self.i += 1;
                Some(())
            }
            _ => None,
        }
    }

    /// `value [, value]…`
    fn values(&mut self) -> Option<()> {
        self.value()?;
        while self.punct(',').is_some() {
            self.value()?;
        }
        Some(())
    }

    fn end(&self) -> Option<()> {
        (self.i == self.t.len()).then_some(())
    }
}

/// What `stmt` changes, if it has one of the shapes pg_dumpall writes.
pub fn subject(stmt: &str) -> Option<Subject> {
    let mut c = Cursor {
        t: tokens(stmt)?,
        i: 0,
    };
    let first = c.one_of(&[
        "set", "select", "create", "alter", "comment", "security", "grant", "revoke",
    ])?;
    match first.as_str() {
        "set" => session_set(&mut c),
        "select" => set_config(&mut c),
        "create" => create(&mut c),
        "alter" => alter(&mut c),
        "comment" => {
            c.word("on")?;
            let kind = c.one_of(&["role", "tablespace"])?;
            let n = c.name()?;
            c.word("is")?;
            if c.word("null").is_none() {
                c.literal()?;
            }
            c.end()?;
            Some(of_kind(&kind, n))
        }
        "security" => {
            c.word("label")?;
            c.word("for")?;
            c.name()?;
            c.word("on")?;
            let kind = c.one_of(&["role", "tablespace"])?;
            let n = c.name()?;
            c.word("is")?;
            c.literal()?;
            c.end()?;
            Some(of_kind(&kind, n))
        }
        _ => grant_or_revoke(&mut c, first == "grant"),
    }
}

/// `SELECT pg_catalog.set_config('search_path', '', false)`, after the
/// SELECT.
fn set_config(c: &mut Cursor) -> Option<Subject> {
    // SELECT pg_catalog.set_config('search_path', '', false)
    c.word("pg_catalog.set_config")?;
    c.punct('(')?;
    c.literal()?;
    c.punct(',')?;
    c.literal()?;
    c.punct(',')?;
    c.word("false")?;
    c.punct(')')?;
    c.end()?;
    Some(Subject::Session)
}

/// `CREATE ROLE name` or `CREATE TABLESPACE name OWNER name LOCATION
/// 'path'`, after the CREATE.
fn create(c: &mut Cursor) -> Option<Subject> {
    match c.one_of(&["role", "tablespace"])?.as_str() {
        "role" => {
            let r = c.name()?;
            c.end()?;
            Some(Subject::Role(r))
        }
        _ => {
            let t = c.name()?;
            c.word("owner")?;
            c.name()?;
            c.word("location")?;
            c.literal()?;
            c.end()?;
            Some(Subject::Tablespace(t))
        }
    }
}

/// `ALTER ROLE name WITH attributes…`, `ALTER ROLE name SET setting …`,
/// `ALTER TABLESPACE name OWNER TO name` or `… SET (…)`, after the ALTER.
fn alter(c: &mut Cursor) -> Option<Subject> {
    match c.one_of(&["role", "tablespace"])?.as_str() {
        "role" => {
            let r = c.name()?;
            if c.word("with").is_some() {
                while c.end().is_none() {
                    if c.one_of(&ATTRIBUTES).is_some() {
                        continue;
                    }
                    match c.one_of(&["connection", "password", "valid"])?.as_str() {
                        "connection" => {
                            c.word("limit")?;
                            c.number()?;
                        }
                        "password" => {
                            if c.word("null").is_none() {
                                c.literal()?;
                            }
                        }
                        _ => {
                            c.word("until")?;
                            c.literal()?;
                        }
                    }
                }
            } else {
                c.word("set")?;
                c.setting()?;
                if c.word("to").is_none() {
                    c.punct('=')?;
                }
                c.values()?;
                c.end()?;
            }
            Some(Subject::Role(r))
        }
        _ => {
            let t = c.name()?;
            if c.word("owner").is_some() {
                c.word("to")?;
                c.name()?;
            } else {
                c.word("set")?;
                c.punct('(')?;
                loop {
                    c.setting()?;
                    c.punct('=')?;
                    c.value()?;
                    if c.punct(',').is_none() {
                        break;
                    }
                }
                c.punct(')')?;
            }
            c.end()?;
            Some(Subject::Tablespace(t))
        }
    }
}

fn of_kind(kind: &str, name: String) -> Subject {
    if kind == "role" {
        Subject::Role(name)
    } else {
        Subject::Tablespace(name)
    }
}

/// `SET name = value` for the few session settings pg_dumpall writes;
/// `standard_conforming_strings` only `on` (the literals here assume it).
fn session_set(c: &mut Cursor) -> Option<Subject> {
    let name = c.one_of(&[
        "default_transaction_read_only",
        "client_encoding",
        "standard_conforming_strings",
    ])?;
    if c.word("to").is_none() {
        c.punct('=')?;
    }
    if name == "standard_conforming_strings" {
        c.word("on")?;
    } else {
        c.value()?;
    }
    c.end()?;
    Some(Subject::Session)
}

/// `GRANT role TO member [WITH …] [GRANTED BY g]`, `GRANT privileges ON
/// PARAMETER p TO member …`, and privileges on a tablespace to or from one
/// grantee.
fn grant_or_revoke(c: &mut Cursor, grant: bool) -> Option<Subject> {
    let privileges = ["all", "privileges", "create", "set", "alter", "system"];
    let on_something = c.t.iter().any(|t| *t == Token::Word("on".into()));
    if on_something {
        loop {
            c.one_of(&privileges)?;
            while c.one_of(&privileges).is_some() {}
            if c.punct(',').is_none() {
                break;
            }
        }
        c.word("on")?;
        let kind = c.one_of(&["parameter", "tablespace"])?;
        let object = if kind == "parameter" {
            c.setting()?;
            None
        } else {
            Some(c.name()?)
        };
        c.word(if grant { "to" } else { "from" })?;
        let grantee = if c.word("public").is_some() {
            None
        } else {
            Some(c.name()?)
        };
        if grant && c.word("with").is_some() {
            c.word("grant")?;
            c.word("option")?;
        }
        granted_by(c)?;
        c.end()?;
        return match (object, grantee) {
            (Some(t), _) => Some(Subject::Tablespace(t)),
            (None, Some(member)) => Some(Subject::Role(member)),
            (None, None) => None,
        };
    }
    if !grant {
        return None;
    }
    c.name()?;
    c.word("to")?;
    let member = c.name()?;
    if c.word("with").is_some() {
        loop {
            let what = c.one_of(&["admin", "inherit", "set"])?;
            if what == "admin" && c.word("option").is_some() {
            } else {
                c.one_of(&["true", "false"])?;
            }
            if c.punct(',').is_none() {
                break;
            }
        }
    }
    granted_by(c)?;
    c.end()?;
    Some(Subject::Role(member))
}

/// An optional `GRANTED BY name`.
fn granted_by(c: &mut Cursor) -> Option<()> {
    if c.word("granted").is_some() {
        c.word("by")?;
        c.name()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_pg_dumpall_writes_is_classified() {
        for (sql, want) in [
            ("SET default_transaction_read_only = off", Subject::Session),
            ("SET client_encoding = 'UTF8'", Subject::Session),
            ("SET standard_conforming_strings = on", Subject::Session),
            (
                "SELECT pg_catalog.set_config('search_path', '', false)",
                Subject::Session,
            ),
            ("CREATE ROLE app", Subject::Role("app".into())),
            ("CREATE ROLE \"New Role\"", Subject::Role("New Role".into())),
            (
                "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3 VALID UNTIL '2030-01-01' PASSWORD 'SCRAM-SHA-256$4096:x'",
                Subject::Role("app".into()),
            ),
            (
                "ALTER ROLE app SET search_path TO 'x', 'public'",
                Subject::Role("app".into()),
            ),
            (
                "ALTER ROLE app SET work_mem TO '7MB'",
                Subject::Role("app".into()),
            ),
            (
                "COMMENT ON ROLE app IS 'it''s; fine'",
                Subject::Role("app".into()),
            ),
            (
                "GRANT pg_read_all_data TO app GRANTED BY postgres",
                Subject::Role("app".into()),
            ),
            (
                "GRANT app TO \"New Role\" WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres",
                Subject::Role("New Role".into()),
            ),
            (
                "GRANT SET ON PARAMETER log_statement TO app",
                Subject::Role("app".into()),
            ),
            (
                "GRANT ALTER SYSTEM ON PARAMETER work_mem TO app WITH GRANT OPTION",
                Subject::Role("app".into()),
            ),
            (
                "CREATE TABLESPACE ts OWNER app LOCATION '/srv/ts'",
                Subject::Tablespace("ts".into()),
            ),
            (
                "ALTER TABLESPACE ts SET (random_page_cost = '1.1')",
                Subject::Tablespace("ts".into()),
            ),
            (
                "GRANT ALL ON TABLESPACE ts TO app",
                Subject::Tablespace("ts".into()),
            ),
            (
                "REVOKE ALL ON TABLESPACE ts FROM PUBLIC",
                Subject::Tablespace("ts".into()),
            ),
            (
                "COMMENT ON TABLESPACE ts IS 'fast'",
                Subject::Tablespace("ts".into()),
            ),
        ] {
            assert_eq!(subject(sql), Some(want), "{sql}");
        }
    }

    #[test]
    fn statements_that_could_change_a_live_role_in_disguise_are_refused() {
        for sql in [
            "ALTER ROLE U&\"app\" PASSWORD 'pwned'",
            "ALTER ROLE /**/ app VALID UNTIL '2000-01-01'",
            "ALTER ROLE current_user WITH PASSWORD 'x'",
            "ALTER ROLE session_user WITH PASSWORD 'x'",
            "ALTER ROLE ALL SET default_transaction_read_only = on",
            "DROP ROLE IF EXISTS mon",
            "GRANT pg_execute_server_program TO newrole, app",
            "CREATE ROLE n2 ROLE app",
            "CREATE ROLE n2 ADMIN app",
            "CREATE ROLE n2 IN ROLE pg_execute_server_program",
            "COMMENT ON ROLE newrole2 IS $q$'$q$",
            "SELECT pg_catalog.set_config('k.x', pg_catalog.lo_export(4242, '/tmp/x')::text, false)",
            "SELECT pg_catalog.set_config('k', 'v', false), pg_catalog.pg_reload_conf()",
            "SET role = app",
            "SET standard_conforming_strings = off",
            "SET session_authorization = 'app'",
            "COMMENT ON ROLE x IS E'\\x'",
            "ALTER ROLE app WITH PASSWORD 'x' SUPERUSER :evil",
            "GRANT SET ON PARAMETER log_statement TO PUBLIC",
            "ALTER ROLE app IN DATABASE d SET work_mem = '1MB'",
            "ALTER ROLE app RENAME TO other",
        ] {
            assert_eq!(subject(sql), None, "{sql}");
        }
    }

    #[test]
    fn names_fold_like_postgresql_ascii_only() {
        assert_eq!(
            subject("CREATE ROLE App"),
            Some(Subject::Role("app".into()))
        );
        assert_eq!(
            subject("CREATE ROLE ÄPP"),
            None,
            "PostgreSQL keeps Ä: refused, not guessed"
        );
    }
}
