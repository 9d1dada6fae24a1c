//! The roles SQL of `postgres/globals` before psql runs it:
//! `restore::postgres::check_globals_sql` refuses any backslash (a psql
//! meta-command) but pg_dumpall's own `\restrict KEY` / `\unrestrict KEY`
//! lines. What it accepts is checked against that rule here.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn allowed(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.contains(&b'\\') {
        return true;
    }
    let key = line
        .strip_prefix(b"\\restrict ")
        .or_else(|| line.strip_prefix(b"\\unrestrict "));
    key.is_some_and(|k| !k.is_empty() && k.iter().all(u8::is_ascii_alphanumeric))
}

fuzz_target!(|data: &[u8]| {
    let accepted = kompose_dr::restore::postgres::globals::check_globals_sql(data).is_ok();
    let expected = data.split(|&b| b == b'\n').all(allowed);
    assert_eq!(
        accepted, expected,
        "check_globals_sql disagrees with its rule"
    );
});
