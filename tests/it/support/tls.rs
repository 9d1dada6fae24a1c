//! Certificates for the Traefik `acme.json` tests, made with `openssl`.

use std::path::Path;
use std::process::Command;

use super::{require, run_ok};

/// A self-signed certificate for `names`, base64 PEM as Traefik stores it.
pub fn certificate(dir: &Path, names: &[&str], days: u32) -> String {
    require("openssl");
    let key = dir.join("k.pem");
    let crt = dir.join("c.pem");
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                &days.to_string(),
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args([
                "-subj",
                &format!("/CN={}", names[0]),
                "-addext",
                &format!("subjectAltName={san}"),
            ])
            .stderr(std::process::Stdio::null()),
    );
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(&crt).unwrap())
}
