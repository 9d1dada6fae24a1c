//! An ACME store (Traefik's `acme.json`) as `sources::acme::certificates`
//! reads it: at backup for the facts, and in `verify` on the file restored
//! from the repository (so on untrusted bytes): JSON, base64, PEM, X.509.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(certs) = kompose_dr::sources::acme::certificates(data) {
        for c in &certs {
            assert!(
                c.not_after.is_some() != c.error.is_some(),
                "a certificate with both or neither of an expiry and an error"
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kompose_dr::sources::acme::decode(s);
    }
});
