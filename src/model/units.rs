//! Sizes as people write and read them: `16MiB` in the configuration,
//! `1.5 GiB` in output. The one byte formatter of the crate.

use crate::error::InvalidInput;

/// Parses `16MiB`, `8 MiB`, `5242880`, `1GiB` (binary units; `MB` is read
/// as MiB too, since S3's limits are binary).
pub fn parse_size(s: &str) -> Result<u64, InvalidInput> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| InvalidInput(format!("`{s}` is not a size: write 16MiB")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(InvalidInput(format!(
                "unknown size unit `{other}` in `{s}`: write 16MiB"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| InvalidInput(format!("`{s}` is too large")))
}

/// A byte count for people: `16 MiB`, `1.5 GiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5242880").unwrap(), 5 << 20);
        assert!(parse_size("16 furlongs").is_err());
        assert_eq!(bytes(16 << 20), "16 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
