//! Time formats used in ids, manifests and output.

use chrono::{DateTime, Utc};

/// A snapshot id: `20261127T030000Z-<6 random hex>`, sorting by time.
pub fn snapshot_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Whether `s` has the shape of a snapshot id.
pub fn is_snapshot_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 23
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// `2026-11-27 04:00:00` in the local time zone, for people.
pub fn local(at: DateTime<Utc>) -> String {
    at.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Parses a time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, crate::error::InvalidInput> {
    <chrono_tz::Tz as std::str::FromStr>::from_str(s).map_err(|_| {
        crate::error::InvalidInput(format!(
            "`{s}` is not a time zone (write e.g. Europe/Berlin or UTC)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let a = snapshot_id("2026-11-27T03:00:00Z".parse().unwrap());
        let b = snapshot_id("2026-11-27T03:00:01Z".parse().unwrap());
        assert!(a < b);
        assert!(a.starts_with("20261127T030000Z-"));
        assert!(is_snapshot_id(&a), "{a}");
        assert!(!is_snapshot_id("20261127T030000Z"));
        assert!(!is_snapshot_id("../../etc/passwd"));
    }
}
